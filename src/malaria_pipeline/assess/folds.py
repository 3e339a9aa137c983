"""Cross-validation's folds judged, each on its held-out patients: its metrics at the threshold and at its
own operating point, what it chose (temperature, operating threshold), the thresholds its validation
patients choose for each target sensitivity, and the folds pooled into one out-of-fold table. No Kedro, no
MLflow, no torch."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from malaria_pipeline.assess.columns import probability_column, without_tta_column
from malaria_pipeline.assess.metrics import (
    at_specificity_name,
    calibration_errors,
    classification_metrics,
    sensitivity_at_specificity,
    sensitivity_specificity,
    threshold_for_sensitivity,
)
from malaria_pipeline.cells.splitting import SplitError

# The metrics of each fold, and their mean ± std: Rajaraman et al. (2018) report the first eight; then
# the calibration error after and before temperature scaling, the sensitivity and specificity at each
# fold's operating threshold (chosen on its validation patients), and that threshold and temperature.
AT_OPERATING_POINT = (
    "accuracy_at_operating_point",
    "sensitivity_at_operating_point",
    "specificity_at_operating_point",
)
FOLD_CHOICES = ("operating_threshold", "temperature")
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


def held_out_predictions(
    evaluation_predictions: pd.DataFrame, model: dict[str, Any], positive: str, fold: int
) -> pd.DataFrame:
    """The held-out (``test``) rows of a fold's predictions: path, patient_id and label of each image,
    P(positive class) calibrated and ``…_uncalibrated`` (T = 1), with TTA also ``…_without_tta`` (the first
    view alone), the fold's ``operating_threshold`` (NaN when its validation patients were of one class),
    ``temperature`` and ``fold``."""
    column = probability_column(positive)
    point = model.get("operating_point")
    held_out = evaluation_predictions[evaluation_predictions["subset"] == "test"]
    kept = ["path", "patient_id", "label", column, f"{column}_uncalibrated", without_tta_column(positive)]
    return (
        held_out[[name for name in kept if name in held_out.columns]]
        .reset_index(drop=True)
        .assign(
            operating_threshold=point["threshold"] if point else np.nan,
            temperature=float(model.get("temperature", 1.0)),
            fold=fold,
        )
    )


def operating_points(
    validation: pd.DataFrame, held_out: pd.DataFrame, positive: str, targets: list[float]
) -> list[dict[str, Any]]:
    """For each target sensitivity of ``targets``, the threshold chosen on the validation images and what
    it gives on the held-out ones; with TTA also without it (the first view). None of each where the
    validation images are of one class."""
    rows = []
    column = probability_column(positive)
    valid_truth, test_truth = (
        (validation["label"] == positive).to_numpy(),
        (held_out["label"] == positive).to_numpy(),
    )
    with_tta = without_tta_column(positive) in held_out.columns
    for tta in (True, False) if with_tta else (False,):
        name = column if tta or not with_tta else without_tta_column(positive)
        p_valid, p_test = validation[name].to_numpy(dtype=np.float64), held_out[name].to_numpy()
        for target in targets:
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


def pool_out_of_fold(
    image_index: pd.DataFrame, cv_folds: pd.DataFrame, folds: dict[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The folds' outputs pooled: ``out_of_fold_<k>``, ``choices_<k>`` and ``history_<k>`` of ``folds``
    for each fold k of ``cv_folds``.

    Raises:
        SplitError: a fold's predictions are not of the images ``cv_folds`` holds out in it (a fold run of
            another assignment: run that fold's namespace again).

    Returns:
        Every image's out-of-fold row, in index order; each fold's epochs, the kept one marked; each fold's
        row per target sensitivity (and TTA).
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
    pooled = pd.concat(predictions).sort_values("path", key=lambda p: p.map(order)).reset_index(drop=True)
    return (
        pooled,
        pd.concat(histories, ignore_index=True),
        pd.DataFrame(points, columns=OPERATING_POINT_COLUMNS),
    )


def fold_metrics(cells: pd.DataFrame, params: dict[str, Any]) -> dict[str, Any]:
    """The metrics of out-of-fold cells at ``params["threshold"]``, the calibration errors
    (``calibration_bins``), the metrics at each image's fold's operating threshold (None where a fold has
    none), and the sensitivity at each of ``specificity_targets``, read on these cells' own ROC curve."""
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
    for target in params["specificity_targets"]:
        metrics[at_specificity_name(target)] = sensitivity_at_specificity(truth, p_positive, target)[
            "sensitivity"
        ]
    return metrics


def metric_names(specificity_targets: list[float]) -> tuple[str, ...]:
    """:data:`FOLD_METRICS` and the sensitivity at each of ``specificity_targets``."""
    return FOLD_METRICS + tuple(at_specificity_name(t) for t in specificity_targets)


def fold_choices(cells: pd.DataFrame) -> dict[str, float | None]:
    """The operating threshold and temperature that a fold chose (one value per fold)."""
    return {
        name: None if np.isnan(cells[name].iloc[0]) else float(cells[name].iloc[0]) for name in FOLD_CHOICES
    }
