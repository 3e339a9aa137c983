"""Cross-validation's report, ``cv_metrics``: each fold's metrics, their mean ± standard deviation, the
pooled out-of-fold figures, per-patient accuracy, what the folds chose (for a model trained on every
patient), what each target sensitivity gave, and the patients: figures, recommended rule, comparison of
methods and detection limits; and the MLflow metrics of it. No Kedro, no MLflow, no torch."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from malaria_pipeline.assess.columns import WITHOUT_TTA, probability_column, without_tta_column
from malaria_pipeline.assess.detection import detection_limits, plain_sentence
from malaria_pipeline.assess.folds import FOLD_CHOICES, fold_choices, fold_metrics, metric_names
from malaria_pipeline.assess.metrics import classification_metrics, mean_and_std, per_patient
from malaria_pipeline.assess.out_of_fold import call_grid, choose_rule, reviewer_budget
from malaria_pipeline.assess.patient_call import PATIENT_METRICS, patient_metrics

TTA_COMPARED = ("accuracy", "sensitivity", "specificity", "roc_auc")
DETECTION_FIGURES = ("lob", "lod", "loq", "healthy_positive", "coverage")


def cv_report(
    cv_predictions: pd.DataFrame,
    cv_history: pd.DataFrame,
    cv_operating_points: pd.DataFrame,
    params: dict[str, Any],
    run_id: str | None,
) -> dict[str, Any]:
    """The report of the cells (``patients`` is added by :func:`patient_report`): per fold, mean ± std
    (sample, ddof=1) and pooled, per patient, the kept epochs and the median of the folds' choices, without
    TTA where the folds predicted with it, and per target sensitivity; ``run_id`` is the MLflow run's."""
    per_fold = [
        {"fold": int(fold), **fold_metrics(cells, params), **fold_choices(cells)}
        for fold, cells in cv_predictions.groupby("fold")
    ]
    kept = cv_history.loc[cv_history["kept"], "epoch"]
    report = {
        "folds": len(per_fold),
        "images": int(len(cv_predictions)),
        "patient_count": int(cv_predictions["patient_id"].nunique()),
        "positive_class": params["positive_class"],
        "threshold": params["threshold"],
        "std": "sample (ddof=1) over folds",
        "mean_std": mean_and_std(per_fold, metric_names(params["specificity_targets"])),
        "per_fold": per_fold,
        "pooled": fold_metrics(cv_predictions, params),
        "per_patient": per_patient(cv_predictions, params["threshold"], params["positive_class"]),
        "kept_epochs": [int(e) for e in kept],
        "recommended_epochs": int(np.median(kept)) if len(kept) else None,
        **{f"recommended_{name}": median(row[name] for row in per_fold) for name in FOLD_CHOICES},
        "mlflow_run_id": run_id,
    }
    if without_tta_column(params["positive_class"]) in cv_predictions.columns:
        report[WITHOUT_TTA] = _without_tta(cv_predictions, params)
    report["target_sensitivities"] = by_target(cv_operating_points)
    return report


def patient_report(
    cv_patients: pd.DataFrame, cv_smears: pd.DataFrame, methods: dict[str, Any], patients: dict[str, Any]
) -> dict[str, Any]:
    """Patient-level figures per fold, their mean ± std and pooled, the rule all patients choose, the
    comparison of counting thresholds and quantifiers (``methods``), and the detection limits per fold and
    pooled; ``patients`` is the ``patients`` parameters."""
    per_fold = []
    for fold, table in cv_patients.groupby("fold"):
        row = {"fold": int(fold), **patient_metrics(table, patients["min_fraction"])}
        row["call"] = {name: float(table[name].iloc[0]) for name in ("healthy_below", "negative_below")}
        per_fold.append(row)
    rule, chosen = choose_rule(cv_patients, call_grid(patients), cv_smears, reviewer_budget(patients))
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


def report_scores(report: dict[str, Any], specificity_targets: list[float]) -> dict[str, Any]:
    """The MLflow metrics of the report: ``cv.<metric>.mean|std``, ``cv.pooled.<metric>``, the same of the
    patients (``cv.patients.…``) and of the detection limits (``cv.detection.…``), and the recommended
    epochs, temperature and threshold; None figures are left out."""
    patients, detection = report["patients"], report["patients"]["detection"]
    scores = {
        **_mean_std_scores("cv", report["mean_std"]),
        **_pooled_scores("cv.pooled", report["pooled"], metric_names(specificity_targets)),
        **_mean_std_scores("cv.patients", patients["mean_std"]),
        **_pooled_scores("cv.pooled.patients", patients["pooled"], PATIENT_METRICS),
        **_mean_std_scores("cv.detection", detection["mean_std"]),
        **_pooled_scores("cv.pooled.detection", detection["pooled"], DETECTION_FIGURES),
    }
    names = [f"recommended_{name}" for name in ("epochs", *FOLD_CHOICES)]
    scores.update(_pooled_scores("cv", report, names))
    return scores


def _mean_std_scores(prefix: str, mean_std: dict[str, Any]) -> dict[str, Any]:
    return {
        f"{prefix}.{name}.{stat}": {"value": values[stat], "step": 0}
        for name, values in mean_std.items()
        for stat in ("mean", "std")
    }


def _pooled_scores(prefix: str, figures: dict[str, Any], names) -> dict[str, Any]:
    return {
        f"{prefix}.{name}": {"value": figures[name], "step": 0}
        for name in names
        if figures.get(name) is not None
    }


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


def by_target(cv_operating_points: pd.DataFrame) -> list[dict[str, Any]]:
    """Per target sensitivity (and tta): mean ± std over the folds of the held-out sensitivity and
    specificity at the thresholds chosen on validation, and the median of those thresholds."""
    rows = []
    for (tta, target), folds in cv_operating_points.groupby(["tta", "target_sensitivity"], sort=True):
        # NaN (read from CSV): None
        records = folds.astype(object).where(folds.notna(), None).to_dict("records")
        rows.append(
            {
                "tta": bool(tta),
                "target_sensitivity": float(target),
                **mean_and_std(records, ("sensitivity", "specificity")),
                "median_threshold": median(r["threshold"] for r in records),
            }
        )
    return rows


def median(values) -> float | None:
    """The median of the values that are not None; None if there are none."""
    known = [v for v in values if v is not None]
    return float(np.median(known)) if known else None
