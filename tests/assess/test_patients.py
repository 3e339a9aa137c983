"""The patient table: the corrected fraction, its interval and the call, against hand-worked numbers."""

import numpy as np
import pandas as pd
import pytest

from malaria_pipeline.assess.patients import (
    CellRates,
    PatientCall,
    ReferenceCells,
    call_chances,
    choose_call,
    corrected_fraction,
    cross_validated_patients,
    patient_metrics,
    patient_table,
    rates_of,
)


def rates(found, positives, passed, negatives):
    return CellRates(
        threshold=0.5, positives=positives, found=found, negatives=negatives, passed=passed, source="hand"
    )


# (called, cells, Se counts, Sp counts) -> (fraction, low, high), worked out by hand from Lang & Reiczigel
# (2014) as the R package asht's prevSeSp computes it (z = 1.959964):
#  10 of 50 called, Se 90/100, Sp 95/100: RG (0.2 + 0.95 - 1) / 0.85 = 0.1765;
#   Se~ = 91/102, Sp~ = 96/102, AP~ = (10 + 1.9207) / 53.8415 = 0.22141, P~ = 0.19844,
#   shift 2z²(P~Se~(1-Se~)/102 - (1-P~)Sp~(1-Sp~)/102) = -0.00255, half-width 0.14091
#  1 of 40 called, Se 40/50, Sp 54/60: RG below 0, clipped to 0; the interval's low end clipped to 0.
HAND_WORKED = [
    ((10, 50, (90, 100), (95, 100)), (0.176470588235294, 0.05224755590898306, 0.33406091023838386)),
    ((1, 40, (40, 50), (54, 60)), (0.0, 0.0, 0.08264074323987194)),
]


@pytest.mark.parametrize(("given", "expected"), HAND_WORKED)
def test_the_corrected_fraction_and_its_interval_match_the_hand_worked_ones(given, expected):
    called, cells, (found, positives), (passed, negatives) = given
    assert corrected_fraction(called, cells, rates(found, positives, passed, negatives)) == pytest.approx(
        expected, abs=1e-12
    )


def test_a_group_of_one_cell_gets_a_wide_interval_not_an_error():
    fraction, low, high = corrected_fraction(1, 1, rates(90, 100, 95, 100))
    assert fraction == 1.0
    assert low == pytest.approx(0.13123155161986455, abs=1e-12)  # hand-worked as above
    assert high == 1.0


def test_the_interval_covers_the_true_fraction_about_95_times_in_100():
    # A second, independent check: simulate patients of known fraction, reference cells of known rates.
    rng = np.random.default_rng(0)
    true_se, true_sp, truth, cells = 0.9, 0.97, 0.1, 150
    covered = 0
    for _ in range(2000):
        ref = rates(rng.binomial(500, true_se), 500, rng.binomial(800, true_sp), 800)
        parasitized = rng.binomial(cells, truth)
        called = rng.binomial(parasitized, true_se) + rng.binomial(cells - parasitized, 1 - true_sp)
        _, low, high = corrected_fraction(int(called), cells, ref)
        covered += low <= truth <= high
    assert 0.92 <= covered / 2000 <= 0.99


def test_without_cells_the_fraction_is_missing_and_the_call_is_review():
    assert np.isnan(corrected_fraction(0, 0, rates(90, 100, 95, 100))).all()
    table = patient_table(
        pd.Series(["A"]),
        np.array([True]),
        rates(90, 100, 95, 100),
        PatientCall(positive_above=0, negative_below=0.02),
        errors=pd.Series(["B", "B"]),
    )
    b = table.set_index("patient").loc["B"]
    assert (b["cells"], b["errors"], b["call"]) == (0, 2, "review")
    assert np.isnan(b["fraction"])


@pytest.mark.parametrize(("found", "passed"), [(50, 50), (40, 50), (10, 20)])
def test_a_classifier_no_better_than_chance_gets_a_clear_message(found, passed):
    with pytest.raises(ValueError, match="no better than chance"):
        corrected_fraction(3, 10, rates(found, 100, passed, 100))


def test_a_table_whose_rates_are_no_better_than_chance_warns_once_and_estimates_nothing(caplog):
    table = patient_table(
        pd.Series(["A", "A", "B"]),
        np.array([True, False, True]),
        rates(25, 100, 60, 100),
        PatientCall(positive_above=0, negative_below=0.02),
    )
    assert table["cells"].tolist() == [2, 1] and table["fraction"].isna().all()
    assert (table["call"] == "review").all()
    assert (
        table["rates_from"].iloc[0]
        == "hand, at threshold 0.5 (sensitivity + specificity <= 1: no correction)"
    )
    assert caplog.text.count("no better than chance") == 1


