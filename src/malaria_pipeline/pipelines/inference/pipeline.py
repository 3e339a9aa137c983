"""Wiring of the inference pipeline."""

from kedro.pipeline import Node, Pipeline

from .nodes import predict_images, predict_patients

# The group that kedro-viz draws these nodes in (node names become f"{NAMESPACE}.{name}"); the
# datasets and parameters keep their catalog names (prefix_datasets_with_namespace=False).
NAMESPACE = "inference"


def create_pipeline(**kwargs) -> Pipeline:
    """``kedro run --pipelines inference``: the images of a folder or zip, classified by a trained model."""
    return Pipeline(
        [
            Node(
                func=predict_images,
                inputs=["inference_images", "inference_model", "params:inference"],
                outputs=["predictions", "inference_summary", "explanation_overlays"],
                name="predict_images_node",
            ),
            Node(
                func=predict_patients,
                inputs=["predictions", "inference_summary", "inference_model", "params:inference"],
                outputs="patient_predictions",
                name="predict_patients_node",
            ),
        ],
        namespace=NAMESPACE,
        prefix_datasets_with_namespace=False,
    )
