"""Wiring of the model-training pipeline."""

from kedro.pipeline import Node, Pipeline

from .nodes import calibrate_model, export_onnx_model, quantize_onnx_model, train_model

# The group that kedro-viz draws these nodes in (node names become f"{NAMESPACE}.{name}"); the
# datasets and parameters keep their catalog names (prefix_datasets_with_namespace=False).
NAMESPACE = "model_training"


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                func=train_model,
                inputs=[
                    "image_tensors",
                    "image_index",
                    "data_split",
                    "normalization_stats",
                    "training_checkpoint",
                    "label_issues_to_exclude",
                    "params:training",
                ],
                outputs=["trained_model", "training_history"],
                name="train_model_node",
            ),
            Node(
                func=calibrate_model,
                inputs=[
                    "trained_model",
                    "image_tensors",
                    "image_index",
                    "data_split",
                    "params:training",
                    "params:evaluation",
                    "claimed_cv_patient_settings",
                ],
                outputs="model",
                name="calibrate_model_node",
            ),
            Node(
                func=export_onnx_model,
                inputs=["model", "image_tensors", "image_index", "data_split", "params:training"],
                outputs=["onnx_model", "onnx_check"],
                name="export_onnx_model_node",
            ),
            Node(
                func=quantize_onnx_model,
                inputs=[
                    "onnx_model",
                    "image_tensors",
                    "image_index",
                    "data_split",
                    "params:training",
                    "params:evaluation",
                ],
                outputs=["onnx_int8_model", "onnx_int8_check"],
                name="quantize_onnx_model_node",
            ),
        ],
        namespace=NAMESPACE,
        prefix_datasets_with_namespace=False,
    )
