"""Wiring of the cross-validation pipeline."""

from kedro.pipeline import Node, Pipeline

from .nodes import (
    assign_folds,
    audit_labels,
    cross_validate,
    label_issues_figure,
    per_patient_figure,
    roc_curves_figure,
    summarize,
)

# The group that kedro-viz draws these nodes in (node names become f"{NAMESPACE}.{name}"); the
# datasets and parameters keep their catalog names (prefix_datasets_with_namespace=False).
NAMESPACE = "cross_validation"


def create_pipeline(**kwargs) -> Pipeline:
    params = "params:cross_validation"
    return Pipeline(
        [
            Node(
                func=assign_folds,
                inputs=["image_index", params],
                outputs="cv_folds",
                name="assign_folds_node",
            ),
            Node(
                func=cross_validate,
                inputs=[
                    "image_tensors",
                    "image_index",
                    "cv_folds",
                    "label_issues_to_exclude",
                    params,
                    "params:training",
                ],
                outputs=["cv_predictions", "cv_history", "cv_operating_points"],
                name="cross_validate_node",
            ),
            Node(
                func=summarize,
                inputs=["cv_predictions", "cv_history", "cv_operating_points", params],
                outputs=["cv_metrics", "cv_scores"],
                name="summarize_node",
            ),
            Node(
                func=roc_curves_figure,
                inputs=["cv_predictions", params],
                outputs="cv_roc_curves_plot",
                name="plot_roc_curves_node",
            ),
            Node(
                func=per_patient_figure,
                inputs=["cv_metrics", params],
                outputs="cv_per_patient_plot",
                name="plot_per_patient_node",
            ),
            Node(
                func=audit_labels,
                inputs=["cv_predictions", params],
                outputs=["label_issues", "label_audit_summary"],
                name="audit_labels_node",
            ),
            Node(
                func=label_issues_figure,
                inputs=["label_issues", "image_tensors", "image_index", params],
                outputs="label_issues_plot",
                name="plot_label_issues_node",
            ),
        ],
        namespace=NAMESPACE,
        prefix_datasets_with_namespace=False,
    )
