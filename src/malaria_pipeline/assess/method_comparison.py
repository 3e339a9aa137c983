"""Cross-validation's comparison of patient methods, out of fold: the whole patient call at each counting
threshold, and each quantifier of mlquantify, by the figures a clinic reads (per fold, mean ± std, pooled).
No Kedro, no MLflow, no torch."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
from sklearn.metrics import roc_auc_score

from malaria_pipeline.assess.detection import detection_limits
from malaria_pipeline.assess.metrics import mean_and_std
from malaria_pipeline.assess.out_of_fold import cross_validated_patients, patient_call_args
from malaria_pipeline.assess.patient_call import patient_metrics
from malaria_pipeline.assess.quantifiers import compare_quantifiers

logger = logging.getLogger(__name__)

# The figures of each counting threshold, and of each quantifier.
COMPARED = (
    "patient_roc_auc",
    "wrong_calls",
    "review_share",
    "interval_coverage",
    "healthy_smears_positive",
    "smear_coverage",
    "lod",
)
QUANTIFIER_FIGURES = ("fraction_mae", "interval_coverage", "patient_roc_auc")
# A quantifier's estimates, bounds and labelled fractions are rounded to this many decimals before they are
# ranked (the patient ROC AUC) or compared (the coverage): a fraction of a patient's cells moves in steps of
# 1e-6 at the finest (a million cells), while the methods' floating-point noise (a fraction clipped to 0 that
# comes out as 1.7e-16, a bound of 5.6e-17) would otherwise break ties, and move the AUC and the coverage
# between two runs whose estimates differ in the 16th digit.
DIGITS = 10
ROUNDED = ("fraction", "fraction_low", "fraction_high", "labelled_fraction")


def compare_patient_methods(
    cv_predictions: pd.DataFrame, positive: str, patients: dict[str, Any], compare: dict[str, Any]
) -> dict[str, Any]:
    """The cross-validated patient and smear figures of each counting threshold of ``compare.count_at``
    (the whole patient call out of fold: rates, spread and rule from the other folds), and of each quantifier
    of ``compare.quantifiers`` at ``patients.count_at`` (fitted on the other folds' cells, with a bootstrap
    interval). A counting threshold that cannot be resolved (a specificity no threshold reaches on few
    reference cells) is kept with its ``error``."""
    by_threshold = []
    for i, count_at in enumerate(compare["count_at"], start=1):
        logger.info("Counting threshold %d of %d: %s", i, len(compare["count_at"]), count_at)
        try:
            table, smears = cross_validated_patients(
                cv_predictions, **patient_call_args(patients, positive, count_at)
            )
        except ValueError as error:
            logger.warning("Counting threshold %s compared with no figures: %s", count_at, error)
            by_threshold.append({"count_at": count_at, "error": str(error)})
            continue
        by_threshold.append(
            {"count_at": count_at, **_per_fold_and_pooled(table, smears, patients["min_fraction"])}
        )
    quantifiers = compare["quantifiers"]
    logger.info(
        "Quantifiers %s, each held-out patient with %d bootstrap draws",
        ", ".join(quantifiers["methods"]),
        quantifiers["resamples"],
    )
    estimates = compare_quantifiers(
        cv_predictions,
        positive=positive,
        count_at=patients["count_at"],
        methods=quantifiers["methods"],
        resamples=quantifiers["resamples"],
        level=patients["level"],
        seed=quantifiers["seed"],
    )
    by_quantifier = [
        {"method": method, **quantifier_figures(estimates[estimates["method"] == method])}
        for method in quantifiers["methods"]
    ]
    return {"count_at": patients["count_at"], "thresholds": by_threshold, "quantifiers": by_quantifier}


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


def quantifier_figures(estimates: pd.DataFrame) -> dict[str, Any]:
    """:data:`QUANTIFIER_FIGURES` of one quantifier's estimates (rows of
    :func:`~malaria_pipeline.assess.quantifiers.compare_quantifiers`), per fold, mean ± std and pooled: the
    mean absolute error of the fraction, the share of patients whose labelled fraction lies in the interval,
    and the patient ROC AUC (infected against uninfected, ranked by the estimate), all of the estimates
    rounded to :data:`DIGITS` decimals."""
    estimates = estimates.assign(**{name: estimates[name].round(DIGITS) for name in ROUNDED})

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
    return {
        "per_fold": per_fold,
        "mean_std": mean_and_std(per_fold, QUANTIFIER_FIGURES),
        "pooled": figures(estimates),
    }
