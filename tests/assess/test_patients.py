"""The patient table: the corrected fraction, its interval and the call, against hand-worked numbers."""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import betabinom, binom

from malaria_pipeline.assess.out_of_fold import call_out_of_fold, cross_validated_patients
from malaria_pipeline.assess.patient_call import PatientCall, choose_call, patient_metrics
from malaria_pipeline.assess.patients import (
    CellRates,
    ReferenceCells,
    corrected_fraction,
    count_thresholds,
    fit_patient_settings,
    judge_patients,
    model_patient_settings,
    patient_table,
    rates_of,
)
from malaria_pipeline.assess.spread import PatientSpread, RateSpread, fit_rate_spread
from tests.helpers import interval_by_hand


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


def test_the_configured_level_sets_the_interval():
    # 90%: z = 1.644854; written out by hand from the same steps: [0.068072, 0.304859]
    _, low, high = corrected_fraction(10, 50, rates(90, 100, 95, 100), level=0.9)
    assert (low, high) == pytest.approx((0.06807194936307523, 0.30485915322789436), abs=1e-12)
    assert (low, high) == pytest.approx(interval_by_hand(10, 50, (90, 100), (95, 100), 0.9), abs=1e-12)


def test_reference_cells_barely_above_chance_give_the_whole_interval_not_an_error():
    # Se 1 of 1, Sp 1 of 10: Se + Sp = 1.1 > 1, so Rogan-Gladen's estimate exists, (0.5 + 0.1 - 1) / 0.1
    # clipped to 0; the adjusted rates (1 + 1) / 3 and (1 + 1) / 12 sum to 0.83 < 1: no interval to narrow
    assert corrected_fraction(5, 10, rates(1, 1, 1, 10)) == (0.0, 0.0, 1.0)
    # adjusted rates summing to exactly 1 (Se 1 of 2 -> 2/4, Sp 1 of 2 -> 2/4) are refused raw (Se + Sp = 1)
    with pytest.raises(ValueError, match="no better than chance"):
        corrected_fraction(5, 10, rates(1, 2, 1, 2))


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
        PatientCall(healthy_below=0.001, negative_below=0.02),
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
        PatientCall(healthy_below=0.001, negative_below=0.02),
    )
    assert table["cells"].tolist() == [2, 1] and table["fraction"].isna().all()
    assert (table["call"] == "review").all()
    assert (
        table["rates_from"].iloc[0]
        == "hand, at threshold 0.5 (sensitivity + specificity <= 1: no correction)"
    )
    assert caplog.text.count("no better than chance") == 1


def test_each_band_of_the_call():
    rule = PatientCall(healthy_below=0.001, negative_below=0.02)
    # fraction, chance for a healthy patient -> call
    assert rule(0.10, 0.0001, 100) == "positive"  # a healthy patient shows as many 1 time in 10,000
    assert rule(0.10, 0.001, 100) == "review"  # at the level exactly: not below it, and not negative
    assert rule(0.01, 0.3, 100) == "negative"  # the estimate is below 2%
    assert rule(0.05, 0.01, 100) == "review"  # neither
    assert rule(0.02, 0.3, 100) == "review"  # at negative_below exactly: not below it
    assert PatientCall(healthy_below=0.00001, negative_below=0.02)(0.10, 0.0001, 100) == "review"
    # fewer cells than min_cells (50 by default): review, whatever they show
    assert rule(0.0, 1.0, 49) == "review" and rule(0.5, 1e-9, 49) == "review"
    assert PatientCall(healthy_below=0.001, negative_below=0.02, min_cells=1)(0.0, 1.0, 1) == "negative"
    assert rule(float("nan"), float("nan"), 100) == "review"
    with pytest.raises(ValueError, match="patients.call.min_cells"):
        PatientCall(healthy_below=0.001, negative_below=0.02, min_cells=0)
    with pytest.raises(ValueError, match="patients.call.negative_below"):
        PatientCall(healthy_below=0.001, negative_below=2)
    with pytest.raises(ValueError, match="patients.call.healthy_below"):
        PatientCall(healthy_below=-0.1, negative_below=0.02)


