"""Wiring of the inference pipeline, and of the pipeline that the MLflow model of a training run runs."""

from kedro.pipeline import Node, Pipeline

from .nodes import predict_encoded_images, predict_images, predict_patients

# The group that kedro-viz draws these nodes in (node names become f"{NAMESPACE}.{name}"); the
# datasets and parameters keep their catalog names (prefix_datasets_with_namespace=False).
NAMESPACE = "inference"

# The input of the MLflow model: a DataFrame with a column `image` of base64-encoded image files.
SERVED_INPUT = "served_images"


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


def create_served_pipeline(**kwargs) -> Pipeline:
    """What the MLflow model of a training run runs on each request (``pipeline_ml_factory``).

    Its only other inputs are the run's ``model`` and parameters, which kedro-mlflow packs into the
    MLflow model.
    """
    return Pipeline(
        [
            Node(
                func=predict_encoded_images,
                inputs=[SERVED_INPUT, "model", "params:inference"],
                outputs="served_predictions",
                name="predict_encoded_images_node",
            ),
        ],
        namespace=NAMESPACE,
        prefix_datasets_with_namespace=False,
    )
