"""The cross-validation pipeline's own nodes: the folds dealt and split, each fold's held-out predictions
scored, the folds pooled, and the out-of-fold reports, label audit and figures. The folds train, calibrate
and predict with the training pipeline's own nodes (:mod:`.pipeline`)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score

from malaria_pipeline.assess.columns import WITHOUT_TTA, probability_column, without_tta_column
from malaria_pipeline.assess.detection import detection_limits, plain_sentence
from malaria_pipeline.assess.label_audit import find_issues, summarize_issues
from malaria_pipeline.assess.metrics import (
    at_specificity_name,
    calibration_errors,
    classification_metrics,
    mean_and_std,
    per_patient,
    sensitivity_at_specificity,
    sensitivity_specificity,
    threshold_for_sensitivity,
)
from malaria_pipeline.assess.out_of_fold import (
    call_out_of_fold,
    choose_rule,
    cross_validated_patients,
    pooled_patient_settings,
)
from malaria_pipeline.assess.patients import (
    PATIENT_METRICS,
    PatientCall,
    ReferenceCells,
    patient_metrics,
)
from malaria_pipeline.assess.plots import (
    plot_fold_roc_curves,
    plot_image_grid,
    plot_patient_fractions,
    plot_per_patient_accuracy,
)
from malaria_pipeline.assess.quantifiers import compare_quantifiers
from malaria_pipeline.assess.review import workload_lines, workload_report, workload_scores
from malaria_pipeline.cells.splitting import (
    SplitError,
    check_patient_count,
    check_patient_ids,
    cross_validation_subsets,
    patient_folds,
)
from malaria_pipeline.framework import tracking

logger = logging.getLogger(__name__)

# The metrics of each fold, and their mean ± std: Rajaraman et al. (2018) report the first eight; then
# the calibration error after and before temperature scaling, the sensitivity and specificity at each
# fold's operating threshold (chosen on its validation patients), and that threshold and temperature.
AT_OPERATING_POINT = (
    "accuracy_at_operating_point",
    "sensitivity_at_operating_point",
    "specificity_at_operating_point",
)
FOLD_CHOICES = ("operating_threshold", "temperature")
TTA_COMPARED = ("accuracy", "sensitivity", "specificity", "roc_auc")
OPERATING_POINT_COLUMNS = ("fold", "tta", "target_sensitivity", "threshold", "sensitivity", "specificity")
FOLD_METRICS = (
    "accuracy",
    "sensitivity",
    "specificity",
    "precision",
    "f1",
    "mcc",
    "roc_auc",
    "average_precision",
    "ece",
    "ece_uncalibrated",
    *AT_OPERATING_POINT,
    *FOLD_CHOICES,
)


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
        ``out_of_fold``: path, patient_id and label of each held-out image, P(positive class) calibrated and
        ``…_uncalibrated`` (T = 1), with TTA also ``…_without_tta`` (the first view alone), the fold's
        ``operating_threshold`` (NaN when its validation patients were of one class), ``temperature`` and
        ``fold``; ``fold_choices``: the kept epoch, the temperature, the operating threshold, and for each of
        ``target_sensitivities`` (with and without TTA when evaluation predicts with it) the threshold chosen
        on the validation patients and the sensitivity and specificity it gives on the held-out fold.
    """
    column = probability_column(params["positive_class"])
    point = model.get("operating_point")
    held_out = evaluation_predictions[evaluation_predictions["subset"] == "test"]
    kept = [
        "path",
        "patient_id",
        "label",
        column,
        f"{column}_uncalibrated",
        without_tta_column(params["positive_class"]),
    ]
    out_of_fold = (
        held_out[[name for name in kept if name in held_out.columns]]
        .reset_index(drop=True)
        .assign(
            operating_threshold=point["threshold"] if point else np.nan,
            temperature=float(model.get("temperature", 1.0)),
            fold=fold,
        )
    )
    _log_fold_metrics(out_of_fold, params)
    validation = evaluation_predictions[evaluation_predictions["subset"] == "validation"]
    choices = {
        "fold": fold,
        "kept_epoch": model.get("best_epoch"),
        **_fold_choices(out_of_fold),
        "operating_points": _operating_points(validation, held_out, params),
    }
    return out_of_fold, choices