def test_each_band_of_the_call():
    rule = PatientCall(positive_above=0.0, negative_below=0.02)
    # fraction, low -> call
    assert rule(0.10, 0.03, 100) == "positive"  # the interval lies above 0
    assert rule(0.01, 0.0, 100) == "negative"  # the estimate is below 2%
    assert rule(0.05, 0.0, 100) == "review"  # neither
    assert PatientCall(positive_above=0.05, negative_below=0.02)(0.10, 0.03, 100) == "review"
    # fewer cells than min_cells (50 by default): review, whatever they show
    assert rule(0.0, 0.0, 49) == "review" and rule(0.5, 0.2, 49) == "review"
    assert PatientCall(positive_above=0.0, negative_below=0.02, min_cells=1)(0.0, 0.0, 1) == "negative"
    with pytest.raises(ValueError, match="patients.call.min_cells"):
        PatientCall(positive_above=0, negative_below=0.02, min_cells=0)
    with pytest.raises(ValueError, match="patients.call.negative_below"):
        PatientCall(positive_above=0, negative_below=2)


def test_the_table_counts_each_patients_cells_and_calls():
    patients = pd.Series(["P1"] * 50 + ["P2"] * 40)
    called = np.r_[np.ones(10, bool), np.zeros(40, bool), np.ones(1, bool), np.zeros(39, bool)]
    table = patient_table(
        patients,
        called,
        rates(90, 100, 95, 100),
        PatientCall(positive_above=0, negative_below=0.02, min_cells=40),
    ).set_index("patient")
    assert table.loc["P1", ["cells", "parasitized", "errors"]].tolist() == [50, 10, 0]
    assert table.loc["P1", "fraction"] == pytest.approx(0.176470588235294)
    assert table.loc["P1", "call"] == "positive"
    assert table.loc["P2", "observed"] == pytest.approx(1 / 40)
    # 1/40 at Se .9 Sp .95: RG (0.025 + 0.95 - 1) / 0.85 < 0 -> 0 -> negative
    assert table.loc["P2", ["fraction", "call"]].tolist() == [0.0, "negative"]


def test_reference_cells_give_the_rates_of_any_threshold_as_a_confusion_matrix_does():
    rng = np.random.default_rng(1)
    truth = rng.random(300) < 0.4
    p = np.round(np.clip(truth * 0.4 + rng.random(300) * 0.6, 0, 1), 2)  # ties on purpose
    reference = ReferenceCells.of(truth, p, "test")
    for threshold in [0.0, 0.1, 0.33, 0.5, 0.5000001, 0.77, 1.0, 1.5]:
        at = reference.at(threshold)
        tp = int(((p >= threshold) & truth).sum())
        tn = int(((p < threshold) & ~truth).sum())
        assert (at.found, at.passed, at.positives, at.negatives) == (tp, tn, truth.sum(), (~truth).sum())
    assert ReferenceCells.from_dict(reference.as_dict()) == reference
    assert rates_of(truth, p, 0.5, "test") == reference.at(0.5)


def _truth_table(fractions, lows, labelled, calls=None):
    n = len(fractions)
    table = pd.DataFrame(
        {
            "patient": [f"P{i}" for i in range(n)],
            "cells": 100,
            "observed": fractions,
            "fraction": fractions,
            "fraction_low": lows,
            "fraction_high": np.minimum(np.array(fractions) + 0.05, 1),
            "call": calls or ["review"] * n,
            "labelled_fraction": labelled,
        }
    )
    return table.assign(
        infected=table["labelled_fraction"] > 0,
        covered=lambda t: (t.fraction_low <= t.labelled_fraction) & (t.labelled_fraction <= t.fraction_high),
    )


def test_patient_metrics_by_hand():
    table = _truth_table(
        [0.0, 0.03, 0.5, 0.04, 0.2],
        [0.0, 0.0, 0.4, 0.0, 0.1],
        [0.0, 0.0, 0.45, 0.06, 0.3],
        calls=["negative", "review", "positive", "negative", "positive"],
    )
    m = patient_metrics(table, min_fraction=0.05)
    # decided: P0 healthy negative, P2 sick positive, P3 sick negative, P4 sick positive
    assert m["call_sensitivity"] == pytest.approx(2 / 3)
    assert m["call_specificity"] == 1.0
    assert m["review_share"] == pytest.approx(1 / 5)
    assert m["missed_from_min_fraction"] == 1  # P3: 6% labelled, called negative
    assert m["fraction_mae"] == pytest.approx((0 + 0.03 + 0.05 + 0.02 + 0.1) / 5)
    assert m["interval_coverage"] == pytest.approx(4 / 5)  # all but P4: 0.3 above [0.1, 0.25]
    assert m["patient_roc_auc"] == pytest.approx(1.0)


