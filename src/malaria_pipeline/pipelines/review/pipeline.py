"""Wiring of the review pipelines: ``review`` (the latest ``inference`` run) and ``batch_review`` (the latest
``batch_inference`` run, on Spark)."""

from kedro.pipeline import Node, Pipeline

from .nodes import label_studio_tasks, make_queue, queue_batch_patients, queue_label_issues, queue_patients

# The group that kedro-viz draws these nodes in (node names become f"{NAMESPACE}.{name}"); the
# datasets and parameters keep their catalog names (prefix_datasets_with_namespace=False).
NAMESPACE = "review"
QUEUED = ["review_patient_cells", "review_patient_overlays", "review_patients"]


def create_pipeline(**kwargs) -> Pipeline:
    """``kedro run --pipelines review``: the latest inference's review patients (and, with
    ``review.include_label_issues``, the label audit's suspects), queued in Label Studio."""
    return _queued(
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
            outputs=QUEUED,
            name="queue_patients_node",
        ),
        model="inference_model",
    )


def create_batch_pipeline(**kwargs) -> Pipeline:
    """``kedro run --pipelines batch_review``: the same of the latest ``batch_inference`` run (its
    ``batch_predictions`` and ``batch_patients``, read without Spark)."""
    return _queued(
        Node(
            func=queue_batch_patients,
            inputs=[
                "batch_predictions_table",
                "batch_patients",
                "batch_review_images",
                "batch_model",
                "params:review",
                "params:batch_inference",
            ],
            outputs=QUEUED,
            name="queue_batch_patients_node",
        ),
        model="batch_model",
    )


def _queued(patients: Node, model: str) -> Pipeline:
    """The patients' node, then the label audit's suspects (their heatmaps drawn by ``model``), the queue and
    its tasks in Label Studio."""
    return Pipeline(
        [
            patients,
            Node(
                func=queue_label_issues,
                inputs=[
                    "label_issues_to_exclude",
                    "review_archive_index",
                    "review_archive_images",
                    model,
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
