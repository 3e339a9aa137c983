"""From cells to a patient: the parasitized fraction corrected for the classifier's errors, its interval,
and a call with a "review" band. No Kedro, no MLflow, no torch.

A microscopist answers per smear: infected or not, and how many red cells in a hundred carry parasites.
The share of a patient's cells that the classifier calls Parasitized is biased by its errors: at
specificity 0.97, a healthy smear shows 3% "parasitized" cells. The Rogan–Gladen estimator undoes that
bias with the classifier's sensitivity and specificity; Lang & Reiczigel (2014, Prev. Vet. Med.
113:13–22) give its confidence interval accounting for the number of cells *and* for the uncertainty of
the sensitivity and specificity, which are themselves estimated on a finite set of reference cells.
Patients differ in how often the classifier errs on their cells far more than counting explains, so the
interval also carries the spread of both rates between patients (:mod:`~malaria_pipeline.assess.spread`),
and the call is ``positive`` only where a patient's count is improbable for a healthy patient with that
many cells (the healthy range).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import norm
from sklearn.metrics import confusion_matrix

from malaria_pipeline.assess.columns import probability_column
from malaria_pipeline.assess.metrics import sensitivity_at_specificity
from malaria_pipeline.assess.patient_call import PatientCall
from malaria_pipeline.assess.spread import PatientSpread, RateSpread

logger = logging.getLogger(__name__)

PATIENT_COLUMNS = [
    "patient",
    "cells",
    "parasitized",
    "errors",
    "observed",
    "fraction",
    "fraction_low",
    "fraction_high",
    "healthy_chance",
    "call",
    "sensitivity",
    "specificity",
    "count_threshold",
    "rates_from",
    "method",
]


@dataclass(frozen=True, kw_only=True)
class CellRates:
    """The classifier's sensitivity and specificity at one threshold, with the reference cells behind them.

    Attributes:
        threshold: P(Parasitized) at or above it is called Parasitized.
        positives, found: parasitized reference cells, and how many of them were called Parasitized.
        negatives, passed: uninfected reference cells, and how many of them were called Uninfected.
        source: where the reference cells come from (shown in every patient table).
    """

    threshold: float
    positives: int
    found: int
    negatives: int
    passed: int
    source: str

    @property
    def sensitivity(self) -> float:
        return self.found / self.positives

    @property
    def specificity(self) -> float:
        return self.passed / self.negatives

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "sensitivity": self.sensitivity, "specificity": self.specificity}


def rates_of(
    is_positive: np.ndarray, p_positive: np.ndarray, threshold: float | np.ndarray, source: str
) -> CellRates:
    """:class:`CellRates` of reference cells (scikit-learn's confusion matrix); ``threshold`` one number,
    or one per cell (each cell at the operating threshold of the model that predicted it: the rates then
    name the median).

    Raises:
        ValueError: the reference cells are not of both classes (no sensitivity or no specificity).
    """
    truth = np.asarray(is_positive, dtype=bool)
    called = np.asarray(p_positive, dtype=float) >= threshold
    tn, fp, fn, tp = confusion_matrix(truth, called, labels=[False, True]).ravel()
    if not (tp + fn and tn + fp):
        raise ValueError(
            f"The reference cells of {source} are all of one class: a sensitivity and a specificity need "
            "parasitized and uninfected cells"
        )
    return CellRates(
        threshold=float(np.median(threshold)),
        positives=int(tp + fn),
        found=int(tp),
        negatives=int(tn + fp),
        passed=int(tn),
        source=source,
    )


@dataclass(frozen=True, kw_only=True)
class ReferenceCells:
    """What a model keeps of its reference cells (its validation subset) to know its sensitivity and
    specificity at any threshold: the counts of scikit-learn's ROC curve, not the cells."""

    thresholds: list[float]  # decreasing; cells with P >= thresholds[i] are called positive
    found: list[int]  # parasitized reference cells called positive at thresholds[i]
    false_alarms: list[int]  # uninfected reference cells called positive at thresholds[i]
    positives: int
    negatives: int
    source: str

    @classmethod
    def of(cls, is_positive: np.ndarray, p_positive: np.ndarray, source: str) -> ReferenceCells:
        truth = np.asarray(is_positive, dtype=bool)
        p = np.asarray(p_positive, dtype=float)
        if truth.all() or not truth.any():
            raise ValueError(f"The reference cells of {source} are all of one class")
        order = np.argsort(-p, kind="stable")
        distinct = np.flatnonzero(np.diff(p[order])) if len(p) > 1 else np.array([], dtype=int)
        last = np.r_[distinct, len(p) - 1]  # the last cell of each run of equal probabilities
        found = np.cumsum(truth[order])[last]
        return cls(
            thresholds=[float(t) for t in p[order][last]],
            found=[int(f) for f in found],
            false_alarms=[int(i + 1 - f) for i, f in zip(last, found)],
            positives=int(truth.sum()),
            negatives=int((~truth).sum()),
            source=source,
        )

    def at(self, threshold: float) -> CellRates:
        """:class:`CellRates` at ``threshold``: the reference cells with P >= threshold are called positive."""
        reached = int(np.searchsorted(-np.asarray(self.thresholds), -threshold, side="right"))
        found = self.found[reached - 1] if reached else 0
        false_alarms = self.false_alarms[reached - 1] if reached else 0
        return CellRates(
            threshold=float(threshold),
            positives=self.positives,
            found=found,
            negatives=self.negatives,
            passed=self.negatives - false_alarms,
            source=self.source,
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> ReferenceCells:
        return cls(**saved)


def healthy_range(rates: CellRates, spread: PatientSpread | None) -> RateSpread:
    """The false-alarm rate of healthy patients: the spread fitted between patients, else (a model that
    keeps none) the reference cells' one rate for everyone, a binomial."""
    if spread is not None:
        return spread.false_alarm
    return RateSpread(
        mean=1 - rates.specificity,
        rho=0.0,
        patients=0,
        cells=rates.negatives,
        events=rates.negatives - rates.passed,
    )


def corrected_fraction(
    called: int, cells: int, rates: CellRates, level: float = 0.95, spread: PatientSpread | None = None
) -> tuple[float, float, float]:
    """The parasitized fraction of ``cells`` of which ``called`` were called Parasitized, corrected for the
    classifier's errors, with its ``level`` confidence interval.

    The estimate is Rogan–Gladen's, ``(observed + Sp − 1) / (Se + Sp − 1)`` clipped to [0, 1]; the
    interval is Lang & Reiczigel's (2014), as in the R package asht's ``prevSeSp``: Agresti–Coull-style
    adjusted proportions (``(n·Se + 1) / (n + 2)`` for sensitivity and specificity, ``(n·AP + z²/2) /
    (n + z²)`` for the observed share), a bias-correction of the centre, and a delta-method variance
    summing the observed share's, the sensitivity's and the specificity's; clipped to [0, 1].

    With ``spread``, this patient's own sensitivity and specificity are taken as drawn from the spread
    between patients, not as the pooled ones: the between-patient variance of each rate
    (:attr:`RateSpread.between_variance`) is added to the variance of its estimate, so that the interval
    holds on a new patient, not only on counting error. Without it, the interval is Lang & Reiczigel's.

    Returns:
        ``(fraction, low, high)``; NaN three times without cells; the interval [0, 1] where the adjusted rates
        tell the classes apart no better than chance (Se + Sp just above 1 on a few reference cells).

    Raises:
        ValueError: ``Se + Sp <= 1`` (the classifier calls no more parasitized cells positive than
            uninfected ones: the correction is undefined), or counts out of range.
    """
    if not 0 <= called <= cells:
        raise ValueError(f"{called} cells called Parasitized of {cells}: give 0 <= called <= cells")
    se, sp = rates.sensitivity, rates.specificity
    if se + sp <= 1:
        raise ValueError(
            f"Sensitivity {se:.4f} + specificity {sp:.4f} <= 1 at threshold {rates.threshold} on {rates.source}: "
            "the classifier tells parasitized from uninfected cells no better than chance there, so the "
            "parasitized fraction cannot be corrected for its errors. Use a model whose reference cells "
            "show sensitivity + specificity above 1 (retrain, or choose another threshold)."
        )
    if cells == 0:
        return float("nan"), float("nan"), float("nan")
    between_se = spread.detection.between_variance if spread else 0.0
    between_sp = spread.false_alarm.between_variance if spread else 0.0
    z = float(norm.ppf(1 - (1 - level) / 2))
    observed = called / cells
    fraction = float(np.clip((observed + sp - 1) / (se + sp - 1), 0, 1))
    n_se, n_sp, n_ap = rates.positives + 2, rates.negatives + 2, cells + z**2
    se_ = (rates.positives * se + 1) / n_se
    sp_ = (rates.negatives * sp + 1) / n_sp
    ap_ = (cells * observed + z**2 / 2) / n_ap
    youden_ = se_ + sp_ - 1
    if youden_ <= 0:  # few reference cells barely above chance: their adjusted rates are not, and say nothing
        return fraction, 0.0, 1.0
    centre = (ap_ + sp_ - 1) / youden_
    shift = 2 * z**2 * (centre * se_ * (1 - se_) / n_se - (1 - centre) * sp_ * (1 - sp_) / n_sp)
    half_width = (
        z
        * np.sqrt(
            ap_ * (1 - ap_) / n_ap
            + centre**2 * (se_ * (1 - se_) / n_se + between_se)
            + (1 - centre) ** 2 * (sp_ * (1 - sp_) / n_sp + between_sp)
        )
        / youden_
    )
    low, high = np.clip([centre + shift - half_width, centre + shift + half_width], 0, 1)
    return fraction, float(low), float(high)


@dataclass(frozen=True, kw_only=True)
class PatientSettings:
    """What a patient table needs of a model: the counting threshold, the rates there (None: the model
    keeps no reference cells), the spread between patients (None: it keeps none) and the call. The
    quantifier is ACC's: a training run refuses to store another (:func:`fit_patient_settings`)."""

    threshold: float
    rates: CellRates | None
    spread: PatientSpread | None
    rule: PatientCall


def model_patient_settings(
    bundle: dict[str, Any], threshold: float, default_call: dict[str, Any]
) -> PatientSettings:
    """What a model bundle keeps for its patient tables: its counting threshold (``count_threshold``, else
    ``threshold``), the rates of its reference cells there, its spread between patients, and its stored
    call rule (``default_call`` for a model that keeps none, or one of an older form)."""
    threshold = float(bundle.get("count_threshold", threshold))
    saved = bundle.get("reference_cells")
    rates = ReferenceCells.from_dict(saved).at(threshold) if saved else None
    spread = PatientSpread.from_dict(bundle["patient_spread"]) if bundle.get("patient_spread") else None
    if spread is not None and spread.threshold != threshold:
        logger.warning(
            "The model's spread between patients was fitted at threshold %.4g, not %.4g: the patient table "
            "takes one rate for every patient",
            spread.threshold,
            threshold,
        )
        spread = None
    rule = bundle.get("patient_call") or {}
    if set(rule) != {"healthy_below", "negative_below", "min_cells"}:
        rule = default_call  # a model saved before the healthy range
    return PatientSettings(
        threshold=threshold,
        rates=rates,
        spread=spread,
        rule=PatientCall(**rule),
    )


METHOD = "ACC (Rogan-Gladen) with the Lang & Reiczigel interval"


def patient_table(
    patients: pd.Series,
    is_called: np.ndarray,
    rates: CellRates | None,
    rule: PatientCall,
    level: float = 0.95,
    errors: pd.Series | None = None,
    spread: PatientSpread | None = None,
) -> pd.DataFrame:
    """One row per patient (:data:`PATIENT_COLUMNS`): cells, cells called Parasitized, files that could
    not be classified, the observed share, the corrected fraction with its interval, the chance that a
    healthy patient shows as many, the call, and the rates behind them with where they come from.

    Args:
        patients: the patient (or smear) of each classified cell.
        is_called: whether each cell was called Parasitized (at ``rates.threshold``).
        rates: the sensitivity and specificity behind the correction; None (a model that has none), or
            rates with ``Se + Sp <= 1`` (the correction is undefined; a warning says so): the fraction and
            its interval are missing and every call is ``review``.
        rule: the call.
        errors: the patient of each file that could not be classified (its patient still gets a row).
        spread: the rates' spread between patients (:class:`PatientSpread`); None: one rate for everyone.
    """
    called = pd.DataFrame(
        {"patient": patients.astype(str).to_numpy(), "called": np.asarray(is_called, dtype=bool)}
    )
    counts = called.groupby("patient", sort=True)["called"].agg(cells="size", parasitized="sum")
    failed = (errors.astype(str).value_counts() if errors is not None else pd.Series(dtype=int)).rename(
        "errors"
    )
    table = counts.join(failed, how="outer").fillna(0).astype(int).rename_axis("patient").reset_index()
    return table_of_counts(table, rates, rule, level, spread)


def table_of_counts(
    counts: pd.DataFrame,
    rates: CellRates | None,
    rule: PatientCall,
    level: float = 0.95,
    spread: PatientSpread | None = None,
) -> pd.DataFrame:
    """The patient table (:data:`PATIENT_COLUMNS`) of counts: one row per patient with ``patient``,
    ``cells``, ``parasitized`` (called) and ``errors``. Every path that makes a patient table (from
    cells, from simulated smears, from counts made elsewhere) ends here; see :func:`patient_table`."""
    table = counts.reset_index(drop=True)
    usable = rates is not None and rates.sensitivity + rates.specificity > 1
    if rates is not None and not usable:
        try:
            corrected_fraction(0, 1, rates, level)
        except ValueError as error:  # one warning for the table, not one failure per patient
            logger.warning("No corrected fraction for these %d patients: %s", len(table), error)
    rows = [
        corrected_fraction(int(k), int(n), rates, level, spread) if usable else (np.nan,) * 3
        for k, n in zip(table["parasitized"], table["cells"])
    ]
    estimates = pd.DataFrame(rows, columns=["fraction", "fraction_low", "fraction_high"], dtype=float)
    table = pd.concat([table, estimates], axis=1)
    table["observed"] = (table["parasitized"] / table["cells"].where(table["cells"] > 0)).astype(float)
    chance = (
        healthy_range(rates, spread).chance_of_at_least(table["parasitized"], table["cells"])
        if usable
        else np.nan
    )
    table["healthy_chance"] = pd.Series(chance, index=table.index, dtype=float).where(table["cells"] > 0)
    table["call"] = rule.calls(table)
    table["sensitivity"] = rates.sensitivity if rates else np.nan
    table["specificity"] = rates.specificity if rates else np.nan
    table["count_threshold"] = rates.threshold if rates else np.nan
    table["rates_from"] = _rates_from(rates, spread, usable)
    table["method"] = METHOD + (", the spread between patients" if spread and usable else "")
    return table[PATIENT_COLUMNS]


def _rates_from(rates: CellRates | None, spread: PatientSpread | None, usable: bool) -> str:
    if rates is None:
        return "none"
    text = f"{rates.source}, at threshold {rates.threshold:.4g}"
    if not usable:
        return text + " (sensitivity + specificity <= 1: no correction)"
    if spread is None:
        return text + "; no spread between patients (one rate for every patient)"
    fa, det = spread.false_alarm, spread.detection
    return (
        f"{text}; spread between patients: false alarms {fa.mean:.4f} (rho {fa.rho:.4f}, {fa.patients} patients), "
        f"detection {det.mean:.4f} (rho {det.rho:.4f}, {det.patients} patients), from "
        + ("the same cells" if spread.source == rates.source else spread.source)
    )


TRUTH_COLUMNS = ["labelled", "labelled_fraction", "infected", "covered"]


def with_truth(table: pd.DataFrame, patients: pd.Series, is_positive: np.ndarray) -> pd.DataFrame:
    """The patient table with the labelled truth: ``labelled`` parasitized cells, ``labelled_fraction``,
    ``infected`` (any cell labelled parasitized) and ``covered`` (the labelled fraction lies in the interval).

    The archive's cells were cropped, not counted in a field of view: the labelled fraction is the truth
    for the cells we have, not the smear's parasitemia.
    """
    truth = pd.DataFrame(
        {"patient": patients.astype(str).to_numpy(), "labelled": np.asarray(is_positive, dtype=bool)}
    )
    labelled = truth.groupby("patient")["labelled"].agg(labelled="sum", total="size")
    table = table.join(labelled, on="patient")
    table["labelled"] = table["labelled"].fillna(0).astype(int)
    table["labelled_fraction"] = table["labelled"] / table["total"]
    table["infected"] = table["labelled"] > 0
    table["covered"] = (table["fraction_low"] <= table["labelled_fraction"]) & (
        table["labelled_fraction"] <= table["fraction_high"]
    )
    return table.drop(columns="total")


def count_thresholds(
    count_at: float | str | dict[str, float],
    reference: pd.DataFrame,
    judged: pd.DataFrame,
    column: str,
    positive: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Where the cells are counted Parasitized (``patients.count_at``), for the reference cells and the
    judged ones: a probability (e.g. 0.5); ``operating`` (each cell at the operating threshold of the
    model that predicted it, ``operating_threshold``); or ``{specificity: s}``, the threshold that finds
    the most parasitized reference cells at a specificity of at least ``s`` on them (then the fewest false
    alarms: :func:`~malaria_pipeline.assess.metrics.sensitivity_at_specificity`).

    Returns:
        One threshold per reference cell, and one per judged cell.
    """
    if count_at == "operating":
        if reference["operating_threshold"].isna().any() or judged["operating_threshold"].isna().any():
            raise ValueError(
                "patients.count_at is operating, but some folds have no operating threshold (their "
                "validation patients were of one class): count at a number, e.g. 0.5"
            )
        return reference["operating_threshold"].to_numpy(float), judged["operating_threshold"].to_numpy(float)
    if isinstance(count_at, dict) and set(count_at) == {"specificity"}:
        point = sensitivity_at_specificity(
            (reference["label"] == positive).to_numpy(), reference[column].to_numpy(), count_at["specificity"]
        )
        if point["threshold"] is None:
            raise ValueError(
                f"patients.count_at {count_at}: no threshold reaches that specificity on the reference cells"
            )
        count_at = point["threshold"]
    if isinstance(count_at, bool) or not isinstance(count_at, (int, float)) or not 0 <= count_at <= 1:
        raise ValueError(
            f"patients.count_at is {count_at!r}: give a probability (e.g. 0.5), operating (the model's "
            "operating threshold) or {specificity: 0.995} (the threshold of that specificity on the "
            "reference cells)"
        )
    return np.full(len(reference), float(count_at)), np.full(len(judged), float(count_at))


def judge_patients(
    predictions: pd.DataFrame,
    *,
    positive: str,
    threshold: float | np.ndarray,
    rates: CellRates | None,
    rule: PatientCall,
    level: float,
    spread: PatientSpread | None = None,
) -> pd.DataFrame:
    """The :func:`with_truth` patient table of labelled predictions (``patient_id``, ``label`` and the
    probability column of ``positive``, e.g. ``p_parasitized``), cells counted at ``threshold``."""
    called = predictions[probability_column(positive)].to_numpy() >= threshold
    table = patient_table(predictions["patient_id"], called, rates, rule, level, spread=spread)
    return with_truth(table, predictions["patient_id"], (predictions["label"] == positive).to_numpy())


TABLE_QUANTIFIERS = ("ACC",)


def fit_patient_settings(
    reference: pd.DataFrame,
    *,
    positive: str,
    count_at: float | str | dict[str, float],
    quantifier: str,
    source: str,
    healthy_range: str = "all",
) -> dict[str, Any]:
    """What a model stores for its patient tables, from its reference cells (``patient_id``, ``label``, the
    probability column and ``operating_threshold``): ``reference_cells`` (their counts at every threshold,
    :class:`ReferenceCells`), ``count_threshold`` (``patients.count_at`` resolved on them),
    ``patient_spread`` (the rates' spread between their patients there) and ``quantifier``.

    Raises:
        ValueError: a quantifier the patient table does not use (:data:`TABLE_QUANTIFIERS`).
    """
    if quantifier not in TABLE_QUANTIFIERS:
        raise ValueError(
            f"patients.quantifier is {quantifier!r}: the patient table uses {', '.join(TABLE_QUANTIFIERS)}, the "
            "quantifier whose interval carries the spread between patients; cross-validation compares the "
            "others (cv_patient_methods, docs/patients.md)"
        )
    at, _ = count_thresholds(count_at, reference, reference, probability_column(positive), positive)
    threshold = float(at[0])
    is_positive = (reference["label"] == positive).to_numpy()
    p_positive = reference[probability_column(positive)].to_numpy()
    spread = PatientSpread.of(
        reference["patient_id"].to_numpy(),
        is_positive,
        p_positive >= threshold,
        threshold,
        source,
        healthy_range,
    )
    return {
        "reference_cells": ReferenceCells.of(is_positive, p_positive, source).as_dict(),
        "count_threshold": threshold,
        "patient_spread": spread.as_dict(),
        "quantifier": quantifier,
    }
