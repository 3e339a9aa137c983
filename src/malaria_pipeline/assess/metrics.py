"""Diagnostic metrics of predictions, computed by scikit-learn: no Kedro, no torch.

Parasitized is the positive class: sensitivity is the share of parasitized cells found, specificity the
share of uninfected cells passed as uninfected.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    matthews_corrcoef,
    precision_score,
    roc_auc_score,
    roc_curve,
)

from malaria_pipeline.assess.columns import probability_column
from malaria_pipeline.assess.text import number


def sensitivity_specificity(
    is_positive: np.ndarray,
    p_positive: np.ndarray,
    threshold: float | np.ndarray,
) -> tuple[float | None, float | None]:
    """Sensitivity and specificity when ``p_positive >= threshold`` is called positive, from scikit-learn's
    confusion matrix.

    Args:
        is_positive: true class of each cell (True: positive).
        p_positive: predicted probability of the positive class.
        threshold: one threshold, or one per cell (each cell's fold's operating threshold, say).

    Returns:
        ``(sensitivity, specificity)``; None for the sensitivity of cells without a positive one and for
        the specificity of cells without a negative one: undefined, not 0.
    """
    truth = np.asarray(is_positive, dtype=bool)
    called = np.asarray(p_positive) >= threshold
    tn, fp, fn, tp = confusion_matrix(truth, called, labels=[False, True]).ravel()
    return (float(tp / (tp + fn)) if tp + fn else None, float(tn / (tn + fp)) if tn + fp else None)


def classification_metrics(
    is_positive: np.ndarray,
    p_positive: np.ndarray,
    threshold: float = 0.5,
    positive: str = "Parasitized",
    negative: str = "Uninfected",
) -> dict[str, Any]:
    """Accuracy, sensitivity, specificity, precision, F1, Matthews correlation, ROC AUC, average precision and error counts.

    Args:
        is_positive: true class of each image (True: ``positive``).
        p_positive: predicted probability of ``positive``.
        threshold: ``p_positive >= threshold`` is called positive.

    Returns:
        The metrics, the confusion counts, and the two kinds of error as the reference phrases them
        ("101 of 2,764 parasitized cells (3.65%) were classified as uninfected").
    """
    truth = np.asarray(is_positive, dtype=bool)
    called = np.asarray(p_positive) >= threshold
    tn, fp, fn, tp = confusion_matrix(truth, called, labels=[False, True]).ravel()
    both_classes = truth.any() and (~truth).any()
    sensitivity, specificity = sensitivity_specificity(truth, p_positive, threshold)
    return {
        "images": int(len(truth)),
        "threshold": float(threshold),
        "accuracy": float(accuracy_score(truth, called)),
        "sensitivity": sensitivity,
        "specificity": specificity,
        "precision": float(precision_score(truth, called, zero_division=0)),
        "f1": float(f1_score(truth, called, zero_division=0)),
        "mcc": float(matthews_corrcoef(truth, called)) if both_classes else None,
        "roc_auc": float(roc_auc_score(truth, p_positive)) if both_classes else None,
        "average_precision": float(average_precision_score(truth, p_positive)) if truth.any() else None,
        "true_positives": int(tp),
        "false_negatives": int(fn),
        "false_positives": int(fp),
        "true_negatives": int(tn),
        "false_negative_rate": float(fn / (tp + fn)) if tp + fn else None,
        "false_positive_rate": float(fp / (fp + tn)) if fp + tn else None,
        "false_negatives_phrase": _phrase(fn, tp + fn, positive, negative),
        "false_positives_phrase": _phrase(fp, fp + tn, negative, positive),
    }


def _phrase(errors: int, total: int, truth: str, called: str) -> str:
    share = f" ({errors / total:.2%})" if total else ""
    return f"{errors:,} of {total:,} {truth.lower()} cells{share} were classified as {called.lower()}"


def operating_points(
    is_positive: np.ndarray, p_positive: np.ndarray, thresholds: list[float]
) -> list[dict[str, float]]:
    """:func:`sensitivity_specificity` at each threshold, so a lab can pick a high-sensitivity point."""
    points = []
    for threshold in thresholds:
        sensitivity, specificity = sensitivity_specificity(is_positive, p_positive, threshold)
        points.append({"threshold": float(threshold), "sensitivity": sensitivity, "specificity": specificity})
    return points


def per_patient(
    predictions: pd.DataFrame, threshold: float = 0.5, positive: str = "Parasitized"
) -> list[dict[str, Any]]:
    """Accuracy per patient, worst first: where the model fails.

    Args:
        predictions: ``patient_id``, ``label`` and the :func:`probability_column` of ``positive`` per image.
    """
    column = probability_column(positive)
    rows = []
    for patient, cells in predictions.groupby("patient_id", sort=True):
        truth = (cells["label"] == positive).to_numpy()
        called = cells[column].to_numpy() >= threshold
        rows.append(
            {
                "patient_id": str(patient),
                "images": int(len(cells)),
                "parasitized": int(truth.sum()),
                "errors": int((truth != called).sum()),
                "accuracy": float((truth == called).mean()),
            }
        )
    return sorted(rows, key=lambda row: (row["accuracy"], -row["images"]))


def mean_and_std(rows: list[dict[str, Any]], names: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Mean and sample standard deviation (``ddof=1``, as cross-validation tables report) of each metric
    over ``rows`` (one per fold), skipping folds where a metric is undefined (None)."""
    summary = {}
    for name in names:
        values = np.array([row[name] for row in rows if row.get(name) is not None], dtype=float)
        if len(values):
            summary[name] = {
                "mean": float(values.mean()),
                "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                "folds": int(len(values)),
            }
    return summary


