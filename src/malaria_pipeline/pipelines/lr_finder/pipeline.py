"""Wiring of the learning-rate finder pipeline."""

from kedro.pipeline import Node, Pipeline

from .nodes import find_learning_rate

# The group that kedro-viz draws these nodes in (node names become f"{NAMESPACE}.{name}"); the
# datasets and parameters keep their catalog names (prefix_datasets_with_namespace=False).
NAMESPACE = "lr_finder"


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                func=find_learning_rate,
                inputs=[
                    "image_tensors",
                    "image_index",
                    "data_split",
                    "normalization_stats",
                    "params:training",
                    "params:lr_finder",
                ],
                outputs=["lr_finder_result", "lr_finder_plot"],
                name="find_learning_rate_node",
            ),
        ],
        namespace=NAMESPACE,
        prefix_datasets_with_namespace=False,
    )
