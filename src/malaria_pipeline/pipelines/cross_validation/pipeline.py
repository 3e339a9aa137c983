"""Wiring of the cross-validation pipeline."""

from kedro.pipeline import Node, Pipeline

from .nodes import (
    assign_folds,
    audit_labels,
    compare_patient_methods,
    cross_validate,
    deployable_patient_settings,
    judge_patients_out_of_fold,
    label_issues_figure,
    patient_fractions_figure,
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
            *_patient_nodes(params),
            Node(
                func=summarize,
                inputs=[
                    "cv_predictions",
                    "cv_history",
                    "cv_operating_points",
                    "cv_patients",
                    "cv_smears",
                    "cv_patient_methods",
                    params,
                ],
                outputs=["cv_metrics", "cv_scores"],
                name="summarize_node",
            ),
            Node(
                func=audit_labels,
                inputs=["cv_predictions", params],
                outputs=["label_issues", "label_audit_summary"],
                name="audit_labels_node",
            ),
            *_figure_nodes(params),
        ],
        namespace=NAMESPACE,
        prefix_datasets_with_namespace=False,
    )


def _patient_nodes(params: str) -> list[Node]:
    """The patients out of fold, the counting thresholds and quantifiers compared, and what a model trained
    on every patient takes for its patient tables (``cv_patient_settings``)."""
    return [
        Node(
            func=judge_patients_out_of_fold,
            inputs=["cv_predictions", params],
            outputs=["cv_patients", "cv_smears"],
            name="judge_patients_node",
        ),
        Node(
            func=compare_patient_methods,
            inputs=["cv_predictions", params],
            outputs="cv_patient_methods",
            name="compare_patient_methods_node",
        ),
        Node(
            func=deployable_patient_settings,
            inputs=["cv_predictions", "cv_metrics", params],
            outputs="cv_patient_settings",
            name="store_patient_settings_node",
        ),
    ]


def _figure_nodes(params: str) -> list[Node]:
    """The figures: the patients' fractions, the folds' ROC curves, per-patient accuracy, the suspect labels."""
    return [
        Node(
            func=patient_fractions_figure,
            inputs="cv_patients",
            outputs="cv_patients_plot",
            name="plot_patient_fractions_node",
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
            func=label_issues_figure,
            inputs=["label_issues", "image_tensors", "image_index", params],
            outputs="label_issues_plot",
            name="plot_label_issues_node",
        ),
    ]