def threshold_for_sensitivity(
    is_positive: np.ndarray, p_positive: np.ndarray, target_sensitivity: float
) -> dict[str, float]:
    """The threshold on ``p_positive`` that reaches ``target_sensitivity`` at the best specificity.

    Among the thresholds of scikit-learn's ``roc_curve`` (each a score; ``p_positive >= threshold`` is
    called positive) whose sensitivity is at least the target, the one of lowest false-positive rate;
    among those, the one of highest sensitivity.

    Returns:
        ``threshold`` and the ``sensitivity`` and ``specificity`` it gives on these cells.

    Raises:
        ValueError: the target is not in (0, 1], or the cells are not of both classes.
    """
    if not 0 < target_sensitivity <= 1:
        raise ValueError(
            f"evaluation.target_sensitivity is {target_sensitivity!r}: give a sensitivity in (0, 1], e.g. 0.97"
        )
    truth = np.asarray(is_positive, dtype=bool)
    if truth.all() or not truth.any():
        raise ValueError("An operating threshold needs cells of both classes; these are all of one class")
    fpr, tpr, thresholds = roc_curve(truth, np.asarray(p_positive, dtype=float), drop_intermediate=False)
    reaching = np.flatnonzero(tpr >= target_sensitivity)
    best = reaching[np.lexsort((-tpr[reaching], fpr[reaching]))[0]]  # lowest fpr, then highest tpr
    return {
        "threshold": float(thresholds[best]),
        "sensitivity": float(tpr[best]),
        "specificity": float(1 - fpr[best]),
    }


def at_specificity_name(target_specificity: float) -> str:
    """The metric name of the sensitivity at a target specificity: ``sensitivity_at_specificity_0.999``."""
    return f"sensitivity_at_specificity_{target_specificity:g}"


def at_specificity_phrase(rows: list[dict[str, Any]]) -> str:
    """``sensitivity 0.6390 at specificity 0.999 (threshold 0.9876); …`` of :func:`sensitivity_at_specificity` rows."""

    return "; ".join(
        f"sensitivity {number(row['sensitivity'])} at specificity {row['target_specificity']:g} "
        f"(threshold {number(row['threshold'])})"
        for row in rows
    )


def sensitivity_at_specificity(
    is_positive: np.ndarray, p_positive: np.ndarray, target_specificity: float
) -> dict[str, float | None]:
    """The most parasitized cells found while at most ``1 - target_specificity`` of the uninfected cells
    are called positive: the point of the ROC curve a smear of thousands of healthy cells needs (at
    0.999, one false alarm per 1,000 healthy cells).

    Among the thresholds of scikit-learn's ``roc_curve`` whose specificity is at least the target, the
    one of highest sensitivity; among those, the lowest false-positive rate.

    Returns:
        ``target_specificity``, the ``threshold`` (None where only calling nothing positive meets the
        target) and the ``sensitivity`` and ``specificity`` it gives on these cells; all but the target
        None where the cells are of one class.

    Raises:
        ValueError: the target is not in (0, 1).
    """
    if not 0 < target_specificity < 1:
        raise ValueError(
            f"A target specificity is {target_specificity!r}: give one in (0, 1), e.g. 0.999 "
            "(evaluation.specificity_targets)"
        )
    truth = np.asarray(is_positive, dtype=bool)
    point = {
        "target_specificity": float(target_specificity),
        "threshold": None,
        "sensitivity": None,
        "specificity": None,
    }
    if truth.all() or not truth.any():
        return point
    fpr, tpr, thresholds = roc_curve(truth, np.asarray(p_positive, dtype=float), drop_intermediate=False)
    meeting = np.flatnonzero(1 - fpr >= target_specificity)  # never empty: the first threshold calls none
    best = meeting[np.lexsort((fpr[meeting], -tpr[meeting]))[0]]  # highest tpr, then lowest fpr
    threshold = float(thresholds[best])
    return {
        **point,
        "threshold": threshold if np.isfinite(threshold) else None,
        "sensitivity": float(tpr[best]),
        "specificity": float(1 - fpr[best]),
    }


