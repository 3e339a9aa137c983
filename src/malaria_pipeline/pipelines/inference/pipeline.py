"""Wiring of the inference pipeline."""

from kedro.pipeline import Node, Pipeline

from .nodes import predict_images


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                func=predict_images,
                inputs=["inference_images", "model", "params:inference"],
                outputs=["predictions", "inference_summary"],
                name="predict_images_node",
            ),
        ]
    )
