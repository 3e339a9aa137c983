"""Wiring of the ingestion pipeline."""

from kedro.pipeline import Node, Pipeline

from .nodes import index_images


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                func=index_images,
                inputs=["cell_images", "params:ingestion"],
                outputs=["image_index", "image_tensors", "ingestion_report"],
                name="index_images_node",
            ),
        ]
    )