def test_the_chosen_rule_is_the_most_cautious_that_the_review_workload_allows():
    table = _truth_table(
        [0.0, 0.015, 0.03, 0.5, 0.04, 0.01],
        [0.0, 0.0, 0.0, 0.4, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.5, 0.06, 0.01],
    )
    grid = ([0.0, 0.02], [0.01, 0.02, 0.05])
    # By hand: below 0.05, P4 (labelled 6%, estimated 4%, interval reaching 0) is called negative, a miss;
    # below 0.02, P0, P1 and P5 are negative, P2 and P4 go to review (2 of 6); below 0.01 only P0 is
    # negative (4 of 6 to review). positive_above 0.02 would send P3 (interval from 0.4) nowhere else.
    rule, metrics = choose_call(table, *grid, min_fraction=0.05, max_review=0.7)
    assert rule == PatientCall(positive_above=0.0, negative_below=0.01)  # the most cautious allowed
    assert metrics["meets"] and metrics["review_share"] == pytest.approx(4 / 6)
    rule, metrics = choose_call(table, *grid, min_fraction=0.05, max_review=0.5)
    assert rule == PatientCall(positive_above=0.0, negative_below=0.02)
    assert metrics["meets"] and metrics["review_share"] == pytest.approx(2 / 6)
    # a workload no rule meets without a miss: the fewest errors, then the least review
    rule, metrics = choose_call(table, *grid, min_fraction=0.05, max_review=0.2)
    assert rule == PatientCall(positive_above=0.0, negative_below=0.02) and not metrics["meets"]


def test_out_of_fold_each_folds_patients_use_the_other_folds_rates_and_rule():
    # Fold 1: patient A (20 cells, labelled 50%), control B (20 cells). Fold 2: C (20, 25%), control D (20).
    def cells(patient, fold, labelled, called_pos, called_neg):
        """``labelled`` parasitized cells, ``called_pos`` of them called; ``called_neg`` false alarms."""
        truth = [True] * labelled + [False] * (20 - labelled)
        p = (
            [0.9] * called_pos
            + [0.1] * (labelled - called_pos)
            + [0.9] * called_neg
            + [0.1] * (20 - labelled - called_neg)
        )
        return pd.DataFrame(
            {
                "patient_id": patient,
                "fold": fold,
                "label": np.where(truth, "Parasitized", "Uninfected"),
                "p_parasitized": p,
            }
        )

    predictions = pd.concat(
        [cells("A", 1, 10, 9, 1), cells("B", 1, 0, 0, 0), cells("C", 2, 5, 4, 0), cells("D", 2, 0, 0, 2)]
    )
    table, rule = cross_validated_patients(
        predictions,
        positive="Parasitized",
        threshold=0.5,
        level=0.95,
        choose_from={"positive_above": [0.0], "negative_below": [0.05, 0.2]},
        min_fraction=0.05,
        max_review=0.5,
        min_cells=1,
    )
    table = table.set_index("patient")
    # Fold 1's rates come from fold 2's cells: Se 4/5, Sp 33/35 (C: 15 uninfected, no alarm; D: 2 of 20)
    assert table.loc["A", ["sensitivity", "specificity"]].tolist() == pytest.approx([4 / 5, 33 / 35])
    # Fold 2's from fold 1's: Se 9/10, Sp 29/30
    assert table.loc["D", ["sensitivity", "specificity"]].tolist() == pytest.approx([9 / 10, 29 / 30])
    expected_a = corrected_fraction(10, 20, rates(4, 5, 33, 35))
    assert table.loc["A", ["fraction", "fraction_low", "fraction_high"]].tolist() == pytest.approx(
        list(expected_a)
    )
    assert table.loc["A", "labelled_fraction"] == 0.5 and table.loc["A", "fold"] == 1
    # each fold's rule is chosen on the other fold's patients
    assert set(table["negative_below"]) <= {0.05, 0.2} and isinstance(rule, PatientCall)


def test_what_the_rule_means_for_a_smear_with_a_near_perfect_classifier_by_hand():
    # Se 0.999, Sp 0.9999 (n 100,000 each): a healthy smear of 1,000 cells shows about 0.1 false alarms,
    # so it is negative (estimate < 2%) nearly always; at 5% (50 parasitized) the interval lies above 0.
    near_perfect = rates(99_900, 100_000, 99_990, 100_000)
    rule = PatientCall(positive_above=0.0, negative_below=0.02)
    healthy, five = call_chances(near_perfect, rule, cells=1000, parasitemia=[0.0, 0.05], simulations=200)
    assert healthy["negative"] == 1.0 and healthy["median_fraction"] == 0.0
    assert five["positive"] == 1.0 and five["median_fraction"] == pytest.approx(0.05, abs=0.01)
