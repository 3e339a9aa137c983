"""The cross-validation pipeline's own nodes, thin: the folds dealt and split (:mod:`~malaria_pipeline.cells.splitting`),
each fold's held-out predictions scored and the folds pooled (:mod:`~malaria_pipeline.assess.folds`), the patients
out of fold (:mod:`~malaria_pipeline.assess.out_of_fold`), the comparison of patient methods
(:mod:`~malaria_pipeline.assess.method_comparison`), the report and its table (:mod:`~malaria_pipeline.assess.cv_report`,
:mod:`~malaria_pipeline.assess.cv_table`), the label audit and the figures. The folds train, calibrate and
predict with the training pipeline's own nodes (:mod:`.pipeline`); these nodes log and track what they did."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from malaria_pipeline.assess import folds as fold_figures
from malaria_pipeline.assess import method_comparison
from malaria_pipeline.assess.columns import probability_column
from malaria_pipeline.assess.cv_report import cv_report, patient_report, report_scores
from malaria_pipeline.assess.cv_table import format_table
from malaria_pipeline.assess.label_audit import find_issues, summarize_issues
from malaria_pipeline.assess.out_of_fold import (
    cross_validated_patients,
    patient_call_args,
    pooled_patient_settings,
    workload_by_budget,
)
from malaria_pipeline.assess.patient_call import PatientCall
from malaria_pipeline.assess.patients import ReferenceCells
from malaria_pipeline.assess.plots import (
    plot_fold_roc_curves,
    plot_image_grid,
    plot_patient_fractions,
    plot_per_patient_accuracy,
)
from malaria_pipeline.assess.review import workload_lines, workload_scores
from malaria_pipeline.cells.splitting import (
    SplitError,
    check_patient_count,
    check_patient_ids,
    cross_validation_subsets,
    patient_folds,
)
from malaria_pipeline.framework import tracking

logger = logging.getLogger(__name__)


def assign_folds(image_index: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    """Deals whole patients into ``params["folds"]`` class-balanced folds (``StratifiedGroupKFold``, seeded).

    Returns:
        ``cv_folds``: ``path``, ``patient_id``, ``label`` and ``fold`` (1 to K) of every image, in index order.
    """
    patients = image_index["patient_id"].to_numpy()
    check_patient_ids(patients)
    check_patient_count(patients, params["folds"], "cross_validation.folds")
    fold = patient_folds(image_index["label"].to_numpy(), patients, params["folds"], params["seed"]) + 1
    folds = image_index[["path", "patient_id", "label"]].assign(fold=fold)
    for number, rows in folds.groupby("fold"):
        logger.info(
            "Fold %d: %d images of %d patients (%s)",
            number,
            len(rows),
            rows["patient_id"].nunique(),
            ", ".join(
                f"{k} {v:.1%}" for k, v in rows["label"].value_counts(normalize=True).sort_index().items()
            ),
        )
    return folds


def split_fold(
    image_index: pd.DataFrame, cv_folds: pd.DataFrame, params: dict[str, Any], fold: int
) -> pd.DataFrame:
    """``data_split`` of fold ``fold``: ``path`` and ``subset`` of every image, as the training pipeline's split.

    ``test`` is the held-out fold; the patients of the other folds are dealt again, ``1 / validation_folds``
    of them to ``validation`` (they choose the epoch, the temperature and the operating threshold, as in the
    training pipeline) and the rest to ``train``. The held-out fold chooses nothing.

    Raises:
        SplitError: ``cv_folds`` is of other images than ``image_index`` (another run's).
    """
    if (
        len(cv_folds) != len(image_index)
        or (cv_folds["path"].to_numpy() != image_index["path"].to_numpy()).any()
    ):
        raise SplitError(
            f"cv_folds ({len(cv_folds)} rows) and image_index ({len(image_index)}) come from different runs: "
            "run the cv_folds namespace again (kedro run --pipelines cross_validation --namespaces ingestion,cv_folds)."
        )
    subset = cross_validation_subsets(
        image_index["label"].to_numpy(),
        image_index["patient_id"].to_numpy(),
        cv_folds["fold"].to_numpy(),
        fold,
        params["validation_folds"],
        params["seed"],
    )
    split = pd.DataFrame({"path": image_index["path"], "subset": pd.Series(subset, dtype="string")})
    counts = {
        name: (int((subset == name).sum()), image_index["patient_id"][subset == name].nunique())
        for name in ("train", "validation", "test")
    }
    logger.info(
        "Cross-validation fold %d of %d: training on %d images of %d patients, choosing the epoch on %d of %d, "
        "predicting the held-out %d of %d",
        fold,
        int(cv_folds["fold"].max()),
        *counts["train"],
        *counts["validation"],
        *counts["test"],
    )
    return split


def score_fold(
    evaluation_predictions: pd.DataFrame, model: dict[str, Any], params: dict[str, Any], fold: int
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The held-out fold's predictions (evaluation's ``predict_subsets`` of the fold's calibrated model), its
    metrics (logged to the fold's MLflow run), and what the fold chose.

    Returns:
        ``out_of_fold``: the held-out rows (:func:`~malaria_pipeline.assess.folds.held_out_predictions`);
        ``fold_choices``: the kept epoch, the temperature, the operating threshold, and for each of
        ``target_sensitivities`` (with and without TTA when evaluation predicts with it) the threshold chosen
        on the validation patients and the sensitivity and specificity it gives on the held-out fold.
    """
    positive = params["positive_class"]
    out_of_fold = fold_figures.held_out_predictions(evaluation_predictions, model, positive, fold)
    chosen = fold_figures.fold_choices(out_of_fold)
    metrics = {**fold_figures.fold_metrics(out_of_fold, params), **chosen}
    names = fold_figures.metric_names(params["specificity_targets"])
    tracking.log_metrics({f"test.{name}": metrics[name] for name in names})
    logger.info(
        "Held-out fold: %s",
        ", ".join(f"{n} {metrics[n]:.4f}" for n in names if metrics[n] is not None),
    )
    subset = evaluation_predictions["subset"]
    choices = {
        "fold": fold,
        "kept_epoch": model.get("best_epoch"),
        **chosen,
        "operating_points": fold_figures.operating_points(
            evaluation_predictions[subset == "validation"],
            evaluation_predictions[subset == "test"],
            positive,
            params["target_sensitivities"],
        ),
    }
    return out_of_fold, choices


def pool_folds(
    image_index: pd.DataFrame, cv_folds: pd.DataFrame, **folds: Any
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The folds' outputs pooled: ``out_of_fold_<k>``, ``choices_<k>`` (``fold_choices``) and ``history_<k>``
    (``training_history``) of each fold k of ``cv_folds``
    (:func:`~malaria_pipeline.assess.folds.pool_out_of_fold`).

    Raises:
        SplitError: a fold's predictions are not of the images ``cv_folds`` holds out in it (a fold run of
            another assignment: run that fold's namespace again).

    Returns:
        ``cv_predictions``: every image's out-of-fold row, in index order; ``cv_history``: each fold's epochs,
        the kept one marked; ``cv_operating_points``: each fold's row per target sensitivity (and TTA).
    """
    cv_predictions, cv_history, cv_operating_points = fold_figures.pool_out_of_fold(
        image_index, cv_folds, folds
    )
    logger.info(
        "Pooled the out-of-fold predictions of %d folds: %d images",
        int(cv_folds["fold"].max()),
        len(cv_predictions),
    )
    return cv_predictions, cv_history, cv_operating_points


def judge_patients_out_of_fold(
    cv_predictions: pd.DataFrame, params: dict[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every patient's corrected fraction, interval, chance under the healthy range and call out of fold,
    cells counted at ``patients.count_at``, and simulated smears of each fold's cells judged the same way
    (:func:`~malaria_pipeline.assess.out_of_fold.cross_validated_patients`).

    Returns:
        ``cv_patients`` and ``cv_smears``.
    """
    detection = params["patients"]["detection"]
    table, smears = cross_validated_patients(
        cv_predictions, **patient_call_args(params["patients"], params["positive_class"])
    )
    logger.info(
        "Smears: %d of %d cells per fold at %d parasitemias, %.0f%% built by drawing a patient's cells again "
        "(fewer cells of a class than a smear needs)",
        detection["smears"],
        detection["cells"],
        len(detection["parasitemia"]),
        100 * smears["resampled"].mean(),
    )
    return table, smears


def review_workload_out_of_fold(
    cv_patients: pd.DataFrame, cv_smears: pd.DataFrame, params: dict[str, Any], review: dict[str, Any]
) -> dict[str, Any]:
    """``cv_review_workload``: what a reviewer of each review patient's top ``k`` cells (``review.workload_k``)
    gives and costs out of fold, the archive's label standing for the reviewer's eye, for each budget the
    rule can be chosen under (``patients.budget``), each fold called by the rule the other folds chose under
    it (:func:`~malaria_pipeline.assess.out_of_fold.workload_by_budget`). Also MLflow metrics
    ``cv.review.<budget>.k<k>.<figure>``."""
    report = workload_by_budget(cv_patients, cv_smears, params["patients"], review["workload_k"])
    for budget, figures in report["by_budget"].items():
        title = f"Review out of fold, the rule chosen within a budget of {budget}"
        for line in workload_lines(title, figures["out_of_fold"]):
            logger.info("%s", line)
        tracking.log_metrics(workload_scores(f"cv.review.{budget}", figures["out_of_fold"]))
    return report


def compare_patient_methods(cv_predictions: pd.DataFrame, params: dict[str, Any]) -> dict[str, Any]:
    """``cv_patient_methods``: the cross-validated patient and smear figures of each counting threshold of
    ``compare.count_at``, and each quantifier of ``compare.quantifiers`` at ``patients.count_at``
    (:func:`~malaria_pipeline.assess.method_comparison.compare_patient_methods`)."""
    return method_comparison.compare_patient_methods(
        cv_predictions, params["positive_class"], params["patients"], params["compare"]
    )


def deployable_patient_settings(
    cv_predictions: pd.DataFrame, cv_metrics: dict[str, Any], params: dict[str, Any]
) -> dict[str, Any]:
    """``cv_patient_settings``: what a model trained on every patient (``conf/all_patients``), which has no
    validation patients, stores for its patient tables, from all the out-of-fold cells of this
    cross-validation pooled (:func:`~malaria_pipeline.assess.out_of_fold.pooled_patient_settings`): their
    reference counts, the spread between their patients, the counting threshold ``patients.count_at``
    resolved on them, and the call rule this cross-validation recommends (``cv_metrics``:
    ``patients.recommended_call``). The sources name this run (``mlflow_run_id``), whose artifact it is: the
    training run that claims this cross-validation reads it there (``claimed_cv_patient_settings``).
    """
    patients = params["patients"]
    settings = pooled_patient_settings(
        cv_predictions,
        positive=params["positive_class"],
        count_at=patients["count_at"],
        quantifier=patients["quantifier"],
        healthy_range=patients["healthy_range"],
        rule=PatientCall(**cv_metrics["patients"]["recommended_call"]),
        operating_threshold=cv_metrics.get("recommended_operating_threshold"),
        run_id=cv_metrics.get("mlflow_run_id"),
    )
    rates = ReferenceCells.from_dict(settings["reference_cells"]).at(settings["count_threshold"])
    logger.info(
        "For a model trained on every patient: cells counted at %.4g, sensitivity %.4f and specificity %.4f "
        "there, the call positive below a healthy chance of %g, negative below %g (%s)",
        settings["count_threshold"],
        rates.sensitivity,
        rates.specificity,
        settings["patient_call"]["healthy_below"],
        settings["patient_call"]["negative_below"],
        rates.source,
    )
    return settings


def patient_fractions_figure(cv_patients: pd.DataFrame) -> Figure:
    """The estimated fraction of each patient with its interval against the labelled one, by call."""
    return plot_patient_fractions({"cross-validation, out of fold": cv_patients})


def summarize(
    cv_predictions: pd.DataFrame,
    cv_history: pd.DataFrame,
    cv_operating_points: pd.DataFrame,
    cv_patients: pd.DataFrame,
    cv_smears: pd.DataFrame,
    cv_patient_methods: dict[str, Any],
    params: dict[str, Any],
) -> tuple[dict, dict]:
    """Metrics of each fold, their mean ± standard deviation, the pooled out-of-fold figures, per-patient
    accuracy, the epoch count, temperature and operating threshold that the folds chose (for a model
    trained on every patient), what each target sensitivity gave on the held-out folds, and the patients
    (:mod:`~malaria_pipeline.assess.cv_report`); logged as a table, one record a line.

    Returns:
        ``cv_metrics`` (the JSON report) and ``cv_scores`` (MLflow metrics of the pipeline's run).
    """
    report = cv_report(cv_predictions, cv_history, cv_operating_points, params, tracking.active_run_id())
    report["patients"] = patient_report(cv_patients, cv_smears, cv_patient_methods, params["patients"])
    for line in format_table(report):  # one record per line, as in a log file or CI
        logger.info("%s", line)
    return report, report_scores(report, params["specificity_targets"])


def audit_labels(cv_predictions: pd.DataFrame, params: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Suspected label errors among the out-of-fold predictions (cleanlab), and their counts.

    Returns:
        ``label_issues`` (one row per suspect, most suspect first) and ``label_audit_summary``.
    """
    method = params["label_audit"]["filter_by"]
    issues = find_issues(
        cv_predictions, probability_column(params["positive_class"]), params["positive_class"], method
    )
    summary = summarize_issues(cv_predictions, issues, method)
    logger.info(
        "Label audit: %d of %d images (%.2f%%) are suspected of a wrong label (%s); worst patients: %s",
        summary["flagged"],
        summary["images"],
        100 * summary["share"],
        ", ".join(f"{label} {c['flagged']}" for label, c in summary["by_given_label"].items()),
        ", ".join(f"{p['patient_id']} {p['flagged']} of {p['images']}" for p in summary["by_patient"][:3])
        or "none",
    )
    tracking.log_metrics({"label_audit.flagged": summary["flagged"], "label_audit.share": summary["share"]})
    return issues, summary


def label_issues_figure(
    label_issues: pd.DataFrame, image_tensors: torch.Tensor, image_index: pd.DataFrame, params: dict[str, Any]
) -> Figure:
    """The most suspect cells: given → suggested label, label quality, patient."""
    # an audit that flags nothing reads back from its CSV as a table of no rows and untyped columns
    worst = label_issues.astype({"rank": "int64"}).nsmallest(params["label_audit"]["figure_cells"], "rank")
    rows = pd.Series(np.arange(len(image_index)), index=image_index["path"])[worst["path"]].to_numpy()
    titles = [
        f"{r.given_label[:5]}→{r.suggested_label[:5]} q={r.label_quality:.2f}\n{r.patient_id}"
        for r in worst.itertuples()
    ]
    return plot_image_grid(
        image_tensors[torch.from_numpy(rows.copy())],
        titles,
        suptitle=f"The {len(worst)} most suspect labels of {len(label_issues)} flagged "
        "(given→suggested, q = out-of-fold P(given label))",
    )


def roc_curves_figure(cv_predictions: pd.DataFrame, params: dict[str, Any]) -> Figure:
    positive = params["positive_class"]
    p_column = probability_column(positive)
    folds = {
        f"fold {fold}": ((cells["label"] == positive).to_numpy(), cells[p_column].to_numpy())
        for fold, cells in cv_predictions.groupby("fold")
    }
    return plot_fold_roc_curves(folds, positive)


def per_patient_figure(cv_metrics: dict[str, Any], params: dict[str, Any]) -> Figure:
    return plot_per_patient_accuracy(cv_metrics["per_patient"], params["worst_patients"])
