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
    recall_score,
    roc_auc_score,
)


def classification_metrics(
    is_positive: np.ndarray, p_positive: np.ndarray, threshold: float = 0.5,
    positive: str = "Parasitized", negative: str = "Uninfected",
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
    return {
        "images": int(len(truth)),
        "threshold": float(threshold),
        "accuracy": float(accuracy_score(truth, called)),
        "sensitivity": float(recall_score(truth, called, zero_division=0)),
        "specificity": float(recall_score(~truth, ~called, zero_division=0)),
        "precision": float(precision_score(truth, called, zero_division=0)),
        "f1": float(f1_score(truth, called, zero_division=0)),
        "mcc": float(matthews_corrcoef(truth, called)) if both_classes else None,
        "roc_auc": float(roc_auc_score(truth, p_positive)) if both_classes else None,
        "average_precision": float(average_precision_score(truth, p_positive)) if truth.any() else None,
        "true_positives": int(tp), "false_negatives": int(fn), "false_positives": int(fp), "true_negatives": int(tn),
        "false_negative_rate": float(fn / (tp + fn)) if tp + fn else None,
        "false_positive_rate": float(fp / (fp + tn)) if fp + tn else None,
        "false_negatives_phrase": _phrase(fn, tp + fn, positive, negative),
        "false_positives_phrase": _phrase(fp, fp + tn, negative, positive),
    }


def _phrase(errors: int, total: int, truth: str, called: str) -> str:
    share = f" ({errors / total:.2%})" if total else ""
    return f"{errors:,} of {total:,} {truth.lower()} cells{share} were classified as {called.lower()}"


def operating_points(is_positive: np.ndarray, p_positive: np.ndarray, thresholds: list[float]) -> list[dict[str, float]]:
    """Sensitivity and specificity at each threshold, so a lab can pick a high-sensitivity point."""
    truth = np.asarray(is_positive, dtype=bool)
    points = []
    for threshold in thresholds:
        called = np.asarray(p_positive) >= threshold
        points.append({
            "threshold": float(threshold),
            "sensitivity": float(recall_score(truth, called, zero_division=0)),
            "specificity": float(recall_score(~truth, ~called, zero_division=0)),
        })
    return points


def per_patient(predictions: pd.DataFrame, threshold: float = 0.5, positive: str = "Parasitized") -> list[dict[str, Any]]:
    """Accuracy per patient, worst first: where the model fails.

    Args:
        predictions: ``patient_id``, ``label`` and ``p_positive`` per image.
    """
    rows = []
    for patient, cells in predictions.groupby("patient_id", sort=True):
        truth = (cells["label"] == positive).to_numpy()
        called = cells["p_positive"].to_numpy() >= threshold
        rows.append({
            "patient_id": str(patient),
            "images": int(len(cells)),
            "parasitized": int(truth.sum()),
            "errors": int((truth != called).sum()),
            "accuracy": float((truth == called).mean()),
        })
    return sorted(rows, key=lambda row: (row["accuracy"], -row["images"]))


def mean_and_std(rows: list[dict[str, Any]], names: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Mean and sample standard deviation (``ddof=1``, as cross-validation tables report) of each metric
    over ``rows`` (one per fold), skipping folds where a metric is undefined (None)."""
    summary = {}
    for name in names:
        values = np.array([row[name] for row in rows if row.get(name) is not None], dtype=float)
        if len(values):
            summary[name] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                             "folds": int(len(values))}
    return summary
