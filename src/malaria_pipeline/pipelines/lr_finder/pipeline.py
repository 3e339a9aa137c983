"""Wiring of the learning-rate finder pipeline."""

from kedro.pipeline import Node, Pipeline

from .nodes import find_learning_rate


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                func=find_learning_rate,
                inputs=["image_tensors", "image_index", "data_split", "normalization_stats",
                        "params:training", "params:lr_finder"],
                outputs=["lr_finder_result", "lr_finder_plot"],
                name="find_learning_rate_node",
            ),
        ]
    )
