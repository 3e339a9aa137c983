"""Simulated smears and the detection limits of CLSI EP17-A2 (LoB, LoD, LoQ), on cases whose answer is
worked out by hand."""

import numpy as np
import pandas as pd
import pytest

from malaria_pipeline.assess.detection import (
    detection_limits,
    detection_of_cells,
    judge_smears,
    plain_sentence,
    simulate_smears,
)
from malaria_pipeline.assess.patient_call import PatientCall
from malaria_pipeline.assess.patients import CellRates, PatientSettings, corrected_fraction
from tests.helpers import interval_by_hand


def _smears(parasitemia, fractions, calls, lows=None, highs=None):
    n = len(fractions)
    return pd.DataFrame(
        {
            "parasitemia": parasitemia,
            "fraction": fractions,
            "fraction_low": lows if lows is not None else np.zeros(n),
            "fraction_high": highs if highs is not None else np.ones(n),
            "call": calls,
            "resampled": False,
        }
    )


def test_the_limits_of_a_set_whose_answer_is_known():
    # 20 healthy smears reading 0.000, 0.001, ..., 0.019: the 95th percentile (linear, position
    # 0.95 · 19 = 18.05) is 0.018 + 0.05 · 0.001 = 0.01805.
    healthy = _smears(0.0, np.arange(20) / 1000, ["negative"] * 19 + ["review"])
    # 20 smears at each parasitemia; positive on 10, 18, 19 (= 95%, the level exactly) and 20 of them;
    # within ±25% of the truth on 5, 17, 18 (= 90% exactly) and 20 of them.
    levels = []
    for truth, positive, within in [(0.001, 10, 5), (0.005, 18, 17), (0.01, 19, 18), (0.02, 20, 20)]:
        estimate = np.r_[np.full(within, truth * 1.2), np.full(20 - within, truth * 1.5)]
        calls = ["positive"] * positive + ["review"] * (20 - positive)
        levels.append(_smears(truth, estimate, calls))
    limits = detection_limits(pd.concat([healthy, *levels], ignore_index=True))
    assert limits["lob"] == pytest.approx(0.01805, abs=1e-15)
    assert limits["lod"] == 0.01  # 19 of 20 is 0.95: detected
    assert limits["loq"] == 0.01  # 18 of 20 is 0.90: quantified
    assert limits["healthy_positive"] == 0 and limits["healthy_smears"] == 20
    assert limits["resampled"] == 0.0 and limits["coverage"] == 1.0
    by_level = {row["parasitemia"]: row for row in limits["by_parasitemia"]}
    assert by_level[0.005]["positive"] == 0.9 and by_level[0.005]["within_tolerance"] == 0.85
    assert by_level[0.005]["review"] == pytest.approx(0.1) and by_level[0.005]["negative"] == 0.0
    assert by_level[0.0]["within_tolerance"] is None and by_level[0.0]["review"] == 0.05
    assert by_level[0.0]["negative"] == 0.95 and by_level[0.0]["positive"] == 0.0
    assert by_level[0.0]["smears"] == 20 and by_level[0.0]["coverage"] == 1.0
    assert by_level[0.001]["median_fraction"] == pytest.approx(0.001 * 1.5)
    assert by_level[0.001]["median_low"] == 0.0 and by_level[0.001]["median_high"] == 1.0


def test_no_level_of_the_grid_detected_gives_none_and_the_sentence_says_so():
    limits = detection_limits(
        pd.concat(
            [
                _smears(0.0, [0.0, 0.01], ["negative", "positive"]),
                _smears(0.01, [0.0, 0.02], ["negative", "review"], lows=[0.0, 0.015], highs=[0.02, 0.03]),
            ],
            ignore_index=True,
        )
    )
    assert limits["lod"] is None and limits["loq"] is None and limits["healthy_positive"] == 1
    # coverage: all but the second smear at 1% (interval 0.015 to 0.03)
    assert limits["coverage"] == 0.75
    sentence = plain_sentence(limits, 1000)
    assert "detects no parasitemia of the grid on 95% of 1,000-cell smears" in sentence
    assert "1 of 2 healthy smears were called positive" in sentence


def test_a_smear_is_one_patients_a_healthy_one_a_controls():
    # H, a control: 10 uninfected cells, 3 called (false alarms). I, infected: 4 parasitized cells, all
    # called, and 30 uninfected, none called. J, infected: 1 parasitized cell (called) and no uninfected one.
    patients = np.array(["H"] * 10 + ["I"] * 34 + ["J"])
    positive = np.r_[np.zeros(10, bool), np.ones(4, bool), np.zeros(30, bool), True]
    called = np.r_[np.ones(3, bool), np.zeros(7, bool), np.ones(4, bool), np.zeros(30, bool), True]
    smears = simulate_smears(patients, positive, called, parasitemia=[0.0, 0.1], cells=20, smears=200, seed=0)
    healthy, at_ten = smears[smears["parasitemia"] == 0], smears[smears["parasitemia"] == 0.1]
    # healthy smears: H's cells only, drawn again (10 for 20); its false-alarm rate 0.3: 6 alarms on average
    assert set(healthy["patient"]) == {"H"} and healthy["resampled"].all()
    assert healthy["called"].mean() == pytest.approx(6.0, abs=0.5)
    # at 10%: 2 parasitized cells and 18 uninfected of one infected patient; I has enough of both
    assert set(at_ten["patient"]) == {"I", "J"}
    from_i = at_ten[at_ten["patient"] == "I"]
    assert (from_i["called"] == 2).all() and not from_i["resampled"].any()
    # J's one parasitized cell drawn twice, and, with no uninfected cell of its own, a control's background
    from_j = at_ten[at_ten["patient"] == "J"]
    assert from_j["resampled"].all() and (from_j["called"] >= 2).all() and (from_j["called"] - 2).mean() > 2
    assert (smears["cells"] == 20).all() and len(smears) == 400


