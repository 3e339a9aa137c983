import numpy as np
import pandas as pd
import pytest

from malaria_pipeline.assess.metrics import (
    classification_metrics,
    mean_and_std,
    operating_points,
    patient_bootstrap_intervals,
    per_patient,
    sensitivity_at_specificity,
    sensitivity_specificity,
)

# 10 parasitized cells (2 missed) and 10 uninfected (1 false alarm), worked out by hand.
TRUTH = np.array([True] * 10 + [False] * 10)
P = np.array([0.9] * 8 + [0.2, 0.4] + [0.1] * 9 + [0.7])


def test_metrics_match_the_counts():
    m = classification_metrics(TRUTH, P)
    assert (m["true_positives"], m["false_negatives"], m["false_positives"], m["true_negatives"]) == (
        8,
        2,
        1,
        9,
    )
    assert m["accuracy"] == pytest.approx(17 / 20)
    assert m["sensitivity"] == pytest.approx(0.8) and m["specificity"] == pytest.approx(0.9)
    assert m["precision"] == pytest.approx(8 / 9) and m["f1"] == pytest.approx(
        2 * (8 / 9) * 0.8 / (8 / 9 + 0.8)
    )
    assert m["false_negative_rate"] == pytest.approx(0.2) and m["false_positive_rate"] == pytest.approx(0.1)
    assert 0.5 < m["roc_auc"] <= 1 and 0.5 < m["average_precision"] <= 1


def test_errors_are_phrased_like_the_reference():
    m = classification_metrics(TRUTH, P)
    assert m["false_negatives_phrase"] == "2 of 10 parasitized cells (20.00%) were classified as uninfected"
    assert m["false_positives_phrase"] == "1 of 10 uninfected cells (10.00%) were classified as parasitized"


def test_one_class_only_leaves_roc_auc_undefined_instead_of_failing():
    m = classification_metrics(np.array([False] * 4), np.array([0.1, 0.2, 0.7, 0.3]))
    assert m["roc_auc"] is None and m["average_precision"] is None and m["false_negative_rate"] is None
    assert m["specificity"] == pytest.approx(0.75)


def test_lower_thresholds_trade_specificity_for_sensitivity():
    points = operating_points(TRUTH, P, [0.15, 0.5, 0.8])
    assert [p["sensitivity"] for p in points] == pytest.approx([1.0, 0.8, 0.8])
    assert [p["specificity"] for p in points] == pytest.approx([0.9, 0.9, 1.0])


def test_per_patient_lists_the_worst_patients_first():
    predictions = pd.DataFrame(
        {
            "patient_id": ["A"] * 4 + ["B"] * 2,
            "label": ["Parasitized", "Parasitized", "Uninfected", "Uninfected", "Parasitized", "Uninfected"],
            "p_parasitized": [0.9, 0.2, 0.1, 0.6, 0.8, 0.3],
        }
    )
    rows = per_patient(predictions)
    assert [r["patient_id"] for r in rows] == ["A", "B"]
    assert rows[0] == {"patient_id": "A", "images": 4, "parasitized": 2, "errors": 2, "accuracy": 0.5}


# Three parasitized cells and three uninfected, one parasitized score exactly on the threshold (0.5).
# At 0.5: 0.9 and 0.5 are found, 0.3 is missed; 0.6 is a false alarm, 0.2 and 0.1 are passed.
EDGE_TRUTH = np.array([True, True, True, False, False, False])
EDGE_P = np.array([0.9, 0.5, 0.3, 0.6, 0.2, 0.1])