def _operating_points(
    validation: pd.DataFrame, held_out: pd.DataFrame, params: dict[str, Any]
) -> list[dict[str, Any]]:
    """For each of ``params["target_sensitivities"]``, the threshold chosen on the validation images and what
    it gives on the held-out ones; with TTA also without it (the first view). None of each where the
    validation images are of one class."""
    positive, rows = params["positive_class"], []
    column = probability_column(positive)
    valid_truth, test_truth = (
        (validation["label"] == positive).to_numpy(),
        (held_out["label"] == positive).to_numpy(),
    )
    with_tta = without_tta_column(positive) in held_out.columns
    for tta in (True, False) if with_tta else (False,):
        name = column if tta or not with_tta else without_tta_column(positive)
        p_valid, p_test = validation[name].to_numpy(dtype=np.float64), held_out[name].to_numpy()
        for target in params["target_sensitivities"]:
            row = {
                "tta": tta,
                "target_sensitivity": float(target),
                "threshold": None,
                "sensitivity": None,
                "specificity": None,
            }
            if valid_truth.any() and not valid_truth.all():
                row["threshold"] = threshold_for_sensitivity(valid_truth, p_valid, target)["threshold"]
                row["sensitivity"], row["specificity"] = sensitivity_specificity(
                    test_truth, p_test, row["threshold"]
                )
            rows.append(row)
    return rows


