"""What a smear of known parasitemia gives: simulated smears, and the detection capability as CLSI EP17-A2
defines it. No Kedro, no MLflow, no torch.

A clinical laboratory states what a test can detect by three limits (CLSI EP17-A2, "Evaluation of
Detection Capability for Clinical Laboratory Measurement Procedures"):

- **Limit of Blank (LoB)**: the highest result that blank samples give, their 95th percentile; here the
  corrected parasitized fraction of healthy smears;
- **Limit of Detection (LoD)**: the lowest true amount detected 95% of the time; here the lowest
  parasitemia called ``positive`` on at least 95% of smears;
- **Limit of Quantitation (LoQ)**: the lowest amount measured within a stated error; here the lowest
  parasitemia whose estimate lies within ±25% of the truth (the WHO level-1 tolerance for parasite
  counts) on at least 90% of smears.

The smears are drawn from real classified cells, each from one patient as a real smear is: a healthy
smear from one control's cells, a smear at parasitemia ``p`` from one infected patient's parasitized and
uninfected cells, so that the spread between patients is in the smears. A patient seldom has as many
cells as a smear; its cells are then drawn again (with replacement), and the table says how many smears
were.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from malaria_pipeline.assess.columns import probability_column
from malaria_pipeline.assess.patient_call import PatientCall
from malaria_pipeline.assess.patients import CellRates, PatientSettings, table_of_counts
from malaria_pipeline.assess.spread import PatientSpread

LOB_PERCENTILE = 95
LOD_DETECTED = 0.95
LOQ_TOLERANCE = 0.25
LOQ_WITHIN = 0.90


def simulate_smears(
    patients: np.ndarray,
    is_positive: np.ndarray,
    is_called: np.ndarray,
    *,
    parasitemia: list[float],
    cells: int,
    smears: int,
    seed: int,
) -> pd.DataFrame:
    """``smears`` smears of ``cells`` cells at each parasitemia, from classified labelled cells, each smear
    of one patient chosen at random, as a real smear is:

    - a healthy smear (parasitemia 0) of one control (a patient none of whose cells is labelled
      parasitized; any patient's uninfected cells where there is no control);
    - a smear at parasitemia ``p`` of one infected patient: ``round(p · cells)`` of its parasitized cells
      and the rest of its uninfected ones.

    Each class is drawn without replacement where the patient has enough cells of it, and with
    replacement (its cells drawn again) otherwise.

    Returns:
        One row per smear: ``parasitemia`` (the true fraction: ``parasitized / cells``), ``smear``,
        ``patient``, ``cells``, ``called`` (cells called Parasitized) and ``resampled`` (the patient's cells
        were drawn again).
    """
    frame = pd.DataFrame(
        {
            "patient": np.asarray(patients).astype(str),
            "positive": np.asarray(is_positive, dtype=bool),
            "called": np.asarray(is_called, dtype=bool),
        }
    )
    by_class = {
        positive: {p: rows.to_numpy() for p, rows in group.groupby("patient")["called"]}
        for positive, group in frame.groupby("positive")
    }
    if set(by_class) != {False, True}:
        raise ValueError("Smears need cells labelled parasitized and cells labelled uninfected")
    infected = sorted(by_class[True])
    controls = sorted(set(by_class[False]) - set(infected)) or sorted(by_class[False])
    empty = np.zeros(0, dtype=bool)
    rng = np.random.default_rng(seed)
    rows = []
    for fraction in parasitemia:
        parasitized = int(round(fraction * cells))
        donors = infected if parasitized else controls
        for smear in range(smears):
            donor = donors[rng.integers(len(donors))]
            drawn, resampled = 0, False
            uninfected = by_class[False].get(donor)
            if uninfected is None:  # an infected patient with no uninfected cell: a control's background
                uninfected = by_class[False][controls[rng.integers(len(controls))]]
            for cells_of, count in (
                (by_class[True].get(donor, empty), parasitized),
                (uninfected, cells - parasitized),
            ):
                again = len(cells_of) < count
                drawn += int(rng.choice(cells_of, count, replace=again).sum()) if count else 0
                resampled |= again
            rows.append(
                {
                    "parasitemia": parasitized / cells,
                    "smear": smear,
                    "patient": donor,
                    "cells": cells,
                    "called": drawn,
                    "resampled": resampled,
                }
            )
    return pd.DataFrame(rows)


def smears_of_cells(
    cells: pd.DataFrame,
    *,
    positive: str,
    threshold: float | np.ndarray,
    detection: dict[str, Any],
    seed_offset: int = 0,
) -> pd.DataFrame:
    """:func:`simulate_smears` of labelled cells (``patient_id``, ``label``, the probability column of
    ``positive``) counted Parasitized at ``threshold``, with ``detection``'s ``parasitemia``, ``cells``,
    ``smears`` and ``seed`` (plus ``seed_offset``: each fold draws its own)."""
    return simulate_smears(
        cells["patient_id"].to_numpy(),
        (cells["label"] == positive).to_numpy(),
        cells[probability_column(positive)].to_numpy() >= threshold,
        parasitemia=detection["parasitemia"],
        cells=detection["cells"],
        smears=detection["smears"],
        seed=detection["seed"] + seed_offset,
    )


def judge_smears(
    smears: pd.DataFrame,
    rates: CellRates,
    rule: PatientCall,
    level: float,
    spread: PatientSpread | None,
) -> pd.DataFrame:
    """The smears of :func:`simulate_smears` with the patient table's ``fraction``, ``fraction_low``,
    ``fraction_high``, ``healthy_chance`` and ``call`` (:func:`~malaria_pipeline.assess.patients.table_of_counts`)."""
    counts = pd.DataFrame(
        {
            "patient": np.arange(len(smears)).astype(str),
            "cells": smears["cells"].to_numpy(),
            "parasitized": smears["called"].to_numpy(),
            "errors": 0,
        }
    )
    table = table_of_counts(counts, rates, rule, level, spread)
    columns = ["fraction", "fraction_low", "fraction_high", "healthy_chance", "call"]
    return pd.concat([smears.reset_index(drop=True), table[columns]], axis=1)


def detection_limits(smears: pd.DataFrame) -> dict[str, Any]:
    """LoB, LoD and LoQ of judged smears (``parasitemia``, ``fraction``, ``fraction_low``,
    ``fraction_high``, ``call``), with the figures behind them.

    Returns:
        ``lob`` (the 95th percentile of the healthy smears' corrected fractions, NumPy's linear
        interpolation), ``lod`` and ``loq`` (None where no parasitemia of the grid reaches them),
        ``healthy_positive`` (healthy smears called positive), ``coverage`` (the share of smears whose
        interval holds their true fraction) and ``by_parasitemia``: per parasitemia, the share of each call,
        the share within ±25%, the coverage, and the median estimate and interval.
    """
    covered = (smears["fraction_low"] <= smears["parasitemia"]) & (
        smears["parasitemia"] <= smears["fraction_high"]
    )
    levels = []
    for fraction, group in smears.assign(covered=covered).groupby("parasitemia", sort=True):
        estimate = group["fraction"].to_numpy(float)
        levels.append(
            {
                "parasitemia": float(fraction),
                "smears": int(len(group)),
                **{
                    call: float((group["call"] == call).mean()) for call in ("positive", "negative", "review")
                },
                "within_tolerance": float((np.abs(estimate - fraction) <= LOQ_TOLERANCE * fraction).mean())
                if fraction > 0
                else None,
                "coverage": float(group["covered"].mean()),
                "median_fraction": float(np.median(estimate)),
                "median_low": float(group["fraction_low"].median()),
                "median_high": float(group["fraction_high"].median()),
            }
        )
    healthy = smears[smears["parasitemia"] == 0]
    detected = [
        row["parasitemia"] for row in levels if row["parasitemia"] > 0 and row["positive"] >= LOD_DETECTED
    ]
    quantified = [
        row["parasitemia"]
        for row in levels
        if row["parasitemia"] > 0 and row["within_tolerance"] >= LOQ_WITHIN
    ]
    return {
        "lob": float(np.percentile(healthy["fraction"], LOB_PERCENTILE)) if len(healthy) else None,
        "lod": min(detected) if detected else None,
        "loq": min(quantified) if quantified else None,
        "healthy_smears": int(len(healthy)),
        "healthy_positive": int((healthy["call"] == "positive").sum()),
        "coverage": float(covered.mean()) if len(smears) else None,
        "resampled": float(smears["resampled"].mean()) if "resampled" in smears else None,
        "by_parasitemia": levels,
    }


def plain_sentence(limits: dict[str, Any], cells: int) -> str:
    """The limits in one sentence that a clinician can read."""
    lod = (
        f"detects {limits['lod']:.2%} parasitemia on {LOD_DETECTED:.0%} of {cells:,}-cell smears"
        if limits["lod"] is not None
        else f"detects no parasitemia of the grid on {LOD_DETECTED:.0%} of {cells:,}-cell smears"
    )
    loq = (
        f"counts it within ±{LOQ_TOLERANCE:.0%} from {limits['loq']:.2%} on {LOQ_WITHIN:.0%} of them"
        if limits["loq"] is not None
        else f"counts no parasitemia of the grid within ±{LOQ_TOLERANCE:.0%} on {LOQ_WITHIN:.0%} of them"
    )
    return (
        f"On smears of patients it never saw, this model {lod}, and {loq}; a healthy smear reads at most "
        f"{limits['lob']:.2%} on {LOB_PERCENTILE}% of smears, and {limits['healthy_positive']} of "
        f"{limits['healthy_smears']} healthy smears were called positive."
    )


def detection_of_cells(
    cells: pd.DataFrame, settings: PatientSettings, *, positive: str, level: float, detection: dict[str, Any]
) -> dict[str, Any] | None:
    """The detection limits (:func:`detection_limits`, without the per-parasitemia rows, and its
    :func:`plain_sentence`) of smears simulated from labelled cells (``patient_id``, ``label``, the
    probability column) that a model with these patient-table ``settings`` judges; None where the model
    keeps no reference cells (no corrected fraction) or the cells are of one class."""
    truth = (cells["label"] == positive).to_numpy()
    if settings.rates is None or truth.all() or not truth.any():
        return None
    smears = smears_of_cells(cells, positive=positive, threshold=settings.threshold, detection=detection)
    limits = detection_limits(judge_smears(smears, settings.rates, settings.rule, level, settings.spread))
    return {**limits, "cells": detection["cells"], "sentence": plain_sentence(limits, detection["cells"])}