def concordant_share(truth: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by its definition: the share of (positive, negative) pairs in which the positive scores
    higher, a tie counting half."""
    positives, negatives = scores[truth], scores[~truth]
    pairs = [(p > n) + 0.5 * (p == n) for p in positives for n in negatives]
    return sum(pairs) / len(pairs)


def test_a_score_on_the_threshold_is_positive_and_each_metric_is_the_one_worked_out_by_hand():
    m = classification_metrics(EDGE_TRUTH, EDGE_P, threshold=0.5)
    assert (m["true_positives"], m["false_negatives"], m["false_positives"], m["true_negatives"]) == (
        2,
        1,
        1,
        2,
    )
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["sensitivity"] == pytest.approx(2 / 3) and m["specificity"] == pytest.approx(2 / 3)
    assert m["precision"] == pytest.approx(2 / 3)  # 2 of the 3 cells called parasitized
    assert m["f1"] == pytest.approx(2 / 3)
    # Matthews: (TP·TN - FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (4 - 1) / sqrt(3·3·3·3) = 1/3
    assert m["mcc"] == pytest.approx(1 / 3)
    # from the scores, not the labels: 0.9 beats 3 uninfected, 0.5 beats 2, 0.3 beats 2 (from the labels: 6/9)
    assert concordant_share(EDGE_TRUTH, EDGE_P) == pytest.approx(7 / 9)
    assert m["roc_auc"] == pytest.approx(7 / 9)
    # ranked by score: P N P P N N; precision at each parasitized cell 1/1, 2/3, 3/4
    assert m["average_precision"] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    assert m["false_negatives_phrase"] == "1 of 3 parasitized cells (33.33%) were classified as uninfected"


def test_an_uninfected_score_on_the_threshold_is_a_false_alarm():
    truth = np.array([True, True, False, False])
    p = np.array([0.8, 0.7, 0.5, 0.1])
    m = classification_metrics(truth, p, threshold=0.5)
    assert (m["true_positives"], m["false_negatives"], m["false_positives"], m["true_negatives"]) == (
        2,
        0,
        1,
        1,
    )
    assert m["specificity"] == pytest.approx(1 / 2) and m["precision"] == pytest.approx(2 / 3)
    assert m["roc_auc"] == pytest.approx(concordant_share(truth, p)) == pytest.approx(1.0)
    assert m["average_precision"] == pytest.approx(1.0)


def test_roc_auc_counts_a_tied_pair_as_half():
    truth = np.array([True, True, False, False])
    p = np.array([0.7, 0.4, 0.4, 0.2])
    assert concordant_share(truth, p) == pytest.approx(3.5 / 4)
    assert classification_metrics(truth, p)["roc_auc"] == pytest.approx(3.5 / 4)


def test_an_operating_point_on_a_score_counts_that_score_as_positive():
    # the false alarm scores 0.7 exactly: at 0.7 it is still called parasitized
    points = operating_points(TRUTH, P, [0.7, 0.70001])
    assert [p["specificity"] for p in points] == pytest.approx([0.9, 1.0])
    assert [p["sensitivity"] for p in points] == pytest.approx([0.8, 0.8])


# Mutants found by mutmut (docs/mutation-testing.md)


def test_a_probability_at_the_threshold_is_called_positive_everywhere():
    truth = np.array([True, False, True, False])
    p = np.array([0.5, 0.5, 0.2, 0.2])  # both 0.5 are called positive: one hit, one false alarm
    m = classification_metrics(truth, p, threshold=0.5)
    assert (m["true_positives"], m["false_negatives"], m["false_positives"], m["true_negatives"]) == (
        1,
        1,
        1,
        1,
    )
    assert operating_points(truth, p, [0.5]) == [{"threshold": 0.5, "sensitivity": 0.5, "specificity": 0.5}]
    predictions = pd.DataFrame(
        {"patient_id": ["A", "A"], "label": ["Parasitized"] * 2, "p_parasitized": [0.5, 0.5]}
    )
    assert per_patient(predictions, threshold=0.5)[0]["errors"] == 0  # both parasitized cells found at 0.5


def test_labels_given_as_zeros_and_ones_count_as_booleans():
    truth = TRUTH.astype(int)
    assert classification_metrics(truth, P) == classification_metrics(TRUTH, P)
    assert operating_points(truth, P, [0.5]) == [{"threshold": 0.5, "sensitivity": 0.8, "specificity": 0.9}]


def test_the_report_names_its_size_and_threshold():
    m = classification_metrics(TRUTH, P, threshold=0.3)
    assert m["images"] == 20 and m["threshold"] == 0.3
    assert [p["threshold"] for p in operating_points(TRUTH, P, [0.15, 0.8])] == [0.15, 0.8]


def test_uninfected_cells_all_passed_have_every_count_and_no_warning():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no UndefinedMetricWarning for the ratios that have no positive
        m = classification_metrics(np.array([False] * 4), np.array([0.1, 0.2, 0.3, 0.4]))
        points = operating_points(np.array([False] * 4), np.array([0.1, 0.2, 0.3, 0.4]), [0.5])
    assert (m["true_positives"], m["false_negatives"], m["false_positives"], m["true_negatives"]) == (
        0,
        0,
        0,
        4,
    )
    # no parasitized cell: the sensitivity is missing, not 0 (a fold without a class must not pull a mean down)
    assert m["sensitivity"] is None and m["precision"] == 0.0 and m["f1"] == 0.0 and m["specificity"] == 1.0
    assert m["false_positive_rate"] == 0.0 and m["false_negative_rate"] is None
    assert m["false_negatives_phrase"] == "0 of 0 parasitized cells were classified as uninfected"
    assert points == [{"threshold": 0.5, "sensitivity": None, "specificity": 1.0}]


def test_parasitized_cells_only_leave_specificity_and_roc_auc_undefined_without_warning():
    import warnings

    truth, p = np.array([True] * 4), np.array([0.9, 0.8, 0.3, 0.6])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = classification_metrics(truth, p)
        points = operating_points(truth, p, [0.5])
    assert (
        m["roc_auc"] is None and m["average_precision"] == 1.0
    )  # every cell is positive: precision 1 at any cut
    assert m["specificity"] is None and m["false_positive_rate"] is None and m["false_negative_rate"] == 0.25
    assert m["false_positives_phrase"] == "0 of 0 uninfected cells were classified as parasitized"
    assert points == [{"threshold": 0.5, "sensitivity": 0.75, "specificity": None}]


def test_error_rates_when_errors_and_hits_are_as_many():
    # 2 parasitized cells, 1 found and 1 missed; 2 uninfected, 1 passed and 1 false alarm
    m = classification_metrics(np.array([True, True, False, False]), np.array([0.9, 0.1, 0.9, 0.1]))
    assert m["false_negative_rate"] == 0.5 and m["false_positive_rate"] == 0.5


def test_per_patient_counts_errors_and_ranks_ties_by_size_then_patient_id():
    predictions = pd.DataFrame(
        {
            "patient_id": ["D", "C", "C", "C", "C", "B", "B", "A", "A", "A", "A"],
            "label": ["Parasitized"] * 5 + ["Uninfected"] * 6,
            "p_parasitized": [0.9, 0.9, 0.9, 0.9, 0.1, 0.2, 0.8, 0.1, 0.1, 0.9, 0.6],
        }
    )
    rows = per_patient(predictions)
    # by hand: A 2 errors of 4, B 1 of 2 (accuracy 0.5 both: the larger first), C 1 of 4, D none of 1
    assert [(r["patient_id"], r["images"], r["parasitized"], r["errors"], r["accuracy"]) for r in rows] == [
        ("A", 4, 0, 2, 0.5),
        ("B", 2, 0, 1, 0.5),
        ("C", 4, 4, 1, 0.75),
        ("D", 1, 1, 0, 1.0),
    ]
    ties = pd.DataFrame(
        {"patient_id": ["Z", "Y", "X"], "label": ["Uninfected"] * 3, "p_parasitized": [0.1] * 3}
    )
    assert [r["patient_id"] for r in per_patient(ties)] == ["X", "Y", "Z"]


def test_mean_and_std_over_folds_use_the_sample_std_and_skip_undefined_folds():
    from malaria_pipeline.assess.metrics import mean_and_std

    rows = [
        {"accuracy": 0.90, "roc_auc": 0.99},
        {"accuracy": 0.94, "roc_auc": None},
        {"accuracy": 0.98, "roc_auc": 0.97},
    ]
    summary = mean_and_std(rows, ("accuracy", "roc_auc"))
    # accuracy: mean 0.94, deviations ±0.04 and 0: sqrt((0.0016 + 0 + 0.0016) / 2) = 0.04
    assert summary["accuracy"] == {"mean": pytest.approx(0.94), "std": pytest.approx(0.04), "folds": 3}
    assert summary["roc_auc"] == {
        "mean": pytest.approx(0.98),
        "std": pytest.approx(0.02**0.5 * 0.1),
        "folds": 2,
    }


# Operating threshold for a target sensitivity, worked out by hand. Scores of 5 parasitized and 5 uninfected
# cells; a score at or above the threshold is called parasitized.
POSITIVE_SCORES = [0.95, 0.85, 0.7, 0.55, 0.3]
NEGATIVE_SCORES = [0.9, 0.6, 0.5, 0.2, 0.1]


@pytest.mark.parametrize(
    ("target", "threshold", "sensitivity", "specificity"),
    [
        (0.8, 0.55, 0.8, 0.6),  # 4 of 5 found at 0.55, where 0.9 and 0.6 are false alarms; 0.5 would add one
        (0.75, 0.55, 0.8, 0.6),  # the first threshold that reaches at least the target
        (0.2, 0.95, 0.2, 1.0),  # the top score alone, before the first false alarm
        (1.0, 0.3, 1.0, 0.4),  # every parasitized cell: 0.9, 0.6 and 0.5 are then false alarms
    ],
)
def test_the_operating_threshold_is_the_one_worked_out_by_hand(target, threshold, sensitivity, specificity):
    from malaria_pipeline.assess.metrics import threshold_for_sensitivity

    truth = np.array([True] * 5 + [False] * 5)
    point = threshold_for_sensitivity(truth, np.array(POSITIVE_SCORES + NEGATIVE_SCORES), target)
    assert point == {
        "threshold": pytest.approx(threshold),
        "sensitivity": pytest.approx(sensitivity),
        "specificity": pytest.approx(specificity),
    }


def test_among_thresholds_of_the_same_specificity_the_most_sensitive_is_chosen():
    from malaria_pipeline.assess.metrics import threshold_for_sensitivity

    # 0.52 finds the fifth parasitized cell without a new false alarm: same specificity, more sensitive
    truth = np.array([True] * 5 + [False] * 5)
    scores = np.array([0.95, 0.85, 0.7, 0.55, 0.52] + NEGATIVE_SCORES)
    assert threshold_for_sensitivity(truth, scores, 0.8) == {
        "threshold": pytest.approx(0.52),
        "sensitivity": 1.0,
        "specificity": pytest.approx(0.6),
    }


def test_the_operating_threshold_agrees_with_a_brute_force_search_over_every_score():
    from malaria_pipeline.assess.metrics import threshold_for_sensitivity

    rng = np.random.default_rng(5)
    truth = rng.random(300) < 0.4
    scores = np.round(np.clip(rng.normal(0.3 + 0.4 * truth, 0.2), 0, 1), 2)  # rounded: ties of scores
    for target in (0.5, 0.9, 0.97, 1.0):
        best = None
        for t in np.unique(scores):
            sens, spec = (scores[truth] >= t).mean(), (scores[~truth] < t).mean()
            if sens >= target and (best is None or (spec, sens) > (best[2], best[1])):
                best = (t, sens, spec)
        point = threshold_for_sensitivity(truth, scores, target)
        assert (point["threshold"], point["sensitivity"], point["specificity"]) == pytest.approx(best), target


def test_an_operating_threshold_needs_both_classes_and_a_target_in_range():
    from malaria_pipeline.assess.metrics import threshold_for_sensitivity

    with pytest.raises(ValueError, match="both classes"):
        threshold_for_sensitivity(np.array([True, True]), np.array([0.2, 0.8]), 0.9)
    with pytest.raises(
        ValueError, match=r"evaluation.target_sensitivity is 1.5: give a sensitivity in \(0, 1\]"
    ):
        threshold_for_sensitivity(np.array([True, False]), np.array([0.2, 0.8]), 1.5)


def _ece_by_hand(confidence, correct, bins=15):
    """ECE as Guo et al. (2017) define it, written out: bins ((m-1)/M, m/M], |B_m|/n · |acc(B_m) − conf(B_m)|."""
    n, total = len(confidence), 0.0
    for m in range(1, bins + 1):
        low, high = (m - 1) / bins, m / bins
        members = [i for i in range(n) if (low < confidence[i] <= high) or (m == 1 and confidence[i] == 0)]
        if members:
            accuracy = sum(correct[i] for i in members) / len(members)
            mean_confidence = sum(confidence[i] for i in members) / len(members)
            total += len(members) / n * abs(accuracy - mean_confidence)
    return total


def test_ece_of_a_small_case_is_the_one_worked_out_by_hand():
    from malaria_pipeline.assess.metrics import calibration_bins, expected_calibration_error

    # bin (8/15, 9/15]: 0.55 right, 0.58 wrong: |0.5 - 0.565| · 2/5; bin (14/15, 1]: 0.95, 0.97 right, 1.0 wrong:
    # |2/3 - 2.92/3| · 3/5. ECE = 0.026 + 0.184.
    confidence, correct = [0.55, 0.58, 0.95, 0.97, 1.0], [True, False, True, True, False]
    assert expected_calibration_error(confidence, correct) == pytest.approx(0.21)
    rows = calibration_bins(confidence, correct)
    assert len(rows) == 15 and [r["images"] for r in rows] == [0] * 8 + [2] + [0] * 5 + [3]
    assert rows[8]["accuracy"] == 0.5 and rows[14]["confidence"] == pytest.approx(2.92 / 3)
    assert expected_calibration_error([], []) is None


def test_ece_agrees_with_the_definition_written_out_on_random_predictions():
    from malaria_pipeline.assess.metrics import expected_calibration_error

    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.5, 1.0, 500)
    correct = rng.random(500) < confidence**2  # overconfident
    for bins in (15, 10):
        assert expected_calibration_error(confidence, correct, bins) == pytest.approx(
            _ece_by_hand(confidence.tolist(), correct.tolist(), bins)
        )


def test_binary_confidence_is_the_probability_of_the_predicted_class():
    from malaria_pipeline.assess.metrics import binary_confidence

    confidence, correct = binary_confidence(np.array([False, False, True]), np.array([0.2, 0.7, 0.5]))
    assert confidence.tolist() == pytest.approx([0.8, 0.7, 0.5]) and correct.tolist() == [True, False, True]


def test_ece_puts_a_confidence_on_a_bin_edge_in_the_bin_below_it():
    from malaria_pipeline.assess.metrics import expected_calibration_error

    # bins ((m-1)/15, m/15]: 9/15 = 0.6 closes the bin (8/15, 0.6], and 0.62 is in the next: each alone,
    # (|1 - 0.6| + |0 - 0.62|) / 2; in one bin they would give |0.5 - 0.61|
    assert expected_calibration_error([9 / 15, 0.62], [True, False]) == pytest.approx(0.51)
    assert expected_calibration_error([9 / 15, 0.62], [True, False]) == pytest.approx(
        _ece_by_hand([0.6, 0.62], [1, 0])
    )


def test_patient_bootstrap_intervals_resample_whole_patients():
    # Patient A: every cell right; patient B: its 5 uninfected cells called parasitized. Resampling the two
    # patients gives AA, AB, BA or BB: accuracy 1, 0.75 or 0.5 and specificity 1, 0.5 or 0, each pair
    # drawn with probability 1/4, 1/2, 1/4: the 95% interval spans the extremes. Resampling cells would
    # give a narrow interval around 0.75.
    a = pd.DataFrame(
        {
            "patient_id": "A",
            "label": ["Parasitized"] * 5 + ["Uninfected"] * 5,
            "p_parasitized": [0.9] * 5 + [0.1] * 5,
        }
    )
    b = a.assign(patient_id="B", p_parasitized=[0.9] * 5 + [0.6] * 5)
    intervals = patient_bootstrap_intervals(pd.concat([a, b]), resamples=2000, seed=1)
    assert intervals == {
        "accuracy": [0.5, 1.0],
        "sensitivity": [1.0, 1.0],
        "specificity": [0.0, 1.0],
        "roc_auc": [1.0, 1.0],
    }
    assert patient_bootstrap_intervals(a) == dict.fromkeys(
        ("accuracy", "sensitivity", "specificity", "roc_auc")
    )


def test_sensitivity_and_specificity_at_one_threshold_or_one_per_cell_are_the_counts_worked_out_by_hand():
    # TRUTH and P above: at 0.5, 8 of 10 parasitized cells found, 9 of 10 uninfected passed.
    assert sensitivity_specificity(TRUTH, P, 0.5) == (0.8, 0.9)
    # One threshold per cell, as cross-validation pools folds of different operating thresholds: the first
    # five parasitized cells (0.9) meet 0.95 and are missed, the uninfected 0.7 meets 0.6 and stays a false alarm.
    per_cell = np.array([0.95] * 5 + [0.5] * 5 + [0.5] * 9 + [0.6])
    assert sensitivity_specificity(TRUTH, P, per_cell) == (3 / 10, 9 / 10)


def test_a_fold_without_a_class_leaves_that_rate_missing_and_out_of_the_mean():
    # Fold 2 holds no parasitized cell: its sensitivity is missing, and the mean is fold 1's and 3's alone.
    folds = [
        (
            np.array([True, True, False, False]),
            np.array([0.9, 0.2, 0.1, 0.1]),
        ),  # sensitivity 1/2, specificity 1
        (np.array([False, False, False]), np.array([0.1, 0.6, 0.2])),  # sensitivity missing, specificity 2/3
        (np.array([True, False]), np.array([0.8, 0.9])),  # sensitivity 1, specificity 0
    ]
    rows = [dict(zip(("sensitivity", "specificity"), sensitivity_specificity(t, p, 0.5))) for t, p in folds]
    assert [r["sensitivity"] for r in rows] == [0.5, None, 1.0]
    summary = mean_and_std(rows, ("sensitivity", "specificity"))
    assert summary["sensitivity"] == {
        "mean": 0.75,
        "std": pytest.approx(np.std([0.5, 1.0], ddof=1)),
        "folds": 2,
    }
    assert (
        summary["specificity"]["mean"] == pytest.approx((1 + 2 / 3 + 0) / 3)
        and summary["specificity"]["folds"] == 3
    )


def test_sensitivity_at_a_specificity_is_the_point_worked_out_by_hand():
    # 1,000 uninfected cells with scores 0.000, 0.001, ..., 0.999 and 10 parasitized ones at 0.9955,
    # 0.9985, 0.9975, 0.9965, 0.95, 0.85, 0.75, 0.65, 0.55, 0.45.
    healthy = np.arange(1000) / 1000
    sick = np.array([0.9955, 0.9985, 0.9975, 0.9965, 0.95, 0.85, 0.75, 0.65, 0.55, 0.45])
    truth = np.r_[np.zeros(1000, bool), np.ones(10, bool)]
    p = np.r_[healthy, sick]
    # Specificity 0.999 allows 1 false alarm: at the threshold 0.9985 only the healthy 0.999 is above it,
    # and the sick 0.9985 is found; at 0.998 the false alarms are 2.
    at = sensitivity_at_specificity(truth, p, 0.999)
    assert at == {"target_specificity": 0.999, "threshold": 0.9985, "sensitivity": 0.1, "specificity": 0.999}
    # 0.995 allows 5 (the healthy 0.995 ... 0.999): 4 sick cells are found (0.9955 ... 0.9985) at 0.9955,
    # with 4 false alarms (0.996 ... 0.999), and at 0.995 with 5: the fewer wins.
    at = sensitivity_at_specificity(truth, p, 0.995)
    assert (
        at["threshold"] == 0.9955 and at["sensitivity"] == 0.4 and at["specificity"] == pytest.approx(0.996)
    )
    # 0.99 allows 10: the next sick cell (0.95) would bring 49 healthy ones: still 4 found, at 0.9955.
    at = sensitivity_at_specificity(truth, p, 0.99)
    assert (
        at["threshold"] == 0.9955 and at["sensitivity"] == 0.4 and at["specificity"] == pytest.approx(0.996)
    )
    # The sick cells all above every healthy one: found at any target, no false alarm.
    assert sensitivity_at_specificity(truth, np.r_[healthy * 0.4, sick], 0.999)["sensitivity"] == 1.0


def test_sensitivity_at_a_specificity_no_threshold_reaches_and_one_class():
    # Every sick cell below the healthy ones: only calling nothing positive keeps the false alarms down.
    truth = np.array([False] * 4 + [True] * 2)
    at = sensitivity_at_specificity(truth, np.array([0.9, 0.8, 0.7, 0.6, 0.2, 0.1]), 0.99)
    assert at == {"target_specificity": 0.99, "threshold": None, "sensitivity": 0.0, "specificity": 1.0}
    one_class = sensitivity_at_specificity(np.zeros(3, bool), np.array([0.1, 0.5, 0.9]), 0.99)
    assert one_class == {
        "target_specificity": 0.99,
        "threshold": None,
        "sensitivity": None,
        "specificity": None,
    }
    with pytest.raises(ValueError, match=r"A target specificity is 1: give one in \(0, 1\)"):
        sensitivity_at_specificity(truth, np.arange(6) / 6, 1)
