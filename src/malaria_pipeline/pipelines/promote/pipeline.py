"""Wiring of the promote pipeline."""

from kedro.pipeline import Node, Pipeline

from .nodes import promote_challenger

NAMESPACE = "promote"


def create_pipeline(**kwargs) -> Pipeline:
    """``kedro run --pipelines promote``: the challenger becomes champion when it is not worse."""
    return Pipeline(
        [
            Node(
                func=promote_challenger,
                inputs="params:promote",
                outputs="promotion_report",
                name="promote_challenger_node",
            )
        ],
        namespace=NAMESPACE,
        prefix_datasets_with_namespace=False,
    )
