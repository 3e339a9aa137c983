"""Wiring of the review pipeline."""

from kedro.pipeline import Node, Pipeline

from .nodes import label_studio_tasks, make_queue, queue_label_issues, queue_patients

# The group that kedro-viz draws these nodes in (node names become f"{NAMESPACE}.{name}"); the
# datasets and parameters keep their catalog names (prefix_datasets_with_namespace=False).
NAMESPACE = "review"


def create_pipeline(**kwargs) -> Pipeline:
    """``kedro run --pipelines review``: the latest inference's review patients (and, with
    ``review.include_label_issues``, the label audit's suspects), queued in Label Studio."""
    return Pipeline(
        [
            Node(
                func=queue_patients,
                inputs=[
                    "predictions",
                    "patient_predictions",
                    "inference_summary",
                    "review_images",
                    "inference_model",
                    "params:review",
                ],
                outputs=["review_patient_cells", "review_patient_overlays"],
                name="queue_patients_node",
            ),
            Node(
                func=queue_label_issues,
                inputs=[
                    "label_issues_to_exclude",
                    "review_archive_index",
                    "review_archive_images",
                    "inference_model",
                    "params:review",
                ],
                outputs=["review_label_issue_cells", "review_label_issue_overlays"],
                name="queue_label_issues_node",
            ),
            Node(
                func=make_queue,
                inputs=[
                    "review_patient_cells",
                    "review_patient_overlays",
                    "review_label_issue_cells",
                    "review_label_issue_overlays",
                ],
                outputs=["review_queue", "review_overlays"],
                name="make_queue_node",
            ),
            Node(
                func=label_studio_tasks,
                inputs=["review_queue", "review_overlays", "params:review"],
                outputs="review_tasks",
                name="send_to_label_studio_node",
            ),
        ],
        namespace=NAMESPACE,
        prefix_datasets_with_namespace=False,
    )
