"""A patient's call and its choice: the rule that calls a patient positive, negative or review from its
count, corrected fraction and the healthy range; the patient-level figures of a called table; and the most
cautious rule of a grid that the clinic's review workload allows. No Kedro, no MLflow, no torch.

The table that the call reads (fraction, interval, healthy chance) is :mod:`~malaria_pipeline.assess.patients`'.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

CALLS = ("positive", "negative", "review")


@dataclass(frozen=True, kw_only=True)
class PatientCall:
    """A patient's call from its count, its corrected fraction and the healthy range.

    ``positive`` when the chance that a healthy patient with as many cells shows at least as many called
    Parasitized (``healthy_chance``, from the spread of false alarms between patients) is below
    ``healthy_below``: more parasitized cells than any but the rarest healthy patient shows. Else
    ``negative`` when the corrected fraction is below ``negative_below``. Else ``review``: a
    microscopist should look. A patient of fewer than ``min_cells`` cells is ``review`` whatever its
    cells say: one healthy-looking cell rules nothing out.
    """

    healthy_below: float
    negative_below: float
    min_cells: int = 50

    def __post_init__(self):
        for name in ("healthy_below", "negative_below"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 <= value <= 1):
                raise ValueError(f"patients.call.{name} is {value!r}: give a number from 0 to 1, e.g. 0.001")
        if not (isinstance(self.min_cells, int) and self.min_cells >= 1):
            raise ValueError(
                f"patients.call.min_cells is {self.min_cells!r}: give a number of cells, e.g. 50"
            )

    def __call__(self, fraction: float, healthy_chance: float, cells: int) -> str:
        if np.isnan(fraction) or np.isnan(healthy_chance) or cells < self.min_cells:
            return "review"
        if healthy_chance < self.healthy_below:
            return "positive"
        return "negative" if fraction < self.negative_below else "review"

    def calls(self, table: pd.DataFrame) -> list[str]:
        """The call of each row of a patient table (``fraction``, ``healthy_chance``, ``cells``)."""
        return [self(f, h, n) for f, h, n in zip(table["fraction"], table["healthy_chance"], table["cells"])]

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


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
    healthy_below: list[float],
    negative_below: list[float],
    min_fraction: float,
    max_review: float,
    min_cells: int = 50,
    smears: pd.DataFrame | None = None,
) -> tuple[PatientCall, dict[str, Any]]:
    """The most cautious call rule of the grid that the clinic's review workload allows, on these patients
    (a :func:`with_truth` table): among the rules that call no uninfected patient positive, no infected one
    of labelled fraction ``>= min_fraction`` negative, no healthy smear of ``smears`` positive (simulated
    smears of these patients' cells, with ``parasitemia``, ``fraction``, ``healthy_chance`` and ``cells``;
    a smear of 1,000 cells shows a patient's own false-alarm rate, where 70 cells hide it in counting
    error), and send at most ``max_review`` of the patients to review, the one of lowest
    ``healthy_below`` (the fewest positive calls: specificity first), then lowest ``negative_below``. The
    most cautious the workload allows, not the one of least review: a rule chosen at the edge of the
    choosing patients errs on the next patient just past it. Where no rule meets them all, the one of
    fewest errors, then lowest ``negative_below`` (doubt goes to review: a clinic can afford a review,
    not a missed infection), then least review.

    Returns:
        The rule, and its :func:`patient_metrics` on these patients with ``healthy_smears_positive`` and
        ``meets`` (whether it met them all).
    """
    healthy_smears = smears[smears["parasitemia"] == 0] if smears is not None else None
    candidates = []
    for healthy in healthy_below:
        for below in negative_below:
            rule = PatientCall(healthy_below=healthy, negative_below=below, min_cells=min_cells)
            metrics = patient_metrics(table.assign(call=rule.calls(table)), min_fraction)
            metrics["healthy_smears_positive"] = (
                sum(call == "positive" for call in rule.calls(healthy_smears))
                if healthy_smears is not None
                else 0
            )
            faults = (
                metrics["false_positives"]
                + metrics["missed_from_min_fraction"]
                + metrics["healthy_smears_positive"]
            )
            review = metrics["review_share"] or 0.0
            meets = faults == 0 and review <= max_review
            # meeting all: the most cautious; else the fewest errors, the lowest negative_below, the least review
            fallback = (below, review) if not meets else (0.0, 0.0)
            candidates.append(((not meets, faults, *fallback, healthy, below), rule, metrics, meets))
    _, rule, metrics, meets = min(candidates, key=lambda c: c[0])
    return rule, {**metrics, "meets": meets}