def pool_folds(
    image_index: pd.DataFrame, cv_folds: pd.DataFrame, **folds: Any
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The folds' outputs pooled: ``out_of_fold_<k>``, ``choices_<k>`` (``fold_choices``) and ``history_<k>``
    (``training_history``) of each fold k of ``cv_folds``.

    Raises:
        SplitError: a fold's predictions are not of the images ``cv_folds`` holds out in it (a fold run of
            another assignment: run that fold's namespace again).

    Returns:
        ``cv_predictions``: every image's out-of-fold row, in index order; ``cv_history``: each fold's epochs,
        the kept one marked; ``cv_operating_points``: each fold's row per target sensitivity (and TTA).
    """
    count = int(cv_folds["fold"].max())
    predictions, histories, points = [], [], []
    for fold in range(1, count + 1):
        out_of_fold, choices = folds[f"out_of_fold_{fold}"], folds[f"choices_{fold}"]
        expected = set(cv_folds.loc[cv_folds["fold"] == fold, "path"])
        if set(out_of_fold["path"]) != expected or len(out_of_fold) != len(expected):
            raise SplitError(
                f"The predictions of cv_fold_{fold} ({len(out_of_fold)} images) are not of the {len(expected)} "
                f"images that cv_folds holds out in fold {fold}: they come from another run. Run that fold again "
                f"(kedro run --pipelines cross_validation --namespaces cv_fold_{fold},cross_validation)."
            )
        predictions.append(out_of_fold)
        history = folds[f"history_{fold}"]
        histories.append(history.assign(fold=fold, kept=history["epoch"] == choices["kept_epoch"]))
        points.extend(dict(fold=fold, **row) for row in choices["operating_points"])
    order = pd.Series(np.arange(len(image_index)), index=image_index["path"])
    cv_predictions = (
        pd.concat(predictions).sort_values("path", key=lambda p: p.map(order)).reset_index(drop=True)
    )
    logger.info("Pooled the out-of-fold predictions of %d folds: %d images", count, len(cv_predictions))
    return (
        cv_predictions,
        pd.concat(histories, ignore_index=True),
        pd.DataFrame(points, columns=OPERATING_POINT_COLUMNS),
    )


def _fold_metrics(cells: pd.DataFrame, params: dict[str, Any]) -> dict[str, Any]:
    """The metrics at ``params["threshold"]``, the calibration errors (``calibration_bins``), and the
    metrics at each image's fold's operating threshold (None where a fold has none)."""
    positive = params["positive_class"]
    negative = next((c for c in sorted(cells["label"].unique()) if c != positive), "negative")
    column = probability_column(positive)
    truth, p_positive = (cells["label"] == positive).to_numpy(), cells[column].to_numpy()
    metrics = {
        **classification_metrics(truth, p_positive, params["threshold"], positive, negative),
        **calibration_errors(truth, p_positive, cells[f"{column}_uncalibrated"], params["calibration_bins"]),
    }
    thresholds = cells["operating_threshold"].to_numpy(dtype=float)
    at_point = (
        float(((p_positive >= thresholds) == truth).mean()),
        *sensitivity_specificity(truth, p_positive, thresholds),
    )
    metrics.update(dict(zip(AT_OPERATING_POINT, (None,) * 3 if np.isnan(thresholds).any() else at_point)))
    for target in params["specificity_targets"]:  # read on these cells' own ROC curve
        metrics[at_specificity_name(target)] = sensitivity_at_specificity(truth, p_positive, target)[
            "sensitivity"
        ]
    return metrics


def metric_names(params: dict[str, Any]) -> tuple[str, ...]:
    """:data:`FOLD_METRICS` and the sensitivity at each of ``specificity_targets``."""
    return FOLD_METRICS + tuple(at_specificity_name(t) for t in params["specificity_targets"])


def _fold_choices(cells: pd.DataFrame) -> dict[str, float | None]:
    """The operating threshold and temperature that a fold chose (one value per fold)."""
    return {
        name: None if np.isnan(cells[name].iloc[0]) else float(cells[name].iloc[0]) for name in FOLD_CHOICES
    }


def _log_fold_metrics(held_out: pd.DataFrame, params: dict[str, Any]) -> None:
    metrics = _fold_metrics(held_out, params)
    metrics.update(_fold_choices(held_out))
    names = metric_names(params)
    tracking.log_metrics({f"test.{name}": metrics[name] for name in names})
    logger.info(
        "Held-out fold: %s",
        ", ".join(f"{n} {metrics[n]:.4f}" for n in names if metrics[n] is not None),
    )


def _patients_args(params: dict[str, Any], count_at: Any = None) -> dict[str, Any]:
    patients = params["patients"]
    return {
        "positive": params["positive_class"],
        "count_at": patients["count_at"] if count_at is None else count_at,
        "level": patients["level"],
        "choose_from": patients["choose_from"],
        "min_fraction": patients["min_fraction"],
        "max_review": patients["max_review"],
        "min_cells": patients["call"]["min_cells"],
        "detection": patients["detection"],
        "healthy_range": patients["healthy_range"],
        "reviewer": reviewer_budget(patients),
    }


BUDGETS = ("cells", "patients")


def call_grid(patients: dict[str, Any]) -> tuple:
    """The grid that the call rule is chosen from, and what bounds it, of the ``patients`` parameters:
    ``(healthy_below, negative_below, min_fraction, max_review, min_cells)``
    (:func:`~malaria_pipeline.assess.out_of_fold.choose_rule`)."""
    return (
        patients["choose_from"]["healthy_below"],
        patients["choose_from"]["negative_below"],
        patients["min_fraction"],
        patients["max_review"],
        patients["call"]["min_cells"],
    )


def reviewer_budget(patients: dict[str, Any]) -> dict[str, Any] | None:
    """The reviewer's budget of ``patients.budget``: ``patients.reviewer`` for ``cells``, None for
    ``patients`` (the rule is then chosen within ``max_review``).

    Raises:
        ValueError: another budget.
    """
    budget = patients["budget"]
    if budget not in BUDGETS:
        raise ValueError(
            f"patients.budget is {budget!r}: give cells (a reviewer reads the top-ranked cells of each review "
            "patient: patients.reviewer.max_cells_per_patient) or patients (no reviewer: max_review)"
        )
    return patients["reviewer"] if budget == "cells" else None


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
    table, smears, _ = cross_validated_patients(cv_predictions, **_patients_args(params))
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
    gives and costs out of fold, the archive's label standing for the reviewer's eye
    (:func:`~malaria_pipeline.assess.review.workload_report`), for each budget the rule can be chosen under
    (``patients.budget``): ``cells`` (a reviewer: at most ``patients.reviewer.max_cells_per_patient`` cells
    looked at per patient) and ``patients`` (none: at most ``max_review`` of the patients in review), each
    fold called by the rule the other folds chose under it, with the rule all the patients choose. Also MLflow
    metrics ``cv.review.<budget>.k<k>.<figure>``."""
    patients = params["patients"]
    grid = call_grid(patients)
    report: dict[str, Any] = {"budget": patients["budget"], "k": list(review["workload_k"]), "by_budget": {}}
    for budget in BUDGETS:
        reviewer = reviewer_budget({**patients, "budget": budget})
        table = (
            cv_patients
            if budget == patients["budget"]
            else call_out_of_fold(cv_patients, *grid, smears=cv_smears, reviewer=reviewer)[0]
        )
        rule, chosen = choose_rule(table, grid, cv_smears, reviewer)
        report["by_budget"][budget] = {
            "bound": {"max_cells_per_patient": reviewer["max_cells_per_patient"]}
            if reviewer
            else {"max_review": patients["max_review"]},
            "per_fold_rules": _fold_rules(table),
            "recommended_call": rule.as_dict(),
            "recommended_call_on_all": chosen,
            "out_of_fold": workload_report(table, review["workload_k"], patients["min_fraction"]),
        }
        for line in workload_lines(
            f"Review out of fold, the rule chosen within a budget of {budget}",
            report["by_budget"][budget]["out_of_fold"],
        ):
            logger.info("%s", line)
        tracking.log_metrics(
            workload_scores(f"cv.review.{budget}", report["by_budget"][budget]["out_of_fold"])
        )
    return report


def _fold_rules(table: pd.DataFrame) -> list[dict[str, Any]]:
    """The rule that called each fold (chosen on the other folds)."""
    rules = table.groupby("fold")[["healthy_below", "negative_below"]].first().reset_index()
    return [
        {
            "fold": int(row.fold),
            "healthy_below": float(row.healthy_below),
            "negative_below": float(row.negative_below),
        }
        for row in rules.itertuples()
    ]


def compare_patient_methods(cv_predictions: pd.DataFrame, params: dict[str, Any]) -> dict[str, Any]:
    """``cv_patient_methods``: the cross-validated patient and smear figures of each counting threshold of
    ``compare.count_at``, and each quantifier of ``compare.quantifiers`` at ``patients.count_at``.

    Each counting threshold runs the whole patient call out of fold (rates, spread and rule from the other
    folds); each quantifier (mlquantify) is fitted on the other folds' cells, with a bootstrap interval.
    """
    compare, patients = params["compare"], params["patients"]
    by_threshold = []
    for i, count_at in enumerate(compare["count_at"], start=1):
        logger.info("Counting threshold %d of %d: %s", i, len(compare["count_at"]), count_at)
        try:
            table, smears, _ = cross_validated_patients(cv_predictions, **_patients_args(params, count_at))
        except ValueError as error:  # e.g. a specificity no threshold reaches on few reference cells
            logger.warning("Counting threshold %s compared with no figures: %s", count_at, error)
            by_threshold.append({"count_at": count_at, "error": str(error)})
            continue
        by_threshold.append(
            {"count_at": count_at, **_per_fold_and_pooled(table, smears, patients["min_fraction"])}
        )
    methods = compare["quantifiers"]["methods"]
    logger.info(
        "Quantifiers %s, each held-out patient with %d bootstrap draws",
        ", ".join(methods),
        compare["quantifiers"]["resamples"],
    )
    estimates = compare_quantifiers(
        cv_predictions,
        positive=params["positive_class"],
        count_at=patients["count_at"],
        methods=methods,
        resamples=compare["quantifiers"]["resamples"],
        level=patients["level"],
        seed=compare["quantifiers"]["seed"],
    )
    by_quantifier = [
        {"method": method, **_quantifier_figures(estimates[estimates["method"] == method])}
        for method in methods
    ]
    return {"count_at": patients["count_at"], "thresholds": by_threshold, "quantifiers": by_quantifier}


COMPARED = (
    "patient_roc_auc",
    "wrong_calls",
    "review_share",
    "interval_coverage",
    "healthy_smears_positive",
    "smear_coverage",
    "lod",
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


def _per_fold_and_pooled(table: pd.DataFrame, smears: pd.DataFrame, min_fraction: float) -> dict[str, Any]:
    def figures(patients: pd.DataFrame, judged: pd.DataFrame) -> dict[str, Any]:
        metrics = patient_metrics(patients, min_fraction)
        limits = detection_limits(judged)
        return {
            **metrics,
            "wrong_calls": metrics["false_positives"] + metrics["missed_from_min_fraction"],
            "healthy_smears_positive": limits["healthy_positive"],
            "smear_coverage": limits["coverage"],
            "lod": limits["lod"],
        }

    rows = [figures(patients, smears[smears["fold"] == fold]) for fold, patients in table.groupby("fold")]
    pooled = figures(table, smears)
    return {
        "per_fold": [{name: row[name] for name in COMPARED} for row in rows],
        "mean_std": mean_and_std(rows, COMPARED),
        "pooled": {name: pooled[name] for name in COMPARED},
    }


def _quantifier_figures(estimates: pd.DataFrame) -> dict[str, Any]:
    """MAE, coverage and patient ROC AUC (infected against uninfected, ranked by the estimate), per fold and pooled."""

    def figures(rows: pd.DataFrame) -> dict[str, float | None]:
        both = rows["infected"].any() and (~rows["infected"]).any()
        covered = (rows["fraction_low"] <= rows["labelled_fraction"]) & (
            rows["labelled_fraction"] <= rows["fraction_high"]
        )
        return {
            "fraction_mae": float((rows["fraction"] - rows["labelled_fraction"]).abs().mean()),
            "interval_coverage": float(covered.mean()),
            "patient_roc_auc": float(roc_auc_score(rows["infected"], rows["fraction"])) if both else None,
        }

    per_fold = [figures(rows) for _, rows in estimates.groupby("fold")]
    names = ("fraction_mae", "interval_coverage", "patient_roc_auc")
    return {"per_fold": per_fold, "mean_std": mean_and_std(per_fold, names), "pooled": figures(estimates)}


def patient_fractions_figure(cv_patients: pd.DataFrame) -> Figure:
    """The estimated fraction of each patient with its interval against the labelled one, by call."""
    return plot_patient_fractions({"cross-validation, out of fold": cv_patients})


def _patient_report(
    cv_patients: pd.DataFrame, cv_smears: pd.DataFrame, methods: dict[str, Any], params: dict[str, Any]
) -> dict[str, Any]:
    """Patient-level figures per fold, their mean ± std and pooled, the rule all patients choose, the
    comparison of counting thresholds and quantifiers, and the detection limits per fold and pooled."""
    patients = params["patients"]
    per_fold = []
    for fold, table in cv_patients.groupby("fold"):
        row = {"fold": int(fold), **patient_metrics(table, patients["min_fraction"])}
        row["call"] = {name: float(table[name].iloc[0]) for name in ("healthy_below", "negative_below")}
        per_fold.append(row)
    grid = call_grid(patients)
    rule, chosen = choose_rule(cv_patients, grid, cv_smears, reviewer_budget(patients))
    limits_per_fold = [
        {"fold": int(fold), **detection_limits(smears)} for fold, smears in cv_smears.groupby("fold")
    ]
    pooled_limits = detection_limits(cv_smears)
    return {
        "level": patients["level"],
        "min_fraction": patients["min_fraction"],
        "count_at": patients["count_at"],
        "per_fold": per_fold,
        "mean_std": mean_and_std(per_fold, PATIENT_METRICS),
        "pooled": patient_metrics(cv_patients, patients["min_fraction"]),
        "recommended_call": rule.as_dict(),
        "recommended_call_on_all": chosen,
        "methods": methods,
        "detection": {
            "cells": patients["detection"]["cells"],
            "per_fold": [{k: v for k, v in row.items() if k != "by_parasitemia"} for row in limits_per_fold],
            "mean_std": mean_and_std(limits_per_fold, DETECTION_FIGURES),
            "pooled": pooled_limits,
            "sentence": plain_sentence(pooled_limits, patients["detection"]["cells"]),
        },
    }


DETECTION_FIGURES = ("lob", "lod", "loq", "healthy_positive", "coverage")


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
    trained on every patient), and what each target sensitivity gave on the held-out folds.

    Returns:
        ``cv_metrics`` (the JSON report) and ``cv_scores`` (MLflow metrics of the pipeline's run).
    """
    per_fold = [
        {"fold": int(fold), **_fold_metrics(cells, params), **_fold_choices(cells)}
        for fold, cells in cv_predictions.groupby("fold")
    ]
    summary = mean_and_std(per_fold, metric_names(params))
    pooled = _fold_metrics(cv_predictions, params)
    patients = per_patient(cv_predictions, params["threshold"], params["positive_class"])
    kept = cv_history.loc[cv_history["kept"], "epoch"]
    report = {
        "folds": len(per_fold),
        "images": int(len(cv_predictions)),
        "patient_count": int(cv_predictions["patient_id"].nunique()),
        "positive_class": params["positive_class"],
        "threshold": params["threshold"],
        "std": "sample (ddof=1) over folds",
        "mean_std": summary,
        "per_fold": per_fold,
        "pooled": pooled,
        "per_patient": patients,
        "kept_epochs": [int(e) for e in kept],
        "recommended_epochs": int(np.median(kept)) if len(kept) else None,
        **{f"recommended_{name}": _median(row[name] for row in per_fold) for name in FOLD_CHOICES},
        "mlflow_run_id": tracking.active_run_id(),
    }
    if without_tta_column(params["positive_class"]) in cv_predictions.columns:
        report[WITHOUT_TTA] = _without_tta(cv_predictions, params)
    report["target_sensitivities"] = _by_target(cv_operating_points)
    report["patients"] = _patient_report(cv_patients, cv_smears, cv_patient_methods, params)
    for line in format_table(report):  # one record per line, as in a log file or CI
        logger.info("%s", line)
    scores = _scores(report, params)
    return report, scores


def _scores(report: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The MLflow metrics of the report: ``cv.<metric>.mean|std``, ``cv.pooled.<metric>``, the same of the
    patients (``cv.patients.…``), and the recommended epochs, temperature and threshold."""
    scores = {
        f"cv.{name}.{stat}": {"value": values[stat], "step": 0}
        for name, values in report["mean_std"].items()
        for stat in ("mean", "std")
    }
    scores.update(
        {
            f"cv.pooled.{name}": {"value": report["pooled"][name], "step": 0}
            for name in metric_names(params)
            if report["pooled"].get(name) is not None
        }
    )
    scores.update(
        {
            f"cv.patients.{name}.{stat}": {"value": values[stat], "step": 0}
            for name, values in report["patients"]["mean_std"].items()
            for stat in ("mean", "std")
        }
    )
    scores.update(
        {
            f"cv.pooled.patients.{name}": {"value": report["patients"]["pooled"][name], "step": 0}
            for name in PATIENT_METRICS
            if report["patients"]["pooled"][name] is not None
        }
    )
    detection = report["patients"]["detection"]
    scores.update(
        {
            f"cv.detection.{name}.{stat}": {"value": values[stat], "step": 0}
            for name, values in detection["mean_std"].items()
            for stat in ("mean", "std")
        }
    )
    scores.update(
        {
            f"cv.pooled.detection.{name}": {"value": detection["pooled"][name], "step": 0}
            for name in DETECTION_FIGURES
            if detection["pooled"][name] is not None
        }
    )
    scores.update(
        {
            f"cv.recommended_{name}": {"value": report[f"recommended_{name}"], "step": 0}
            for name in ("epochs", *FOLD_CHOICES)
            if report[f"recommended_{name}"] is not None
        }
    )
    return scores


def _without_tta(cv_predictions: pd.DataFrame, params: dict[str, Any]) -> dict[str, Any]:
    """Mean ± std over the folds of :data:`TTA_COMPARED` of the same models' predictions without TTA."""
    column = probability_column(params["positive_class"])
    plain = cv_predictions.assign(**{column: cv_predictions[without_tta_column(params["positive_class"])]})
    per_fold = [
        classification_metrics(
            (cells["label"] == params["positive_class"]).to_numpy(),
            cells[column].to_numpy(),
            params["threshold"],
        )
        for _, cells in plain.groupby("fold")
    ]
    return mean_and_std(per_fold, TTA_COMPARED)


def _by_target(cv_operating_points: pd.DataFrame) -> list[dict[str, Any]]:
    """Per target sensitivity (and tta): mean ± std over the folds of the held-out sensitivity and
    specificity at the thresholds chosen on validation, and the median of those thresholds."""
    rows = []
    for (tta, target), folds in cv_operating_points.groupby(["tta", "target_sensitivity"], sort=True):
        records = (
            folds.astype(object).where(folds.notna(), None).to_dict("records")
        )  # NaN (read from CSV): None
        rows.append(
            {
                "tta": bool(tta),
                "target_sensitivity": float(target),
                **mean_and_std(records, ("sensitivity", "specificity")),
                "median_threshold": _median(r["threshold"] for r in records),
            }
        )
    return rows


def _median(values) -> float | None:
    """The median of the values that are not None; None if there are none."""
    known = [v for v in values if v is not None]
    return float(np.median(known)) if known else None


def format_table(report: dict[str, Any]) -> list[str]:
    """The lines of the table of mean ± std per metric, with the pooled out-of-fold figure beside it."""
    lines = [
        f"Cross-validation over {report['folds']} patient-grouped folds ({report['images']:,} images of "
        f"{report['patient_count']} patients, out of fold):",
        f"{'metric':<30} {'mean ± std':>17} {'pooled':>8}",
    ]
    for name, values in report["mean_std"].items():
        pooled = report["pooled"].get(name)
        lines.append(
            f"{name:<30} {values['mean']:>8.4f} ± {values['std']:.4f} {'' if pooled is None else f'{pooled:.4f}':>8}"
        )
    if WITHOUT_TTA in report:
        lines.append(
            "the same models without test-time augmentation: "
            + ", ".join(f"{name} {v['mean']:.4f} ± {v['std']:.4f}" for name, v in report[WITHOUT_TTA].items())
        )
    for row in report.get("target_sensitivities", []):
        if "sensitivity" in row and "specificity" in row:
            lines.append(
                f"target sensitivity {row['target_sensitivity']}{' with TTA' if row['tta'] else ''}: held-out "
                f"sensitivity {row['sensitivity']['mean']:.4f} ± {row['sensitivity']['std']:.4f}, specificity "
                f"{row['specificity']['mean']:.4f} ± {row['specificity']['std']:.4f} (median threshold "
                f"{row['median_threshold']:.4f})"
            )
    worst = report["per_patient"][:3]
    lines.append(
        "worst patients: "
        + ", ".join(f"{p['patient_id']} {p['accuracy']:.3f} of {p['images']}" for p in worst)
    )
    if report["recommended_epochs"] is not None:
        lines.append(
            f"epochs kept per fold {report['kept_epochs']}: a model on every patient trains "
            f"{report['recommended_epochs']} (training.epochs; docs/cross-validation.md)"
        )
    if report.get("recommended_operating_threshold") is not None:
        lines.append(
            f"median of the folds' operating thresholds {report['recommended_operating_threshold']:.4f}, "
            f"temperatures {_or_na(report['recommended_temperature'])}"
        )
    if "patients" in report:
        lines += format_patient_table(report["patients"])
    return lines


def format_patient_table(patients: dict[str, Any]) -> list[str]:
    """The patient-level lines of the table: mean ± std over folds and pooled, each fold's rule and
    held-out figures, the rule all the patients choose, the comparisons and the detection limits."""
    pooled = patients["pooled"]
    lines = [
        f"Patients ({pooled['patients']}, {pooled['infected']} infected), out of fold, counted at "
        f"{patients['count_at']}: corrected fraction and its {patients['level']:.0%} interval with the spread "
        "between patients, call by the rule the other folds chose",
        f"{'patient metric':<30} {'mean ± std':>17} {'pooled':>8}",
    ]
    lines += _mean_std_lines(patients["mean_std"], pooled)
    for row in patients["per_fold"]:
        lines.append(
            f"fold {row['fold']}: rule positive where a healthy patient's chance is below "
            f"{row['call']['healthy_below']:g}, negative below {row['call']['negative_below']:g}: "
            f"{row['patients']} patients, review {_or_na(row['review_share'])}, call sensitivity "
            f"{_or_na(row['call_sensitivity'])}, specificity {_or_na(row['call_specificity'])}, "
            f"{row['missed_from_min_fraction']} infected of fraction >= {patients['min_fraction']:g} called "
            f"negative, {row['false_positives']} uninfected called positive, coverage {_or_na(row['interval_coverage'])}"
        )
    rule = patients["recommended_call"]
    lines.append(
        f"the rule all {pooled['patients']} patients choose (evaluation.patients.call): healthy_below "
        f"{rule['healthy_below']:g}, negative_below {rule['negative_below']:g}"
    )
    return lines + _comparison_lines(patients["methods"]) + _detection_lines(patients["detection"])


def _mean_std_lines(mean_std: dict[str, Any], pooled: dict[str, Any], width: int = 30) -> list[str]:
    lines = []
    for name, values in mean_std.items():
        value = pooled.get(name)
        lines.append(
            f"{name:<{width}} {values['mean']:>8.4f} ± {values['std']:.4f} {'' if value is None else f'{value:.4f}':>8}"
        )
    return lines


def _comparison_lines(methods: dict[str, Any]) -> list[str]:
    """Mean ± std over the folds (pooled) of each counting threshold and each quantifier."""

    def cell(figures: dict[str, Any], name: str) -> str:
        values, pooled = figures["mean_std"].get(name), figures["pooled"].get(name)
        if values is None:
            return f"{'n/a':>24}"
        return f"{values['mean']:>7.4f} ± {values['std']:.4f} ({_or_na(pooled)})"

    lines = [
        "Counting threshold, the whole call out of fold (mean ± std over folds, pooled):",
        f"{'count_at':<22}" + "".join(f"{name:>27}" for name in COMPARED),
    ]
    for row in methods["thresholds"]:
        if "error" in row:
            lines.append(f"{str(row['count_at']):<22} n/a: {row['error']}")
            continue
        lines.append(f"{str(row['count_at']):<22}" + "".join(f"{cell(row, n):>27}" for n in COMPARED))
        lines.append(_per_fold_line(row, COMPARED))
    names = ("fraction_mae", "interval_coverage", "patient_roc_auc")
    lines += [
        f"Quantifiers (mlquantify) at {methods['count_at']}, bootstrap intervals (mean ± std over folds, pooled):",
        f"{'method':<22}" + "".join(f"{name:>27}" for name in names),
    ]
    for row in methods["quantifiers"]:
        lines.append(f"{row['method']:<22}" + "".join(f"{cell(row, n):>27}" for n in names))
        lines.append(_per_fold_line(row, names))
    return lines


def _per_fold_line(row: dict[str, Any], names: tuple[str, ...]) -> str:
    """The figures of each fold, in fold order: ``  folds 1-5: name a/b/c/d/e; …``."""
    folds = row["per_fold"]
    shown = "; ".join(
        f"{name} " + "/".join("n/a" if fold[name] is None else f"{fold[name]:.4g}" for fold in folds)
        for name in names
    )
    return f"  folds 1-{len(folds)}: {shown}"


def _detection_lines(detection: dict[str, Any]) -> list[str]:
    """Detection capability (CLSI EP17-A2) per fold and pooled, and what smears of each parasitemia gave."""
    pooled = detection["pooled"]
    lines = [
        f"Detection capability on simulated smears of {detection['cells']:,} out-of-fold cells (CLSI EP17-A2): "
        f"{pooled['resampled']:.0%} of smears drew a patient's cells again",
        f"{'limit':<30} {'mean ± std':>17} {'pooled':>8}",
    ]
    lines += _mean_std_lines(detection["mean_std"], pooled)
    for row in detection["per_fold"]:
        lines.append(
            f"fold {row['fold']}: LoB {_or_na(row['lob'])}, LoD {_or_na(row['lod'])}, LoQ {_or_na(row['loq'])}, "
            f"{row['healthy_positive']} of {row['healthy_smears']} healthy smears called positive, coverage "
            f"{_or_na(row['coverage'])}"
        )
    for row in pooled["by_parasitemia"]:
        lines.append(
            f"smears at parasitemia {row['parasitemia']:g}: positive {row['positive']:.3f}, negative "
            f"{row['negative']:.3f}, review {row['review']:.3f}; within ±25% {_or_na(row['within_tolerance'])}; "
            f"coverage {row['coverage']:.3f}; median estimate {row['median_fraction']:.4f} "
            f"[{row['median_low']:.4f}, {row['median_high']:.4f}]"
        )
    return lines + [detection["sentence"]]


def _or_na(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


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