def test_the_table_counts_each_patients_cells_and_calls():
    patients = pd.Series(["P1"] * 50 + ["P2"] * 40)
    called = np.r_[np.ones(10, bool), np.zeros(40, bool), np.ones(1, bool), np.zeros(39, bool)]
    table = patient_table(
        patients,
        called,
        rates(90, 100, 95, 100),
        PatientCall(healthy_below=0.001, negative_below=0.02, min_cells=40),
    ).set_index("patient")
    assert table.loc["P1", ["cells", "parasitized", "errors"]].tolist() == [50, 10, 0]
    assert table.loc["P1", "fraction"] == pytest.approx(0.176470588235294)
    # without a spread, the healthy range is one binomial at 1 - Sp = 0.05: P(K >= 10 | n = 50)
    assert table.loc["P1", "healthy_chance"] == pytest.approx(binom.sf(9, 50, 0.05), rel=1e-12)
    assert table.loc["P1", "call"] == "positive"  # 0.00016: below 0.001
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


def _truth_table(fractions, lows, labelled, calls=None, chances=None):
    n = len(fractions)
    table = pd.DataFrame(
        {
            "patient": [f"P{i}" for i in range(n)],
            "cells": 100,
            "observed": fractions,
            "fraction": fractions,
            "fraction_low": lows,
            "fraction_high": np.minimum(np.array(fractions) + 0.05, 1),
            "healthy_chance": chances if chances is not None else [0.5] * n,
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


CHOOSING = {
    "fractions": [0.0, 0.015, 0.03, 0.5, 0.04, 0.01],
    "lows": [0.0] * 6,
    "labelled": [0.0, 0.0, 0.0, 0.5, 0.06, 0.01],
    "chances": [0.9, 0.2, 0.05, 1e-9, 0.003, 0.4],
}


@pytest.mark.parametrize(
    ("max_review", "expected", "review"),
    [
        # By hand, for each rule (healthy_below, negative_below): P3 is positive under both levels; P4
        # (labelled 6%, chance 0.003) is positive at 0.01, review at 0.001 unless negative_below 0.05 calls
        # it negative (a miss); P1, P2 and P5 are negative once their estimate is below negative_below.
        # Reviews: (0.01, 0.01) 3 of 6, (0.01, 0.02) 1, (0.01, 0.05) 0, (0.001, 0.01) 4, (0.001, 0.02) 2.
        (0.7, (0.001, 0.01), 4 / 6),  # the most cautious: lowest healthy_below, then lowest negative_below
        (4 / 6, (0.001, 0.01), 4 / 6),  # a review share equal to max_review is allowed
        (0.5, (0.001, 0.02), 2 / 6),
        (0.3, (0.01, 0.02), 1 / 6),
        (0.0, (0.01, 0.05), 0.0),
    ],
)
def test_the_chosen_rule_is_the_most_cautious_that_the_review_workload_allows(max_review, expected, review):
    table = _truth_table(
        CHOOSING["fractions"], CHOOSING["lows"], CHOOSING["labelled"], chances=CHOOSING["chances"]
    )
    rule, metrics = choose_call(
        table, [0.01, 0.001], [0.01, 0.02, 0.05], min_fraction=0.05, max_review=max_review
    )
    assert (rule.healthy_below, rule.negative_below) == expected
    assert metrics["meets"] and metrics["review_share"] == pytest.approx(review)


def test_where_no_rule_meets_the_fewest_errors_then_the_lowest_negative_below_then_the_least_review():
    # P6, a control whose cells show a chance 0.0005 for a healthy patient, is a false positive under
    # every rule; (0.001, 0.05) also misses P4. Of the rules of one error, those of negative_below 0.01
    # are (0.01, 0.01), 3 of 7 to review, and (0.001, 0.01), 4 of 7.
    table = _truth_table(
        [*CHOOSING["fractions"], 0.06],
        [0.0] * 7,
        [*CHOOSING["labelled"], 0.0],
        chances=[*CHOOSING["chances"], 0.0005],
    )
    rule, metrics = choose_call(table, [0.01, 0.001], [0.01, 0.02, 0.05], min_fraction=0.05, max_review=0.7)
    assert (rule.healthy_below, rule.negative_below) == (0.01, 0.01) and not metrics["meets"]
    assert metrics["false_positives"] == 1 and metrics["review_share"] == pytest.approx(3 / 7)


def _fold_cells(patient, fold, labelled, called_pos, uninfected, called_neg):
    """``labelled`` parasitized cells (``called_pos`` of them called) and ``uninfected`` ones (``called_neg``
    of them false alarms) of one patient of one fold."""
    truth = [True] * labelled + [False] * uninfected
    p = (
        [0.9] * called_pos
        + [0.1] * (labelled - called_pos)
        + [0.9] * called_neg
        + [0.1] * (uninfected - called_neg)
    )
    return pd.DataFrame(
        {
            "patient_id": patient,
            "fold": fold,
            "label": np.where(truth, "Parasitized", "Uninfected"),
            "p_parasitized": p,
        }
    )


def test_out_of_fold_each_folds_patients_use_the_other_folds_rates_and_rule():
    # Fold 1: patient A (20 cells, labelled 50%), control B (20 cells). Fold 2: C (20, 25%), control D (20).
    predictions = pd.concat(
        [
            _fold_cells("A", 1, 10, 9, 10, 1),
            _fold_cells("B", 1, 0, 0, 20, 0),
            _fold_cells("C", 2, 5, 4, 15, 0),
            _fold_cells("D", 2, 0, 0, 20, 2),
        ]
    )
    table, smears = cross_validated_patients(
        predictions,
        positive="Parasitized",
        count_at=0.5,
        level=0.9,
        choose_from={"healthy_below": [0.001], "negative_below": [0.05, 0.2]},
        min_fraction=0.05,
        max_review=0.5,
        min_cells=1,
    )
    table = table.set_index("patient")
    # Fold 1's rates come from fold 2's cells: Se 4/5, Sp 33/35 (C: 15 uninfected, no alarm; D: 2 of 20)
    assert table.loc["A", ["sensitivity", "specificity"]].tolist() == pytest.approx([4 / 5, 33 / 35])
    # Fold 2's from fold 1's: Se 9/10, Sp 29/30
    assert table.loc["D", ["sensitivity", "specificity"]].tolist() == pytest.approx([9 / 10, 29 / 30])
    # and its spread between patients from fold 2's patients only: false alarms 0 of C's 15 and 2 of D's
    # 20 uninfected cells, detection 4 of C's 5 parasitized ones
    fold_2 = PatientSpread(
        threshold=0.5,
        false_alarm=fit_rate_spread(np.array([0, 2]), np.array([15, 20])),
        detection=fit_rate_spread(np.array([4]), np.array([5])),
        source="hand",
    )
    # at the configured level, 90%, written out by hand with the two between-patient variances
    expected_a = interval_by_hand(
        10,
        20,
        (4, 5),
        (33, 35),
        0.9,
        fold_2.detection.between_variance,
        fold_2.false_alarm.between_variance,
    )
    assert table.loc["A", ["fraction_low", "fraction_high"]].tolist() == pytest.approx(expected_a, abs=1e-12)
    assert table.loc["A", "fraction"] == pytest.approx((0.5 + 33 / 35 - 1) / (4 / 5 + 33 / 35 - 1))
    assert table.loc["A", "healthy_chance"] == pytest.approx(
        betabinom.sf(9, 20, fold_2.false_alarm.a, fold_2.false_alarm.b), rel=1e-9
    )
    assert table.loc["A", "labelled_fraction"] == 0.5 and table.loc["A", "fold"] == 1
    # each fold's rule is chosen on the other fold's patients
    assert set(table["negative_below"]) <= {0.05, 0.2}


def test_the_spread_between_patients_widens_the_interval_by_its_variance_by_hand():
    # The first hand-worked case (10 of 50 called, Se 90/100, Sp 95/100), with each rate varying between
    # patients: Var(Sp_patient) = 0.05 · 0.95 · 0.02 = 0.00095, Var(Se_patient) = 0.9 · 0.1 · 0.01 = 0.0009.
    spread = PatientSpread(
        threshold=0.5,
        false_alarm=RateSpread(mean=0.05, rho=0.02, patients=30, cells=3000, events=150),
        detection=RateSpread(mean=0.9, rho=0.01, patients=30, cells=3000, events=2700),
        source="hand",
    )
    z = 1.959963984540054
    se_, sp_, ap_ = 91 / 102, 96 / 102, (10 + z**2 / 2) / (50 + z**2)
    centre = (ap_ + sp_ - 1) / (se_ + sp_ - 1)
    shift = 2 * z**2 * (centre * se_ * (1 - se_) / 102 - (1 - centre) * sp_ * (1 - sp_) / 102)
    variance = (
        ap_ * (1 - ap_) / (50 + z**2)
        + centre**2 * (se_ * (1 - se_) / 102 + 0.0009)
        + (1 - centre) ** 2 * (sp_ * (1 - sp_) / 102 + 0.00095)
    )
    half = z * variance**0.5 / (se_ + sp_ - 1)
    fraction, low, high = corrected_fraction(10, 50, rates(90, 100, 95, 100), spread=spread)
    assert fraction == pytest.approx(0.176470588235294)
    assert (low, high) == pytest.approx((centre + shift - half, centre + shift + half), abs=1e-12)
    assert (low, high) == pytest.approx((0.0400, 0.3463), abs=1e-4)  # against 0.0522 to 0.3341 without
    no_spread = PatientSpread(
        threshold=0.5,
        false_alarm=RateSpread(mean=0.05, rho=0.0, patients=30, cells=3000, events=150),
        detection=RateSpread(mean=0.9, rho=0.0, patients=30, cells=3000, events=2700),
        source="hand",
    )
    assert corrected_fraction(10, 50, rates(90, 100, 95, 100), spread=no_spread) == pytest.approx(
        HAND_WORKED[0][1], abs=1e-12
    )


def test_with_the_spread_the_interval_covers_new_patients_whose_rates_vary():
    # A second, independent check: patients whose own specificity is drawn from Beta(mean 0.97, rho 0.03)
    # and sensitivity from Beta(mean 0.9, rho 0.02); the counting-only interval misses many of them.
    rng = np.random.default_rng(4)
    spread = PatientSpread(
        threshold=0.5,
        false_alarm=RateSpread(mean=0.03, rho=0.03, patients=100, cells=10_000, events=300),
        detection=RateSpread(mean=0.9, rho=0.02, patients=100, cells=10_000, events=9_000),
        source="simulated",
    )
    fa, det = spread.false_alarm, spread.detection
    covered, covered_without = 0, 0
    for _ in range(2000):
        truth, cells = rng.choice([0.0, 0.02, 0.1]), 300
        ref = rates(rng.binomial(5000, 0.9), 5000, rng.binomial(8000, 0.97), 8000)
        parasitized = rng.binomial(cells, truth)
        called = rng.binomial(parasitized, rng.beta(det.a, det.b)) + rng.binomial(
            cells - parasitized, rng.beta(fa.a, fa.b)
        )
        _, low, high = corrected_fraction(int(called), cells, ref, spread=spread)
        covered += low <= truth <= high
        _, low, high = corrected_fraction(int(called), cells, ref)
        covered_without += low <= truth <= high
    assert 0.93 <= covered / 2000 <= 0.995
    assert covered_without / 2000 < 0.85


def test_each_fold_is_called_by_the_rule_the_other_folds_choose_not_by_its_own():
    # Worked by hand (grid: healthy_below 0.01 or 0.001, negative_below 0.01 or 0.05; at most 25% review):
    # - folds 2 and 3 (Z, W, V, U) choose (0.01, 0.01): Z and V positive, nobody to review. Fold 1 is
    #   called by it, and its control X (a healthy chance of 0.005) is called positive. Chosen on fold 1
    #   itself, (0.001, 0.05) would have called X negative and looked flawless.
    # - folds 1 and 3, and folds 1 and 2, meet no rule; the fewest errors is (0.001, 0.01).
    table = _truth_table(
        [0.03, 0.5, 0.04, 0.0, 0.045, 0.0],
        [0.0] * 6,
        [0.0, 0.5, 0.06, 0.0, 0.07, 0.0],
        chances=[0.005, 1e-6, 0.003, 0.5, 0.002, 0.6],
    ).assign(fold=[1, 1, 2, 2, 3, 3], patient=["X", "Y", "Z", "W", "V", "U"])
    grid = ([0.01, 0.001], [0.01, 0.05], 0.05, 0.25, 50)
    called = call_out_of_fold(table, *grid)[0].set_index("patient")
    assert called.loc["X", ["healthy_below", "negative_below", "call"]].tolist() == [0.01, 0.01, "positive"]
    assert choose_call(table[table["fold"] == 1], *grid)[0] == PatientCall(
        healthy_below=0.001, negative_below=0.05
    )
    for patient in ("Z", "V"):
        assert called.loc[patient, ["healthy_below", "negative_below", "call"]].tolist() == [
            0.001,
            0.01,
            "review",
        ]
    assert called.loc["W", "call"] == "negative" and called.loc["Y", "call"] == "positive"


def _labelled(p, positive):
    return pd.DataFrame(
        {
            "label": np.where(positive, "Parasitized", "Uninfected"),
            "p_parasitized": p,
            "operating_threshold": 0.3,
        }
    )


def test_a_counting_threshold_of_a_specificity_is_read_on_the_reference_cells_only():
    # Reference: 10 uninfected cells at 0.05, 0.15, ..., 0.95 and 10 parasitized, 5 at 0.91 and 5 at 0.99.
    # Specificity 0.9 on them allows one false alarm of ten: at 0.91 (the 0.95 cell) all ten parasitized
    # cells are found, the most any threshold of that specificity finds. The judged cells, all uninfected
    # at 0.5, would give another threshold if they were read.
    reference = _labelled(
        np.r_[np.arange(10) / 10 + 0.05, np.full(5, 0.91), np.full(5, 0.99)], np.r_[np.zeros(10), np.ones(10)]
    )
    judged = _labelled(np.full(5, 0.5), np.zeros(5))
    at_reference, at_judged = count_thresholds(
        {"specificity": 0.9}, reference, judged, "p_parasitized", "Parasitized"
    )
    assert at_reference == pytest.approx(np.full(20, 0.91)) and at_judged == pytest.approx(np.full(5, 0.91))
    assert count_thresholds(0.5, reference, judged, "p_parasitized", "Parasitized")[1].tolist() == [0.5] * 5
    operating = count_thresholds("operating", reference, judged, "p_parasitized", "Parasitized")
    assert operating[0].tolist() == [0.3] * 20 and operating[1].tolist() == [0.3] * 5
    with pytest.raises(ValueError, match="patients.count_at is 'best': give a probability"):
        count_thresholds("best", reference, judged, "p_parasitized", "Parasitized")
    with pytest.raises(ValueError, match="some folds have no operating threshold"):
        count_thresholds(
            "operating", reference.assign(operating_threshold=np.nan), judged, "p_parasitized", "Parasitized"
        )


def test_a_model_keeps_its_counting_threshold_spread_and_rule_and_an_older_model_gets_the_parameters(caplog):
    reference = ReferenceCells(
        thresholds=[0.9, 0.1],
        found=[90, 100],
        false_alarms=[5, 100],
        positives=100,
        negatives=100,
        source="hand",
    )
    spread = PatientSpread(
        threshold=0.9,
        false_alarm=RateSpread(mean=0.05, rho=0.02, patients=30, cells=3000, events=150),
        detection=RateSpread(mean=0.9, rho=0.01, patients=30, cells=3000, events=2700),
        source="hand",
    )
    rule = {"healthy_below": 0.001, "negative_below": 0.02, "min_cells": 50}
    bundle = {
        "reference_cells": reference.as_dict(),
        "count_threshold": 0.9,
        "patient_spread": spread.as_dict(),
        "patient_call": rule,
    }
    default = {"healthy_below": 0.01, "negative_below": 0.05, "min_cells": 50}
    settings = model_patient_settings(bundle, 0.5, default)
    assert (settings.threshold, settings.spread, settings.rule) == (0.9, spread, PatientCall(**rule))
    assert (settings.rates.found, settings.rates.passed) == (90, 95)
    older = model_patient_settings(
        {
            "reference_cells": reference.as_dict(),
            "patient_call": {"positive_above": 0.0, "negative_below": 0.01},
        },
        0.5,
        default,
    )
    assert (older.threshold, older.spread, older.rule) == (0.5, None, PatientCall(**default))
    mismatched = model_patient_settings({**bundle, "count_threshold": 0.5}, 0.5, default)
    assert mismatched.spread is None and "fitted at threshold 0.9, not 0.5" in caplog.text


def test_a_healthy_smear_called_positive_counts_as_an_error_of_the_rule():
    # Without smears, a workload of no review chooses (0.01, 0.05). A healthy smear of 1,000 cells whose
    # count a healthy patient reaches with chance 0.005 is positive under healthy_below 0.01: every rule
    # then errs once or reviews; of the rules of no error, the lowest negative_below is (0.001, 0.01).
    table = _truth_table(
        CHOOSING["fractions"], CHOOSING["lows"], CHOOSING["labelled"], chances=CHOOSING["chances"]
    )
    grid = ([0.01, 0.001], [0.01, 0.02, 0.05], 0.05, 0.0)
    assert (choose_call(table, *grid)[0].healthy_below, choose_call(table, *grid)[0].negative_below) == (
        0.01,
        0.05,
    )
    smears = pd.DataFrame(
        {
            "parasitemia": [0.0, 0.0, 0.05],
            "cells": 1000,
            "fraction": [0.03, 0.0, 0.05],
            "healthy_chance": [0.005, 0.5, 1e-9],
        }
    )
    rule, metrics = choose_call(table, *grid, smears=smears)
    assert (rule.healthy_below, rule.negative_below) == (0.001, 0.01) and not metrics["meets"]
    assert metrics["healthy_smears_positive"] == 0
    assert choose_call(table, [0.01], [0.05], 0.05, 0.0, smears=smears)[1]["healthy_smears_positive"] == 1


def test_a_cell_at_the_counting_threshold_exactly_is_counted_parasitized():
    # 0.5 and 0.25 are exact in binary: the cell at 0.5 is counted (P >= threshold), in the patient's count
    # and among the reference cells alike
    predictions = pd.DataFrame(
        {
            "patient_id": "P",
            "label": ["Parasitized", "Uninfected", "Uninfected"],
            "p_parasitized": [0.5, 0.25, 0.5],
        }
    )
    table = judge_patients(
        predictions,
        positive="Parasitized",
        threshold=0.5,
        rates=rates(90, 100, 95, 100),
        rule=PatientCall(healthy_below=0.001, negative_below=0.02, min_cells=1),
        level=0.95,
    )
    assert table.loc[0, "parasitized"] == 2
    reference = ReferenceCells.of(np.array([True, False, False]), np.array([0.5, 0.25, 0.5]), "hand").at(0.5)
    assert (reference.found, reference.passed) == (1, 1)


def test_an_infected_patient_labelled_at_min_fraction_exactly_and_called_negative_is_a_miss():
    # 5 of 100 cells labelled parasitized: 5 / 100 is the same double as 0.05, so the patient is held to
    # the rule; 4 of 100 is below it
    table = _truth_table([0.01, 0.01], [0.0, 0.0], [5 / 100, 4 / 100], calls=["negative", "negative"])
    assert patient_metrics(table, min_fraction=0.05)["missed_from_min_fraction"] == 1


def test_a_model_stores_its_counting_threshold_resolved_on_its_reference_cells_and_the_spread_there():
    # Reference cells of two patients: at specificity 0.9 the threshold is 0.91 (as in the test above),
    # where P1's uninfected cells show 1 false alarm of 5 and P2's none of 5; parasitized 5 and 5 found.
    reference = _labelled(
        np.r_[np.arange(10) / 10 + 0.05, np.full(5, 0.91), np.full(5, 0.99)], np.r_[np.zeros(10), np.ones(10)]
    ).assign(patient_id=["P1"] * 5 + ["P2"] * 5 + ["P1"] * 5 + ["P2"] * 5)
    saved = fit_patient_settings(
        reference, positive="Parasitized", count_at={"specificity": 0.9}, quantifier="ACC", source="hand"
    )
    assert saved["count_threshold"] == 0.91 and saved["quantifier"] == "ACC"
    # the reference cells' counts: at 0.91 every parasitized cell found, one uninfected (0.95) of 10 an alarm
    rates = ReferenceCells.from_dict(saved["reference_cells"]).at(0.91)
    assert (rates.sensitivity, rates.specificity, rates.source) == (1.0, 0.9, "hand")
    spread = PatientSpread.from_dict(saved["patient_spread"])
    assert spread.false_alarm == fit_rate_spread(np.array([0, 1]), np.array([5, 5]))
    assert spread.detection == fit_rate_spread(np.array([5, 5]), np.array([5, 5]))
    with pytest.raises(ValueError, match="patients.quantifier is 'EMQ': the patient table uses ACC"):
        fit_patient_settings(reference, positive="Parasitized", count_at=0.5, quantifier="EMQ", source="hand")


def test_each_folds_smears_are_called_by_the_rule_the_other_folds_patients_and_smears_choose():
    # Each fold: A, infected (20%), whose count a healthy patient reaches with chance 0.003, and B, a
    # control. At most 25% to review: healthy_below 0.001 sends A to review (half of them), 0.01 calls A
    # positive. Fold 1's healthy smear reaches a chance of 0.005: positive under 0.01.
    # - folds 2 and 3 choose with fold 1's smear: 0.01 errs on it, so 0.001 (no error, over the workload);
    # - fold 1 chooses with the other folds' smears only: 0.01, which calls its own smear positive.
    table = _truth_table([0.2, 0.0] * 3, [0.1, 0.0] * 3, [0.2, 0.0] * 3, chances=[0.003, 0.5] * 3).assign(
        fold=[1, 1, 2, 2, 3, 3]
    )
    smears = pd.DataFrame(
        {
            "fold": [1, 2, 3],
            "parasitemia": 0.0,
            "cells": 1000,
            "fraction": 0.0,
            "healthy_chance": [0.005, 0.5, 0.5],
        }
    )
    called, judged = call_out_of_fold(table, [0.01, 0.001], [0.01], 0.05, 0.25, 50, smears=smears)
    assert called.groupby("fold")["healthy_below"].first().tolist() == [0.01, 0.001, 0.001]
    assert judged["call"].tolist() == ["positive", "negative", "negative"]
    assert judged["healthy_below"].tolist() == [0.01, 0.001, 0.001]


# Fold 1: A (10 parasitized, 9 called; 20 uninfected, 1 alarm) and control B (20, none). Fold 2: C (5
# parasitized, 4 called; 20 uninfected, none) and control D (20, 2 alarms).
TWO_FOLDS = pd.concat(
    [
        _fold_cells("A", 1, 10, 9, 20, 1),
        _fold_cells("B", 1, 0, 0, 20, 0),
        _fold_cells("C", 2, 5, 4, 20, 0),
        _fold_cells("D", 2, 0, 0, 20, 2),
    ],
    ignore_index=True,
)
SMEARS = {"cells": 40, "parasitemia": [0.0, 0.1], "smears": 6, "seed": 0}


def _two_folds(**changes):
    args = {
        "positive": "Parasitized",
        "count_at": 0.5,
        "level": 0.9,
        "choose_from": {"healthy_below": [0.001], "negative_below": [0.05, 0.2]},
        "min_fraction": 0.05,
        "max_review": 1.0,
        "min_cells": 10,
        "detection": SMEARS,
    }
    return cross_validated_patients(TWO_FOLDS, **{**args, **changes})


def test_out_of_fold_smears_are_judged_with_the_other_folds_spread_at_the_configured_level():
    _, smears = _two_folds()
    # fold 1's smears take fold 2's rates (Se 4/5, Sp 38/40) and the spread between fold 2's patients
    false_alarm = fit_rate_spread(np.array([0, 2]), np.array([20, 20]))
    detection = fit_rate_spread(np.array([4]), np.array([5]))
    fold_1 = smears[smears["fold"] == 1]
    assert len(fold_1) == 12 and (fold_1["cells"] == 40).all()
    for smear in fold_1.itertuples():
        low, high = interval_by_hand(
            smear.called, 40, (4, 5), (38, 40), 0.9, detection.between_variance, false_alarm.between_variance
        )
        assert (smear.fraction_low, smear.fraction_high) == pytest.approx((low, high), abs=1e-12)
        assert smear.healthy_chance == pytest.approx(
            betabinom.sf(smear.called - 1, 40, false_alarm.a, false_alarm.b), rel=1e-9
        )


def test_out_of_fold_patients_and_smears_are_called_with_the_configured_min_cells():
    table, smears = _two_folds()
    # every patient has 20 to 30 cells and every smear 40, all at least min_cells 10: A's 10 called of 30
    # is no healthy patient's count, a positive; control B's none of 20 a fraction of 0, negative
    calls = table.set_index("patient")["call"]
    assert (calls["A"], calls["B"]) == ("positive", "negative")
    assert (smears["call"] != "review").any()
    # at min_cells 50, every patient and smear has too few cells: review
    table, smears = _two_folds(min_cells=50)
    assert (table["call"] == "review").all() and (smears["call"] == "review").all()


def test_the_chosen_rule_keeps_min_cells_and_its_review_share_counts_it():
    # four patients of 20 cells, each decided by any rule of the grid were it not for min_cells
    # (healthy_below 0.001, negative_below 0.02): P0 and P3 positive, P1 and P2 negative
    table = _truth_table(
        [0.3, 0.0, 0.0, 0.25], [0.2, 0.0, 0.0, 0.2], [0.3, 0.0, 0.0, 0.25], chances=[1e-6, 0.9, 0.8, 1e-5]
    ).assign(cells=20)
    rule, metrics = choose_call(table, [0.001], [0.02], min_fraction=0.05, max_review=1.0, min_cells=10)
    assert rule.min_cells == 10 and metrics["review_share"] == 0.0
    rule, metrics = choose_call(table, [0.001], [0.02], min_fraction=0.05, max_review=1.0, min_cells=25)
    assert rule.min_cells == 25 and metrics["review_share"] == 1.0


def test_a_labelled_fraction_on_the_intervals_lower_bound_is_covered():
    # a control with no cell called: fraction 0, its interval clipped to start at 0, and 0 labelled
    cells = _fold_cells("B", 1, 0, 0, 40, 0)
    rates = CellRates(threshold=0.5, positives=100, found=90, negatives=100, passed=95, source="hand")
    (row,) = judge_patients(
        cells,
        positive="Parasitized",
        threshold=0.5,
        rates=rates,
        rule=PatientCall(healthy_below=0.001, negative_below=0.02),
        level=0.95,
    ).to_dict(orient="records")
    assert row["fraction_low"] == 0.0 == row["labelled_fraction"] and row["covered"]


def test_healthy_range_controls_reaches_the_out_of_fold_and_the_stored_spreads():
    # fold 1 is judged against fold 2's controls alone: D, 2 alarms in 20 (not C's 20 uninfected cells too)
    table, _ = _two_folds(healthy_range="controls")
    d_alone = fit_rate_spread(np.array([2]), np.array([20]))
    a = table.set_index("patient").loc["A"]
    assert a["healthy_chance"] == pytest.approx(betabinom.sf(9, 30, d_alone.a, d_alone.b), rel=1e-9)
    # a training run stores the spread of its reference cells' controls: B and D, 40 cells, 2 alarms
    stored = fit_patient_settings(
        TWO_FOLDS,
        positive="Parasitized",
        count_at=0.5,
        quantifier="ACC",
        source="hand",
        healthy_range="controls",
    )["patient_spread"]["false_alarm"]
    assert (stored["patients"], stored["cells"], stored["events"]) == (2, 40, 2)
