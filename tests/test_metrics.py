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
