"""Wiring of the preprocessing pipeline."""

from kedro.pipeline import Node, Pipeline

from .nodes import compute_normalization_stats, split_images

# The group that kedro-viz draws these nodes in (node names become f"{NAMESPACE}.{name}"); the
# datasets and parameters keep their catalog names (prefix_datasets_with_namespace=False).
NAMESPACE = "preprocessing"


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                func=split_images,
                inputs=["image_index", "params:preprocessing.split"],
                outputs="data_split",
                name="split_images_node",
            ),
            Node(
                func=compute_normalization_stats,
                inputs=["image_tensors", "image_index", "data_split"],
                outputs="normalization_stats",
                name="compute_normalization_stats_node",
            ),
        ],
        namespace=NAMESPACE,
        prefix_datasets_with_namespace=False,
    )
