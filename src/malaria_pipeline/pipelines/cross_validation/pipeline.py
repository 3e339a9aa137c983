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
            Node(assign_folds, ["image_index", params], "cv_folds", name="assign_folds_node"),
            Node(cross_validate,
                 ["image_tensors", "image_index", "cv_folds", "label_issues_to_exclude", params, "params:training"],
                 ["cv_predictions", "cv_history", "cv_operating_points"], name="cross_validate_node"),
            Node(summarize, ["cv_predictions", "cv_history", "cv_operating_points", params], ["cv_metrics", "cv_scores"],
                 name="summarize_node"),
            Node(roc_curves_figure, ["cv_predictions", params], "cv_roc_curves_plot", name="plot_roc_curves_node"),
            Node(per_patient_figure, ["cv_metrics", params], "cv_per_patient_plot", name="plot_per_patient_node"),
            Node(audit_labels, ["cv_predictions", params], ["label_issues", "label_audit_summary"],
                 name="audit_labels_node"),
            Node(label_issues_figure, ["label_issues", "image_tensors", "image_index", params], "label_issues_plot",
                 name="plot_label_issues_node"),
        ],
        namespace=NAMESPACE,
        prefix_datasets_with_namespace=False,
    )
