"""Wiring of the collect_reviews pipeline."""

from kedro.pipeline import Node, Pipeline

from .nodes import collect_reviews

# The group that kedro-viz draws these nodes in (node names become f"{NAMESPACE}.{name}"); the
# datasets keep their catalog names (prefix_datasets_with_namespace=False).
NAMESPACE = "collect_reviews"


def create_pipeline(**kwargs) -> Pipeline:
    """``kedro run --pipelines collect_reviews``: the verdicts of Label Studio's review project, the final
    calls of the latest queue's patients (``review_patients``: the patient table it was made of), and the label corrections that the next ingestion applies."""
    return Pipeline(
        [
            Node(
                func=collect_reviews,
                inputs=[
                    "review_tasks",
                    "review_queue",
                    "review_patients",
                    "previous_reviewed_cells",
                    "label_corrections_to_apply",
                ],
                outputs=["reviewed_cells", "final_calls", "label_corrections", "review_report"],
                name="collect_reviews_node",
            ),
        ],
        namespace=NAMESPACE,
        prefix_datasets_with_namespace=False,
    )
