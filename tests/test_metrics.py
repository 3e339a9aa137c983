import numpy as np
import pandas as pd
import pytest

from malaria_pipeline.metrics import classification_metrics, operating_points, per_patient

# 10 parasitized cells (2 missed) and 10 uninfected (1 false alarm), worked out by hand.
TRUTH = np.array([True] * 10 + [False] * 10)
P = np.array([0.9] * 8 + [0.2, 0.4] + [0.1] * 9 + [0.7])


def test_metrics_match_the_counts():
    m = classification_metrics(TRUTH, P)
    assert (m["true_positives"], m["false_negatives"], m["false_positives"], m["true_negatives"]) == (8, 2, 1, 9)
    assert m["accuracy"] == pytest.approx(17 / 20)
    assert m["sensitivity"] == pytest.approx(0.8) and m["specificity"] == pytest.approx(0.9)
    assert m["precision"] == pytest.approx(8 / 9) and m["f1"] == pytest.approx(2 * (8 / 9) * 0.8 / (8 / 9 + 0.8))
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
    predictions = pd.DataFrame({
        "patient_id": ["A"] * 4 + ["B"] * 2,
        "label": ["Parasitized", "Parasitized", "Uninfected", "Uninfected", "Parasitized", "Uninfected"],
        "p_positive": [0.9, 0.2, 0.1, 0.6, 0.8, 0.3],
    })
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
    assert (m["true_positives"], m["false_negatives"], m["false_positives"], m["true_negatives"]) == (2, 1, 1, 2)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["sensitivity"] == pytest.approx(2 / 3) and m["specificity"] == pytest.approx(2 / 3)
    assert m["precision"] == pytest.approx(2 / 3)  # 2 of the 3 cells called parasitized
    assert m["f1"] == pytest.approx(2 / 3)
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
    assert (m["true_positives"], m["false_negatives"], m["false_positives"], m["true_negatives"]) == (2, 0, 1, 1)
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
