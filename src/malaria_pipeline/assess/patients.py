"""From cells to a patient: the parasitized fraction corrected for the classifier's errors, its interval,
and a call with a "review" band. No Kedro, no MLflow, no torch.

A microscopist answers per smear: infected or not, and how many red cells in a hundred carry parasites.
The share of a patient's cells that the classifier calls Parasitized is biased by its errors: at
specificity 0.97, a healthy smear shows 3% "parasitized" cells. The Rogan–Gladen estimator undoes that
bias with the classifier's sensitivity and specificity; Lang & Reiczigel (2014, Prev. Vet. Med.
113:13–22) give its confidence interval accounting for the number of cells *and* for the uncertainty of
the sensitivity and specificity, which are themselves estimated on a finite set of reference cells.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import norm
from sklearn.metrics import confusion_matrix, roc_auc_score

from malaria_pipeline.assess.columns import probability_column

logger = logging.getLogger(__name__)

CALLS = ("positive", "negative", "review")
PATIENT_COLUMNS = [
    "patient",
    "cells",
    "parasitized",
    "errors",
    "observed",
    "fraction",
    "fraction_low",
    "fraction_high",
    "call",
    "sensitivity",
    "specificity",
    "rates_from",
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


def rates_of(is_positive: np.ndarray, p_positive: np.ndarray, threshold: float, source: str) -> CellRates:
    """:class:`CellRates` of reference cells (scikit-learn's confusion matrix).

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
        threshold=float(threshold),
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


def corrected_fraction(
    called: int, cells: int, rates: CellRates, level: float = 0.95
) -> tuple[float, float, float]:
    """The parasitized fraction of ``cells`` of which ``called`` were called Parasitized, corrected for the
    classifier's errors, with its ``level`` confidence interval.

    The estimate is Rogan–Gladen's, ``(observed + Sp − 1) / (Se + Sp − 1)`` clipped to [0, 1]; the
    interval is Lang & Reiczigel's (2014), as in the R package asht's ``prevSeSp``: Agresti–Coull-style
    adjusted proportions (``(n·Se + 1) / (n + 2)`` for sensitivity and specificity, ``(n·AP + z²/2) /
    (n + z²)`` for the observed share), a bias-correction of the centre, and a delta-method variance
    summing the observed share's, the sensitivity's and the specificity's; clipped to [0, 1].

    Returns:
        ``(fraction, low, high)``; NaN three times without cells.

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
    z = float(norm.ppf(1 - (1 - level) / 2))
    observed = called / cells
    fraction = float(np.clip((observed + sp - 1) / (se + sp - 1), 0, 1))
    n_se, n_sp, n_ap = rates.positives + 2, rates.negatives + 2, cells + z**2
    se_ = (rates.positives * se + 1) / n_se
    sp_ = (rates.negatives * sp + 1) / n_sp
    ap_ = (cells * observed + z**2 / 2) / n_ap
    youden_ = se_ + sp_ - 1
    centre = (ap_ + sp_ - 1) / youden_
    shift = 2 * z**2 * (centre * se_ * (1 - se_) / n_se - (1 - centre) * sp_ * (1 - sp_) / n_sp)
    spread = (
        z
        * np.sqrt(
            ap_ * (1 - ap_) / n_ap
            + centre**2 * se_ * (1 - se_) / n_se
            + (1 - centre) ** 2 * sp_ * (1 - sp_) / n_sp
        )
        / youden_
    )
    low, high = np.clip([centre + shift - spread, centre + shift + spread], 0, 1)
    return fraction, float(low), float(high)


@dataclass(frozen=True, kw_only=True)
class PatientCall:
    """A patient's call from the corrected fraction and its interval.

    ``positive`` when the interval lies above ``positive_above`` (the parasitized cells seen are more than
    the classifier's false alarms explain); else ``negative`` when the estimate is below
    ``negative_below``; else ``review``: a microscopist should look. A patient of fewer than ``min_cells``
    cells is ``review`` whatever its cells say: one healthy-looking cell rules nothing out.
    """

    positive_above: float
    negative_below: float
    min_cells: int = 50

    def __post_init__(self):
        for name in ("positive_above", "negative_below"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 <= value <= 1):
                raise ValueError(f"patients.call.{name} is {value!r}: give a fraction from 0 to 1, e.g. 0.02")
        if not (isinstance(self.min_cells, int) and self.min_cells >= 1):
            raise ValueError(
                f"patients.call.min_cells is {self.min_cells!r}: give a number of cells, e.g. 50"
            )

    def __call__(self, fraction: float, low: float, cells: int) -> str:
        if np.isnan(fraction) or cells < self.min_cells:
            return "review"
        if low > self.positive_above:
            return "positive"
        return "negative" if fraction < self.negative_below else "review"

    def calls(self, table: pd.DataFrame) -> list[str]:
        """The call of each row of a patient table (``fraction``, ``fraction_low``, ``cells``)."""
        return [self(f, lo, n) for f, lo, n in zip(table["fraction"], table["fraction_low"], table["cells"])]

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def model_rates_and_call(
    bundle: dict[str, Any], threshold: float, default_call: dict[str, Any]
) -> tuple[CellRates | None, PatientCall]:
    """What a model bundle keeps for its patient tables: the rates of its reference cells at ``threshold``
    (None for a model that keeps none), and its stored call rule, else ``default_call``."""
    saved = bundle.get("reference_cells")
    rates = ReferenceCells.from_dict(saved).at(threshold) if saved else None
    return rates, PatientCall(**(bundle.get("patient_call") or default_call))


def patient_table(
    patients: pd.Series,
    is_called: np.ndarray,
    rates: CellRates | None,
    rule: PatientCall,
    level: float = 0.95,
    errors: pd.Series | None = None,
) -> pd.DataFrame:
    """One row per patient (:data:`PATIENT_COLUMNS`): cells, cells called Parasitized, files that could
    not be classified, the observed share, the corrected fraction with its interval, the call, and the
    sensitivity and specificity behind the correction with where they come from.

    Args:
        patients: the patient (or smear) of each classified cell.
        is_called: whether each cell was called Parasitized (at ``rates.threshold``).
        rates: the sensitivity and specificity behind the correction; None (a model that has none), or
            rates with ``Se + Sp <= 1`` (the correction is undefined; a warning says so): the fraction and
            its interval are missing and every call is ``review``.
        rule: the call.
        errors: the patient of each file that could not be classified (its patient still gets a row).
    """
    called = pd.DataFrame(
        {"patient": patients.astype(str).to_numpy(), "called": np.asarray(is_called, dtype=bool)}
    )
    counts = called.groupby("patient", sort=True)["called"].agg(cells="size", parasitized="sum")
    failed = (errors.astype(str).value_counts() if errors is not None else pd.Series(dtype=int)).rename(
        "errors"
    )
    table = counts.join(failed, how="outer").fillna(0).astype(int).rename_axis("patient").reset_index()
    usable = rates is not None and rates.sensitivity + rates.specificity > 1
    if rates is not None and not usable:
        try:
            corrected_fraction(0, 1, rates, level)
        except ValueError as error:  # one warning for the table, not one failure per patient
            logger.warning("No corrected fraction for these %d patients: %s", len(table), error)
    rows = [
        corrected_fraction(int(k), int(n), rates, level) if usable else (np.nan,) * 3
        for k, n in zip(table["parasitized"], table["cells"])
    ]
    estimates = pd.DataFrame(rows, columns=["fraction", "fraction_low", "fraction_high"], dtype=float)
    table = pd.concat([table, estimates], axis=1)
    table["observed"] = (table["parasitized"] / table["cells"].where(table["cells"] > 0)).astype(float)
    table["call"] = rule.calls(table)
    table["sensitivity"] = rates.sensitivity if rates else np.nan
    table["specificity"] = rates.specificity if rates else np.nan
    table["rates_from"] = (
        "none"
        if rates is None
        else f"{rates.source}, at threshold {rates.threshold:.4g}"
        + ("" if usable else " (sensitivity + specificity <= 1: no correction)")
    )
    return table[PATIENT_COLUMNS]


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


PATIENT_METRICS = (
    "patient_roc_auc",
    "call_sensitivity",
    "call_specificity",
    "review_share",
    "fraction_mae",
    "interval_coverage",
    "missed_from_min_fraction",
)


def patient_metrics(table: pd.DataFrame, min_fraction: float) -> dict[str, Any]:
    """Patient-level figures of a :func:`with_truth` table.

    - ``patient_roc_auc``: infected against uninfected patients, ranked by the share of their cells called
      Parasitized (None with patients of one kind);
    - ``call_sensitivity``, ``call_specificity``: of the calls on the patients not sent to review;
    - ``review_share``: the share sent to review;
    - ``fraction_mae``: mean absolute error of the corrected fraction against the labelled one;
    - ``interval_coverage``: the share of patients whose labelled fraction lies in the interval;
    - ``missed_from_min_fraction``: infected patients with a labelled fraction of at least ``min_fraction``
      called negative (the rule must keep it 0).
    """
    judged = table[table["cells"] > 0]
    estimated = judged[judged["fraction"].notna()]  # a model without reference cells estimates nothing
    infected = judged["infected"].to_numpy()
    both = infected.any() and (~infected).any()
    decided = judged[judged["call"] != "review"]
    sick, healthy = decided[decided["infected"]], decided[~decided["infected"]]
    return {
        "patients": int(len(table)),
        "infected": int(infected.sum()),
        "patient_roc_auc": float(roc_auc_score(infected, judged["observed"])) if both else None,
        "call_sensitivity": float((sick["call"] == "positive").mean()) if len(sick) else None,
        "call_specificity": float((healthy["call"] == "negative").mean()) if len(healthy) else None,
        "review_share": float((table["call"] == "review").mean()) if len(table) else None,
        "fraction_mae": float((estimated["fraction"] - estimated["labelled_fraction"]).abs().mean())
        if len(estimated)
        else None,
        "interval_coverage": float(estimated["covered"].mean()) if len(estimated) else None,
        "missed_from_min_fraction": int(
            ((decided["call"] == "negative") & (decided["labelled_fraction"] >= min_fraction)).sum()
        ),
        "false_positives": int((healthy["call"] == "positive").sum()),
    }


def choose_call(
    table: pd.DataFrame,
    positive_above: list[float],
    negative_below: list[float],
    min_fraction: float,
    max_review: float,
    min_cells: int = 50,
) -> tuple[PatientCall, dict[str, Any]]:
    """The most cautious call rule of the grid that the clinic's review workload allows, on these patients
    (a :func:`with_truth` table): among the rules that call no uninfected patient positive, no infected one
    of labelled fraction ``>= min_fraction`` negative, and send at most ``max_review`` of them to review,
    the one of lowest ``negative_below``, then lowest ``positive_above``. The lowest threshold the workload
    allows, not the one of least review: a rule chosen at the edge of the choosing patients misses the
    next patient just past it. Where no rule meets all three, the one of fewest errors, then least review.

    Returns:
        The rule, and its :func:`patient_metrics` on these patients with ``meets`` (whether it met all three).
    """
    candidates = []
    for above in positive_above:
        for below in negative_below:
            rule = PatientCall(positive_above=above, negative_below=below, min_cells=min_cells)
            calls = rule.calls(table)
            metrics = patient_metrics(table.assign(call=calls), min_fraction)
            faults = metrics["false_positives"] + metrics["missed_from_min_fraction"]
            review = metrics["review_share"] or 0.0
            meets = faults == 0 and review <= max_review
            candidates.append(
                ((not meets, faults, review if not meets else 0.0, below, above), rule, metrics, meets)
            )
    _, rule, metrics, meets = min(candidates, key=lambda c: c[0])
    return rule, {**metrics, "meets": meets}


def judge_patients(
    predictions: pd.DataFrame,
    *,
    positive: str,
    threshold: float,
    rates: CellRates | None,
    rule: PatientCall,
    level: float,
) -> pd.DataFrame:
    """The :func:`with_truth` patient table of labelled predictions (``patient_id``, ``label`` and the
    probability column of ``positive``, e.g. ``p_parasitized``), cells called at ``threshold``."""
    called = predictions[probability_column(positive)].to_numpy() >= threshold
    table = patient_table(predictions["patient_id"], called, rates, rule, level)
    return with_truth(table, predictions["patient_id"], (predictions["label"] == positive).to_numpy())


def cross_validated_patients(
    predictions: pd.DataFrame,
    *,
    positive: str,
    threshold: float,
    level: float,
    choose_from: dict[str, list[float]],
    min_fraction: float,
    max_review: float,
    min_cells: int = 50,
) -> tuple[pd.DataFrame, PatientCall]:
    """The patient table of out-of-fold predictions (``fold``, ``patient_id``, ``label`` and the
    probability column), each fold held out twice over:

    - its patients are corrected with the sensitivity and specificity of the *other* folds' out-of-fold
      cells (the cross-validation's claim, without these patients);
    - they are called by the rule that the other folds' patients choose (:func:`choose_call`).

    Returns:
        The :func:`with_truth` table with ``fold``, ``positive_above`` and ``negative_below`` (the rule
        that called each fold), and the rule that all the patients choose (the one to store in a model).
    """
    column = probability_column(positive)
    is_positive = (predictions["label"] == positive).to_numpy()
    tables = []
    for fold in sorted(predictions["fold"].unique()):
        held_out = (predictions["fold"] == fold).to_numpy()
        rates = rates_of(
            is_positive[~held_out],
            predictions[column].to_numpy()[~held_out],
            threshold,
            f"the out-of-fold cells of the other folds ({int((~held_out).sum()):,} cells)",
        )
        placeholder = PatientCall(positive_above=1.0, negative_below=0.0)  # every call is made below
        table = judge_patients(
            predictions[held_out],
            positive=positive,
            threshold=threshold,
            rates=rates,
            rule=placeholder,
            level=level,
        )
        tables.append(table.assign(fold=int(fold)))
    table = pd.concat(tables, ignore_index=True)
    grid = (choose_from["positive_above"], choose_from["negative_below"], min_fraction, max_review, min_cells)
    for fold in table["fold"].unique():
        mine = table["fold"] == fold
        rule, _ = choose_call(table[~mine] if (~mine).any() else table, *grid)
        table.loc[mine, "call"] = rule.calls(table[mine])
        table.loc[mine, "positive_above"] = rule.positive_above
        table.loc[mine, "negative_below"] = rule.negative_below
    recommended, _ = choose_call(table, *grid)
    return table, recommended


def call_chances(
    rates: CellRates,
    rule: PatientCall,
    *,
    cells: int,
    parasitemia: list[float],
    simulations: int,
    level: float = 0.95,
    seed: int = 0,
) -> list[dict[str, float]] | None:
    """What the rule would mean for a smear of ``cells`` red cells at each parasitemia, if the cells were
    called with these rates: the chance of each call and the median interval, over ``simulations``
    smears drawn at random (binomial parasitized cells, then binomial calls at Se and Sp). None where
    ``Se + Sp <= 1`` (no correction, nothing to say)."""
    if rates.sensitivity + rates.specificity <= 1:
        return None
    rng = np.random.default_rng(seed)
    rows = []
    for fraction in parasitemia:
        parasitized = rng.binomial(cells, fraction, simulations)
        called = rng.binomial(parasitized, rates.sensitivity) + rng.binomial(
            cells - parasitized, 1 - rates.specificity
        )
        estimates = np.array([corrected_fraction(int(k), cells, rates, level) for k in called])
        calls = np.array([rule(f, lo, cells) for f, lo, _ in estimates])
        rows.append(
            {
                "parasitemia": float(fraction),
                **{call: float((calls == call).mean()) for call in CALLS},
                "median_fraction": float(np.median(estimates[:, 0])),
                "median_low": float(np.median(estimates[:, 1])),
                "median_high": float(np.median(estimates[:, 2])),
            }
        )
    return rows
