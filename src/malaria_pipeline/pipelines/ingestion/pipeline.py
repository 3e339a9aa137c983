"""Wiring of the ingestion pipeline."""

from kedro.pipeline import Node, Pipeline

from .nodes import index_images

# The group that kedro-viz draws these nodes in (node names become f"{NAMESPACE}.{name}"); the
# datasets and parameters keep their catalog names (prefix_datasets_with_namespace=False).
NAMESPACE = "ingestion"


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                func=index_images,
                inputs=["cell_images", "params:ingestion", "label_corrections_to_apply"],
                outputs=["image_index", "image_tensors", "ingestion_report"],
                name="index_images_node",
            ),
        ],
        namespace=NAMESPACE,
        prefix_datasets_with_namespace=False,
    )