def calibration_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> list[dict[str, Any]]:
    """The reliability diagram's bins: ``bins`` equal-width intervals ((m-1)/bins, m/bins] of confidence
    (a confidence of 0 goes to the first), each with its ``images``, mean ``confidence`` and ``accuracy``
    (None where empty), and its bounds ``low`` and ``high``."""
    confidence, correct = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=bool)
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    rows = []
    for m in range(bins):
        inside = which == m
        rows.append(
            {
                "low": m / bins,
                "high": (m + 1) / bins,
                "images": int(inside.sum()),
                "confidence": float(confidence[inside].mean()) if inside.any() else None,
                "accuracy": float(correct[inside].mean()) if inside.any() else None,
            }
        )
    return rows


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float | None:
    """ECE (Naeini et al. 2015; Guo et al. 2017): the mean over the images of |accuracy − confidence| of
    their bin of :func:`calibration_bins`, ``Σ_m |B_m| / n · |acc(B_m) − conf(B_m)|``; None without images.

    Args:
        confidence: probability of the predicted class of each image.
        correct: whether the predicted class is the true one.
    """
    rows = calibration_bins(confidence, correct, bins)
    total = sum(row["images"] for row in rows)
    if not total:
        return None
    return float(
        sum(row["images"] / total * abs(row["accuracy"] - row["confidence"]) for row in rows if row["images"])
    )


def binary_confidence(is_positive: np.ndarray, p_positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(confidence, correct)`` of two-class predictions: the predicted class is the one of probability
    ≥ 0.5 (positive on a tie), its confidence that probability."""
    p = np.asarray(p_positive, dtype=float)
    called = p >= 0.5
    return np.where(called, p, 1 - p), called == np.asarray(is_positive, dtype=bool)


def calibration_errors(
    is_positive: np.ndarray, p_positive: np.ndarray, p_uncalibrated: np.ndarray, bins: int = 15
) -> dict[str, float | None]:
    """Expected calibration error after (``ece``: of ``p_positive``) and before (``ece_uncalibrated``: of
    ``p_uncalibrated``, T = 1) temperature scaling, of two-class predictions (:func:`binary_confidence`)."""
    return {
        "ece": expected_calibration_error(*binary_confidence(is_positive, p_positive), bins),
        "ece_uncalibrated": expected_calibration_error(*binary_confidence(is_positive, p_uncalibrated), bins),
    }


INTERVAL_METRICS = ("accuracy", "sensitivity", "specificity", "roc_auc")


def patient_bootstrap_intervals(
    predictions: pd.DataFrame,
    threshold: float = 0.5,
    positive: str = "Parasitized",
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, list[float] | None]:
    """Percentile bootstrap intervals of accuracy, sensitivity, specificity and ROC AUC, resampling whole
    patients (``scipy.stats.bootstrap`` over patient indices): the cells of one patient are not
    independent, so an interval over cells would be too narrow.

    Args:
        predictions: ``patient_id``, ``label`` and the :func:`probability_column` of ``positive`` per image.

    Returns:
        ``{metric: [low, high]}``; None where a resample left the metric undefined (a single patient, or
        patients of one class only).
    """
    import warnings

    from scipy.stats import DegenerateDataWarning, bootstrap

    groups = [
        (cells["label"] == positive).to_numpy() for _, cells in predictions.groupby("patient_id", sort=True)
    ]
    scores = [
        cells[probability_column(positive)].to_numpy()
        for _, cells in predictions.groupby("patient_id", sort=True)
    ]
    if len(groups) < 2:
        return {name: None for name in INTERVAL_METRICS}

    def statistic(patients: np.ndarray) -> np.ndarray:
        truth = np.concatenate([groups[i] for i in patients])
        score = np.concatenate([scores[i] for i in patients])
        both = truth.any() and (~truth).any()
        sensitivity, specificity = sensitivity_specificity(truth, score, threshold)
        return np.array(
            [
                ((score >= threshold) == truth).mean(),
                np.nan if sensitivity is None else sensitivity,
                np.nan if specificity is None else specificity,
                roc_auc_score(truth, score) if both else np.nan,
            ]
        )

    with (
        warnings.catch_warnings()
    ):  # every resample equal (a sensitivity of 1, say) is an answer, not a fault
        warnings.simplefilter("ignore", DegenerateDataWarning)
        result = bootstrap(
            (np.arange(len(groups)),),
            statistic,
            vectorized=False,
            n_resamples=resamples,
            confidence_level=level,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
    low, high = result.confidence_interval
    return {
        name: None if np.isnan(lo) or np.isnan(hi) else [float(lo), float(hi)]
        for name, lo, hi in zip(INTERVAL_METRICS, low, high)
    }
