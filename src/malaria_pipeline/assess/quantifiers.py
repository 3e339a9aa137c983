"""A patient's parasitized fraction by the quantification methods of mlquantify. No Kedro, no MLflow.

Estimating the share of a class in a sample from a classifier's outputs is *quantification*; the field's
methods are in libraries (mlquantify, QuaPy), and this module only feeds them. Each method is fitted on
reference cells (labelled, with their P(Parasitized)) and applied to a patient's cells:

- ``ACC`` (adjusted classify and count, Forman 2005): the share called Parasitized at a threshold,
  corrected with the reference cells' sensitivity and specificity: the correction that the patient
  tables make, with its interval, in :mod:`malaria_pipeline.assess.patients`;
- ``PACC`` (probabilistic ACC, Bella et al. 2010; mlquantify's ``GPACC``): the same with the mean
  probabilities instead of counts;
- ``EMQ`` (Saerens, Latinne & Decaestecker 2002, "SLD"): the class prior that, by expectation-
  maximisation, makes the probabilities consistent with the patient's cells;
- ``HDy`` (González-Castro et al. 2013): the mixture of the reference cells' histograms of
  P(Parasitized) nearest (Hellinger) to the patient's;
- ``KDEyML`` (Moreo et al. 2023): the same with kernel density estimates, by maximum likelihood.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from malaria_pipeline.assess.columns import probability_column
from malaria_pipeline.assess.out_of_fold import fold_references

QUANTIFIERS = ("ACC", "PACC", "EMQ", "HDy", "KDEyML")


def _library_quantifier(method: str):
    # Imported here: mlquantify is read only by cross-validation's comparison and a non-ACC model.
    from mlquantify.counting import ACC, GPACC
    from mlquantify.likelihood import EMQ
    from mlquantify.matching import HDy, KDEyML

    classes = {"ACC": ACC, "PACC": GPACC, "EMQ": EMQ, "HDy": HDy, "KDEyML": KDEyML}
    if method not in classes:
        raise ValueError(f"Quantifier {method!r} is unknown: give one of {', '.join(QUANTIFIERS)}")
    return classes[method]()


def _scores(p_positive: np.ndarray) -> np.ndarray:
    p = np.asarray(p_positive, dtype=float)
    return np.column_stack([1 - p, p])


def estimate_fraction(
    method: str,
    p_patient: np.ndarray,
    p_reference: np.ndarray,
    reference_positive: np.ndarray,
    threshold: float | np.ndarray,
    reference_threshold: float | np.ndarray | None = None,
) -> float:
    """The parasitized fraction of one patient's cells by ``method`` (:data:`QUANTIFIERS`).

    Args:
        p_patient: P(Parasitized) of the patient's cells.
        p_reference, reference_positive: P(Parasitized) of the reference cells, and whether each is labelled
            Parasitized.
        threshold: where ``ACC`` counts a cell Parasitized (the others read the probabilities): one
            number, or one per cell of the patient; ``reference_threshold`` likewise for the reference cells
            (default: ``threshold``).
    """
    quantifier = _library_quantifier(method)
    y = np.asarray(reference_positive, dtype=int)
    if method == "ACC":
        called = (np.asarray(p_patient) >= threshold).astype(int)
        at = threshold if reference_threshold is None else reference_threshold
        prevalence = quantifier.aggregate(called, (np.asarray(p_reference) >= at).astype(int), y)
    else:
        prevalence = quantifier.aggregate(_scores(p_patient), _scores(p_reference), y)
    return float(np.asarray(list(prevalence.values()) if isinstance(prevalence, dict) else prevalence)[-1])


def compare_quantifiers(
    predictions: pd.DataFrame,
    *,
    positive: str,
    count_at: float | str | dict[str, float],
    methods: list[str],
    resamples: int,
    level: float,
    seed: int,
) -> pd.DataFrame:
    """Each held-out patient's fraction by each of ``methods``, fitted on the other folds' out-of-fold
    cells, with a percentile bootstrap interval (``resamples`` draws of the patient's cells and of the
    reference cells, each estimated by the library again).

    Returns:
        One row per fold, patient and method: ``fold``, ``patient_id``, ``method``, ``fraction``,
        ``fraction_low``, ``fraction_high``, ``labelled_fraction`` and ``infected``.
    """
    column = probability_column(positive)
    rng = np.random.default_rng(seed)
    tail = 100 * (1 - level) / 2
    rows = []
    for ref in fold_references(predictions, positive=positive, count_at=count_at):
        others = predictions[~ref.held_out] if (~ref.held_out).any() else predictions
        p_ref, y_ref = others[column].to_numpy(float), (others["label"] == positive).to_numpy()
        t_ref = ref.reference_threshold
        fold_cells = predictions[ref.held_out].assign(_threshold=ref.threshold)
        for patient, cells in fold_cells.groupby("patient_id", sort=True):
            p, truth = cells[column].to_numpy(float), (cells["label"] == positive).to_numpy()
            t = cells["_threshold"].to_numpy(float)
            for method in methods:
                estimate = estimate_fraction(method, p, p_ref, y_ref, t, t_ref)
                again = []
                for _ in range(resamples):
                    mine, theirs = (
                        rng.integers(len(p), size=len(p)),
                        rng.integers(len(p_ref), size=len(p_ref)),
                    )
                    again.append(
                        estimate_fraction(
                            method, p[mine], p_ref[theirs], y_ref[theirs], t[mine], t_ref[theirs]
                        )
                    )
                low, high = np.percentile(again, [tail, 100 - tail]) if resamples else (np.nan, np.nan)
                rows.append(
                    {
                        "fold": ref.fold,
                        "patient_id": patient,
                        "method": method,
                        "fraction": estimate,
                        "fraction_low": float(low),
                        "fraction_high": float(high),
                        "labelled_fraction": float(truth.mean()),
                        "infected": bool(truth.any()),
                    }
                )
    return pd.DataFrame(rows)