def test_judged_smears_get_the_patient_tables_fraction_and_call():
    rates = CellRates(threshold=0.5, positives=100, found=90, negatives=100, passed=95, source="hand")
    smears = pd.DataFrame(
        {"parasitemia": [0.2, 0.0], "cells": [50, 50], "called": [10, 1], "resampled": False}
    )
    judged = judge_smears(smears, rates, PatientCall(healthy_below=0.001, negative_below=0.02), 0.95, None)
    assert judged.loc[0, ["fraction", "fraction_low", "fraction_high"]].tolist() == pytest.approx(
        list(corrected_fraction(10, 50, rates))
    )
    assert judged["call"].tolist() == ["positive", "negative"]


def test_an_estimate_at_25_percent_of_the_truth_exactly_is_within_the_tolerance():
    # binary-exact: 0.5 · 1.25 = 0.625 and 0.5 · 0.75 = 0.375; 0.626 is out
    limits = detection_limits(
        pd.concat(
            [_smears(0.0, [0.0], ["negative"]), _smears(0.5, [0.625, 0.375, 0.626], ["positive"] * 3)],
            ignore_index=True,
        )
    )
    assert limits["by_parasitemia"][1]["within_tolerance"] == pytest.approx(2 / 3)


def test_every_smear_holds_the_cells_asked_for():
    # every cell called: a smear's count of called cells is the number of cells it drew. H, a control of 30
    # uninfected cells; I, infected, 6 parasitized and 50 uninfected; K, infected, 1 parasitized cell only.
    patients = np.array(["H"] * 30 + ["I"] * 56 + ["K"])
    positive = np.r_[np.zeros(30, bool), np.ones(6, bool), np.zeros(50, bool), True]
    smears = simulate_smears(
        patients,
        positive,
        np.ones(len(patients), bool),
        parasitemia=[0.0, 0.1, 0.5],
        cells=20,
        smears=30,
        seed=1,
    )
    assert (smears["called"] == 20).all() and (smears["cells"] == 20).all()
    assert sorted(smears["parasitemia"].unique()) == [0.0, 0.1, 0.5] and len(smears) == 90


def test_the_test_patients_smears_are_judged_at_the_configured_level():
    # Three controls (1, 2 and 0 false alarms in 60) and three infected patients (20 parasitized cells, 17
    # to 19 called, and 40 uninfected); cells called at P 0.9, the others at 0.1.
    rows = []
    for patient, parasitized, found, alarms in (
        ("H1", 0, 0, 1),
        ("H2", 0, 0, 2),
        ("H3", 0, 0, 0),
        ("I1", 20, 19, 1),
        ("I2", 20, 17, 0),
        ("I3", 20, 18, 2),
    ):
        uninfected = 60 - parasitized
        labels = ["Parasitized"] * parasitized + ["Uninfected"] * uninfected
        p = [0.9] * found + [0.1] * (parasitized - found) + [0.9] * alarms + [0.1] * (uninfected - alarms)
        rows.append(pd.DataFrame({"patient_id": patient, "label": labels, "p_parasitized": p}))
    cells = pd.concat(rows, ignore_index=True)
    rates = CellRates(threshold=0.5, positives=200, found=180, negatives=200, passed=190, source="hand")
    settings = PatientSettings(
        threshold=0.5, rates=rates, spread=None, rule=PatientCall(healthy_below=0.001, negative_below=0.02)
    )
    detection = {"cells": 50, "parasitemia": [0.0, 0.02, 0.1, 0.3], "smears": 25, "seed": 3}
    # the same smears (simulate_smears is seeded), each interval written out by hand at the level asked
    smears = simulate_smears(
        cells["patient_id"].to_numpy(),
        (cells["label"] == "Parasitized").to_numpy(),
        cells["p_parasitized"].to_numpy() >= 0.5,
        parasitemia=detection["parasitemia"],
        cells=50,
        smears=25,
        seed=3,
    )
    for level in (0.8, 0.99):
        intervals = [interval_by_hand(k, 50, (180, 200), (190, 200), level) for k in smears["called"]]
        covered = [
            low <= truth <= high for (low, high), truth in zip(intervals, smears["parasitemia"], strict=True)
        ]
        limits = detection_of_cells(cells, settings, positive="Parasitized", level=level, detection=detection)
        assert limits["coverage"] == pytest.approx(np.mean(covered))
    assert (
        np.mean(covered)
        > detection_of_cells(cells, settings, positive="Parasitized", level=0.8, detection=detection)[
            "coverage"
        ]
    )
