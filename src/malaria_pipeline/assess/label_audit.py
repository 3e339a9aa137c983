"""Suspected label errors among out-of-fold predictions, found by cleanlab: no Kedro, no torch.

Confident learning (Northcutt et al. 2021, the ``cleanlab`` package) estimates from out-of-fold
probabilities how often each class was labelled as the other, and flags the images whose given label
their model finds least likely, as many as that estimate says. Each prediction must come from a model
that never saw the image, which patient-grouped cross-validation guarantees.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores

ISSUE_COLUMNS = (
    "rank",
    "path",
    "patient_id",
    "fold",
    "given_label",
    "suggested_label",
    "label_quality",
    "p_given",
)


def find_issues(
    predictions: pd.DataFrame,
    p_positive: str,
    positive: str,
    filter_by: str = "prune_by_noise_rate",
) -> pd.DataFrame:
    """The images whose given label the out-of-fold probabilities contradict, most suspect first.

    Args:
        predictions: ``path``, ``patient_id``, ``fold``, ``label`` and the column ``p_positive`` per image.
        p_positive: the column of P(``positive``); the other class gets 1 - P.
        filter_by: cleanlab's rule (``prune_by_noise_rate``, ``prune_by_class``, ``both``,
            ``confident_learning``, ``predicted_neq_given``).

    Returns:
        One row per flagged image: rank (1 = most suspect), path, patient_id, fold, given_label,
        suggested_label (the class the model prefers), label_quality (cleanlab's self-confidence, the
        probability of the given label: low is suspect) and p_given.
    """
    classes = sorted(predictions["label"].unique())
    if positive not in classes or len(classes) != 2:
        raise ValueError(
            f"The label audit needs two classes, one of them {positive!r}; the predictions have {classes}"
        )
    labels = np.searchsorted(classes, predictions["label"].to_numpy())
    p = predictions[p_positive].to_numpy(dtype=float)
    pred_probs = np.column_stack([1 - p, p] if classes.index(positive) == 1 else [p, 1 - p])
    flagged = find_label_issues(
        labels, pred_probs, filter_by=filter_by, return_indices_ranked_by="self_confidence", n_jobs=1
    )
    quality = get_label_quality_scores(labels, pred_probs, method="self_confidence")
    rows = predictions.iloc[flagged]
    return pd.DataFrame(
        {
            "rank": np.arange(1, len(flagged) + 1),
            "path": rows["path"].to_numpy(),
            "patient_id": rows["patient_id"].to_numpy(),
            "fold": rows["fold"].to_numpy(),
            "given_label": rows["label"].to_numpy(),
            "suggested_label": np.asarray(classes)[pred_probs[flagged].argmax(axis=1)],
            "label_quality": quality[flagged],
            "p_given": pred_probs[flagged, labels[flagged]],
        },
        columns=list(ISSUE_COLUMNS),
    )


def summarize_issues(predictions: pd.DataFrame, issues: pd.DataFrame, method: str) -> dict[str, Any]:
    """Counts of flagged images per class and per patient (patients with the most first)."""
    flagged = predictions["path"].isin(issues["path"])
    by_class = {
        str(label): {
            "images": int(len(rows)),
            "flagged": int(flagged[rows.index].sum()),
            "share": float(flagged[rows.index].mean()),
        }
        for label, rows in predictions.groupby("label")
    }
    by_patient = [
        {
            "patient_id": str(patient),
            "images": int(len(rows)),
            "flagged": int(flagged[rows.index].sum()),
            "share": float(flagged[rows.index].mean()),
        }
        for patient, rows in predictions.groupby("patient_id")
    ]
    by_patient.sort(key=lambda row: (-row["flagged"], row["patient_id"]))
    return {
        "method": f"cleanlab.filter.find_label_issues(filter_by={method!r}) on out-of-fold probabilities",
        "images": int(len(predictions)),
        "flagged": int(flagged.sum()),
        "share": float(flagged.mean()) if len(flagged) else 0.0,
        "by_given_label": by_class,
        "by_patient": [row for row in by_patient if row["flagged"]],
    }


def excluded_paths(label_issues: pd.DataFrame, paths: pd.Series, exclude: bool) -> set[str]:
    """The paths of the suspected label errors to leave out of training: none unless ``exclude``
    (``training.exclude_label_issues``), which then needs an audit of these images.

    Raises:
        ValueError: ``exclude`` with no audit, or an audit of other images; the message says what to run.
    """
    if not exclude:
        return set()
    if label_issues.empty:
        raise ValueError(
            "training.exclude_label_issues is true but there is no label audit (data/08_reporting/label_issues.csv): "
            "run `kedro run --pipelines cross_validation` first, or set training.exclude_label_issues=false."
        )
    found = set(label_issues["path"]) & set(paths)
    if not found:
        raise ValueError(
            f"None of the {len(label_issues)} images of the latest label audit is among these images: the audit "
            "belongs to another archive. Run the cross_validation pipeline on this one first."
        )
    return found
