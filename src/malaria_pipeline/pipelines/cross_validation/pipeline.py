"""Wiring of the cross-validation pipeline: K folds, each a namespaced copy of the training stages' own nodes.

``kedro run --pipelines cross_validation`` runs, after ingestion:

- ``cv_folds``: :func:`assign_folds` deals the patients into K folds (``cv_folds``);
- ``cv_fold_1`` … ``cv_fold_K``, one Kedro namespace per fold (:func:`fold_pipeline`): the fold's split
  (:func:`split_fold`), then the training pipeline's nodes, unchanged: preprocessing's normalization
  statistics, model_training's ``train_model`` and ``calibrate_model``, evaluation's ``predict_subsets``;
  then :func:`score_fold`, the held-out fold's predictions and the fold's choices. Each fold's datasets
  are its own (``cv_fold_3.model``, ``cv_fold_3.evaluation_predictions``…: versioned files,
  ``conf/base/catalog.yml``), so a fold runs alone (``--namespaces cv_fold_3``), on another machine, or
  as one Airflow task;
- ``cross_validation``: the folds pooled (:func:`pool_folds`), then the patients, reports, label audit and
  figures of the out-of-fold predictions.

K is ``cross_validation.folds`` (``parameters_cross_validation.yml``), which
:mod:`malaria_pipeline.pipeline_registry` reads before it builds the pipeline.
"""

from __future__ import annotations

import functools

from kedro.pipeline import Node, Pipeline

from malaria_pipeline.framework.tracking import FOLD_PREFIX
from malaria_pipeline.pipelines import evaluation, model_training, preprocessing

from .nodes import (
    assign_folds,
    audit_labels,
    compare_patient_methods,
    deployable_patient_settings,
    judge_patients_out_of_fold,
    label_issues_figure,
    patient_fractions_figure,
    per_patient_figure,
    pool_folds,
    review_workload_out_of_fold,
    roc_curves_figure,
    score_fold,
    split_fold,
    summarize,
)

# The groups that kedro-viz draws and kedro-airflow makes tasks of (--group-by namespace): the folds'
# assignment, each fold, and what pools them. Node names become f"{namespace}.{name}".
FOLDS_NAMESPACE = "cv_folds"
NAMESPACE = "cross_validation"
PARAMS = "params:cross_validation"
# What every fold reads as it is (the rest of a fold's datasets are prefixed with its namespace).
SHARED_INPUTS = {
    "image_tensors",
    "image_index",
    "cv_folds",
    "label_issues_to_exclude",
    "claimed_cv_patient_settings",
}
SHARED_PARAMETERS = {"params:training", "params:evaluation", PARAMS}


def fold_namespace(fold: int) -> str:
    """``cv_fold_<fold>``: the namespace of fold ``fold`` (1 to K)."""
    return f"{FOLD_PREFIX}{fold}"


def create_pipeline(folds: int = 5, **kwargs) -> Pipeline:
    """The cross-validation of ``folds`` folds (after ingestion, which the registry adds)."""
    if folds < 2:
        raise ValueError(f"cross_validation.folds is {folds}: give 2 or more")
    assignment = Pipeline(
        [
            Node(
                func=assign_folds,
                inputs=["image_index", PARAMS],
                outputs="cv_folds",
                name="assign_folds_node",
            )
        ],
        namespace=FOLDS_NAMESPACE,
        prefix_datasets_with_namespace=False,
    )
    return sum((fold_pipeline(fold) for fold in range(1, folds + 1)), assignment) + pooled_pipeline(folds)


def _for_fold(func, fold: int):
    """``func`` with ``fold=fold``, still named and documented as ``func`` (for kedro-viz and the logs)."""
    return functools.update_wrapper(functools.partial(func, fold=fold), func)


def fold_pipeline(fold: int) -> Pipeline:
    """Fold ``fold`` in the namespace ``cv_fold_<fold>``: its split, the training stages' nodes on it, its score.

    The training stages' pipelines are filtered to the nodes a fold needs, and their datasets take the
    fold's prefix (``cv_fold_<fold>.data_split``…), except :data:`SHARED_INPUTS` and the parameters.
    """
    stages = (
        Pipeline(
            [
                Node(
                    func=_for_fold(split_fold, fold),
                    inputs=["image_index", "cv_folds", PARAMS],
                    outputs="data_split",
                    name="split_fold_node",
                )
            ]
        )
        + preprocessing.create_pipeline().only_nodes_with_outputs("normalization_stats")
        # training and calibration; not the ONNX export, which a fold's model never serves
        + model_training.create_pipeline().only_nodes_with_outputs("trained_model", "model")
        + evaluation.create_pipeline().only_nodes_with_outputs("evaluation_predictions")
        + Pipeline(
            [
                Node(
                    func=_for_fold(score_fold, fold),
                    inputs=["evaluation_predictions", "model", PARAMS],
                    outputs=["out_of_fold", "fold_choices"],
                    name="score_fold_node",
                )
            ]
        )
    )
    return Pipeline(
        stages, namespace=fold_namespace(fold), inputs=SHARED_INPUTS, parameters=SHARED_PARAMETERS
    )


def pooled_pipeline(folds: int) -> Pipeline:
    """The CV-only nodes on the folds' outputs: pooling, patients, reports, label audit and figures."""
    each = {
        f"{name}_{fold}": f"{fold_namespace(fold)}.{dataset}"
        for fold in range(1, folds + 1)
        for name, dataset in (
            ("out_of_fold", "out_of_fold"),
            ("choices", "fold_choices"),
            ("history", "training_history"),
        )
    }
    return Pipeline(
        [
            Node(
                func=pool_folds,
                inputs={"image_index": "image_index", "cv_folds": "cv_folds", **each},
                outputs=["cv_predictions", "cv_history", "cv_operating_points"],
                name="pool_folds_node",
            ),
            *_patient_nodes(PARAMS),
            Node(
                func=summarize,
                inputs=[
                    "cv_predictions",
                    "cv_history",
                    "cv_operating_points",
                    "cv_patients",
                    "cv_smears",
                    "cv_patient_methods",
                    PARAMS,
                ],
                outputs=["cv_metrics", "cv_scores"],
                name="summarize_node",
            ),
            Node(
                func=audit_labels,
                inputs=["cv_predictions", PARAMS],
                outputs=["label_issues", "label_audit_summary"],
                name="audit_labels_node",
            ),
            *_figure_nodes(PARAMS),
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
            func=review_workload_out_of_fold,
            inputs=["cv_patients", "cv_smears", params, "params:review"],
            outputs="cv_review_workload",
            name="measure_review_workload_node",
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
