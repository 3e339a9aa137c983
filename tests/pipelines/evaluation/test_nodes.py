"""Nodes of the evaluation pipeline, on small hand-made predictions and a tiny untrained model."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from malaria_pipeline.assess.patients import ReferenceCells
from malaria_pipeline.ml import load_model
from malaria_pipeline.pipelines.evaluation.nodes import (
    SCORES,
    compute_metrics,
    confusion_matrix_figure,
    explanations_figure,
    judge_patient_subsets,
    package_model,
    predict_subsets,
    reliability_diagram_figure,
    roc_curve_figure,
    sample_images_figure,
    top_losses_figure,
)
from tests.helpers import (
    hand_overlay,
    interval_by_hand,
    reference_grad_cam,
    reference_tta_proba,
    tiny_bundle,
    tiny_tables,
)

PARAMS = {
    "positive_class": "Parasitized",
    "threshold": 0.5,
    "patients": {
        "level": 0.95,
        "count_at": 0.5,
        "quantifier": "ACC",
        "healthy_range": "all",
        "call": {"healthy_below": 0.001, "negative_below": 0.02, "min_cells": 1},
        "min_fraction": 0.05,
        "max_review": 0.1,
        "choose_from": {"healthy_below": [0.01, 0.001], "negative_below": [0.01, 0.02]},
        "detection": {"cells": 100, "parasitemia": [0.0, 0.1], "smears": 10, "seed": 0},
    },
    "operating_thresholds": [0.25, 0.5],
    "specificity_targets": [0.5, 0.75, 0.99],
    "device": "cpu",
    "batch_size": 3,
    "top_losses": 3,
    "explanations_per_class": 2,
    "samples_per_class": 2,
    "seed": 0,
    "tta": False,
    "calibration_bins": 15,
    "target_sensitivity": 0.97,
    "intervals": {"resamples": 200, "level": 0.95},
}

# At threshold 0.5, validation: 2 parasitized found, 1 missed (0.3), 1 uninfected right, 1 false alarm (0.7);
# test: all three right. The train row (a miss) must count nowhere.
PREDICTIONS = pd.DataFrame(
    {
        "subset": ["validation"] * 5 + ["test"] * 3 + ["train"],
        "label": [
            "Parasitized",
            "Parasitized",
            "Parasitized",
            "Uninfected",
            "Uninfected",
            "Parasitized",
            "Uninfected",
            "Uninfected",
            "Parasitized",
        ],
        "patient_id": ["A", "A", "B", "B", "B", "C", "C", "C", "A"],
        "p_parasitized": [0.9, 0.6, 0.3, 0.2, 0.7, 0.8, 0.1, 0.4, 0.1],
    }
)
PREDICTIONS["predicted"] = ["Parasitized" if p >= 0.5 else "Uninfected" for p in PREDICTIONS["p_parasitized"]]
PREDICTIONS["loss"] = [0.1, 0.5, 1.2, 0.2, 1.1, 0.2, 0.1, 0.4, 2.3]
PREDICTIONS["row"] = range(len(PREDICTIONS))
# Before temperature scaling: more confident, and as often wrong.
PREDICTIONS["p_parasitized_uncalibrated"] = [0.99, 0.8, 0.1, 0.05, 0.95, 0.9, 0.05, 0.3, 0.5]


def _metrics(predictions, model, params):
    """compute_metrics with the patient table the pipeline gives it."""
    return compute_metrics(predictions, judge_patient_subsets(predictions, model, params), model, params)


def test_metrics_of_each_subset_match_the_counts_worked_out_by_hand():
    report, scores = _metrics(PREDICTIONS, {}, PARAMS)
    assert report["positive_class"] == "Parasitized" and report["threshold"] == 0.5
    validation, test = report["validation"], report["test"]
    assert (
        validation["true_positives"],
        validation["false_negatives"],
        validation["false_positives"],
        validation["true_negatives"],
    ) == (2, 1, 1, 1)
    assert validation["sensitivity"] == pytest.approx(2 / 3) and validation["specificity"] == pytest.approx(
        1 / 2
    )
    assert validation["accuracy"] == pytest.approx(3 / 5) and validation["precision"] == pytest.approx(2 / 3)
    assert validation["images"] == 5 and test["images"] == 3
    assert test["sensitivity"] == 1.0 and test["specificity"] == 1.0 and test["accuracy"] == 1.0
    # at 0.25 the missed cell (0.3) is found; the false alarm stays
    assert [(p["threshold"], p["sensitivity"], p["specificity"]) for p in validation["operating_points"]] == [
        (0.25, pytest.approx(1.0), pytest.approx(0.5)),
        (0.5, pytest.approx(2 / 3), pytest.approx(0.5)),
    ]
    assert [(p["patient_id"], p["errors"]) for p in validation["per_patient"]] == [("B", 2), ("A", 0)]
    # Sensitivity at each specificity, on the subset's own ROC curve. Validation: parasitized 0.9, 0.6, 0.3,
    # uninfected 0.2, 0.7. At 0.5 one false alarm is allowed: down to 0.3, all three found (0.7 the alarm);
    # at 0.75 and 0.99 none: down to 0.9 only, one found. Test: the parasitized 0.8 above both others.
    assert [
        (p["target_specificity"], p["threshold"], p["sensitivity"], p["specificity"])
        for p in validation["at_specificity"]
    ] == [
        (0.5, 0.3, 1.0, 0.5),
        (0.75, 0.9, pytest.approx(1 / 3), 1.0),
        (0.99, 0.9, pytest.approx(1 / 3), 1.0),
    ]
    assert [(p["threshold"], p["sensitivity"]) for p in test["at_specificity"]] == [(0.8, 1.0)] * 3
    at_specificity = {f"sensitivity_at_specificity_{t}" for t in (0.5, 0.75, 0.99)}
    assert {name for name in scores if ".patients." not in name} == {
        f"{subset}.{name}" for subset in ("validation", "test") for name in (*SCORES, *at_specificity)
    }
    assert scores["validation.sensitivity_at_specificity_0.75"]["value"] == pytest.approx(1 / 3)
    assert scores["validation.sensitivity"] == {"value": pytest.approx(2 / 3), "step": 0}
    assert scores["validation.false_positives"]["value"] == 1


def test_a_subset_without_predictions_is_left_out():
    report, scores = _metrics(PREDICTIONS[PREDICTIONS["subset"] == "validation"], {}, PARAMS)
    assert "validation" in report and "test" not in report
    assert not [name for name in scores if name.startswith("test.")]


def test_predictions_are_the_models_for_the_validation_and_test_rows_only():
    images, index, split, _ = tiny_tables(count=8)
    bundle = tiny_bundle()
    predictions = predict_subsets(bundle, images, index, split, PARAMS)
    assert predictions["row"].tolist() == [4, 5, 6, 7]  # train rows 0-3 are not evaluated
    assert predictions["subset"].tolist() == ["validation", "validation", "test", "test"]
    assert predictions["path"].tolist() == index["path"][4:].tolist()
    assert predictions["label"].tolist() == index["label"][4:].tolist()
    assert predictions["patient_id"].tolist() == index["patient_id"][4:].tolist()
    expected = load_model(bundle).predict_proba(images[4:])
    assert predictions["p_parasitized"].tolist() == pytest.approx(expected[:, 0].tolist(), abs=1e-6)
    assert predictions["predicted"].tolist() == [
        ["Parasitized", "Uninfected"][i] for i in expected.argmax(dim=1)
    ]
    p_true = expected[torch.arange(4), torch.tensor([0, 1, 0, 1])]  # rows 4 and 6 are parasitized
    assert predictions["loss"].tolist() == pytest.approx((-p_true.log()).tolist(), abs=1e-5)


def test_the_packaged_model_is_the_classifier_of_the_bundle():
    images, *_ = tiny_tables(count=4)
    bundle = tiny_bundle()
    with torch.no_grad():
        logits = package_model(bundle)(images)
    assert torch.allclose(logits.softmax(dim=1), load_model(bundle).predict_proba(images), atol=1e-6)


def test_each_figure_shows_the_evaluated_subsets_or_cells():
    images, index, _, _ = tiny_tables(count=9)
    confusion = confusion_matrix_figure(PREDICTIONS, PARAMS)
    assert [ax.get_title() for ax in confusion.axes if ax.get_title()] == [
        "validation (5 cells)",
        "test (3 cells)",
    ]
    roc = roc_curve_figure(PREDICTIONS, PARAMS)
    assert isinstance(roc, Figure) and roc.axes[0].get_title() == "ROC, positive class Parasitized"
    evaluated = PREDICTIONS[PREDICTIONS["subset"] != "train"]  # as predict_subsets gives them
    worst = top_losses_figure(evaluated, images, tiny_bundle(), PARAMS)
    assert worst.get_suptitle().startswith("Top 3 losses")
    # the three largest losses, largest first: the missed cell (1.2), the false alarm (1.1), then 0.5
    assert [ax.get_title().split("\n")[0] for ax in worst.axes if ax.get_title()] == [
        "Paras→Uninf",
        "Uninf→Paras",
        "Paras→Paras",
    ]
    samples = sample_images_figure(images, index, PARAMS)
    titles = [ax.get_title().split("\n")[0] for ax in samples.axes if ax.get_title()]
    assert titles == ["Parasitized"] * 2 + ["Uninfected"] * 2


def shown_cells(figure: Figure) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(title, bare cell, overlay) of each pair of axes of a figure of explained cells."""
    axes = [ax for ax in figure.axes if ax.images]
    return [
        (
            overlay.get_title(),
            torch.from_numpy(bare.images[0].get_array().data.copy()),
            torch.from_numpy(overlay.images[0].get_array().data.copy()),
        )
        for bare, overlay in zip(axes[::2], axes[1::2])
    ]


@pytest.mark.parametrize("figure", ["top_losses", "explanations"])
def test_each_cell_is_drawn_beside_the_grad_cam_of_its_predicted_class(figure):
    images, *_ = tiny_tables(count=9)
    bundle = tiny_bundle()
    evaluated = PREDICTIONS[PREDICTIONS["subset"] != "train"]
    params = {**PARAMS, "explanations_per_class": 1}
    drawn = (top_losses_figure if figure == "top_losses" else explanations_figure)(
        evaluated, images, bundle, params
    )
    # top losses: rows 2, 4, 1 (losses 1.2, 1.1, 0.5); explanations: one right test cell of each class
    rows = [2, 4, 1] if figure == "top_losses" else [5, None]
    cells = shown_cells(drawn)
    assert len(cells) == len(rows)
    classifier = load_model(bundle)
    for (title, bare, overlay), listed in zip(cells, rows):
        row = listed
        if listed is None:  # either right Uninfected test cell (rows 6 and 7), drawn at random
            assert title.startswith("Uninf→Uninf") and title.endswith("test")
            row = next(r for r in (6, 7) if torch.equal(bare, images[r].permute(1, 2, 0)))
        assert torch.equal(bare, images[row].permute(1, 2, 0))
        predicted = classifier.class_names.index(PREDICTIONS.loc[row, "predicted"])
        heatmap = reference_grad_cam(classifier, classifier.network.layer3, images[row : row + 1], predicted)[
            0
        ]
        assert (overlay.int() - hand_overlay(images[row], heatmap).int()).abs().max() <= 1


class HandMadeClassifier:
    """Stands in for the loaded model: P(Parasitized) of an image is its first pixel / 100."""

    def __init__(self, class_names):
        self.class_names = class_names
        self.temperature = 1.0

    def view_logits(self, images, batch_size=256, tta=False):
        p = images[:, 0, 0, 0].double() / 100
        columns = {"Parasitized": p, "Uninfected": 1 - p}
        return torch.stack([columns[name] for name in self.class_names], dim=1).log()[
            None
        ]  # softmax(log p) = p


# Two train cells (never evaluated), six validation cells and two test cells; P(Parasitized) of each.
HAND_LABELS = (
    ["Parasitized", "Uninfected"] + ["Parasitized"] * 3 + ["Uninfected"] * 3 + ["Parasitized", "Uninfected"]
)
HAND_P_PARASITIZED = [10, 90] + [90, 50, 30, 60, 20, 10] + [80, 40]
HAND_SUBSETS = ["train"] * 2 + ["validation"] * 6 + ["test"] * 2


def hand_made_tables():
    images = torch.zeros((10, 3, 4, 4), dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.tensor(HAND_P_PARASITIZED, dtype=torch.uint8)
    paths = [f"cell_images/{label}/C1P1ThinF_IMG_1_cell_{i}.png" for i, label in enumerate(HAND_LABELS)]
    index = pd.DataFrame({"path": paths, "label": HAND_LABELS, "patient_id": ["C1P1ThinF"] * 10})
    return images, index, pd.DataFrame({"path": paths, "subset": HAND_SUBSETS})


# Validation, worked out by hand at threshold 0.5 (a score on the threshold is positive):
# positive Parasitized: P(Parasitized) 0.9 0.5 0.3 | 0.6 0.2 0.1 (parasitized | uninfected cells):
#   found 0.9 and 0.5, missed 0.3, one false alarm (0.6). Ranked: P U P P U U, so the average precision is
#   (1/1 + 2/3 + 3/4) / 3; ROC AUC: 0.9 beats 3 uninfected cells, 0.5 beats 2, 0.3 beats 2: 7/9.
# positive Uninfected: P(Uninfected) 0.4 0.8 0.9 | 0.1 0.5 0.7 (uninfected | parasitized cells):
#   found 0.8 and 0.9, missed 0.4, false alarms 0.5 and 0.7. Ranked: U U P P U P, so the average precision
#   is (1/1 + 2/2 + 3/5) / 3; ROC AUC: 0.4 beats 1, 0.8 and 0.9 beat 3 each: 7/9.
BY_HAND = {
    "Parasitized": {
        "counts": (2, 1, 1, 2),
        "accuracy": 4 / 6,
        "sensitivity": 2 / 3,
        "specificity": 2 / 3,
        "precision": 2 / 3,
        "roc_auc": 7 / 9,
        "average_precision": (1 + 2 / 3 + 3 / 4) / 3,
        "test": (1, 0, 0, 1),
    },
    "Uninfected": {
        "counts": (2, 1, 2, 1),
        "accuracy": 3 / 6,
        "sensitivity": 2 / 3,
        "specificity": 1 / 3,
        "precision": 2 / 4,
        "roc_auc": 7 / 9,
        "average_precision": (1 + 1 + 3 / 5) / 3,
        "test": (1, 0, 0, 1),
    },
}


@pytest.mark.parametrize("class_names", [["Parasitized", "Uninfected"], ["Uninfected", "Parasitized"]])
@pytest.mark.parametrize("positive", ["Parasitized", "Uninfected"])
def test_metrics_of_predictions_are_the_ones_worked_out_by_hand_with_either_class_positive(
    monkeypatch, positive, class_names
):
    from malaria_pipeline.pipelines.evaluation import nodes

    monkeypatch.setattr(nodes, "load_model", lambda model, device="cpu": HandMadeClassifier(class_names))
    params = {**PARAMS, "positive_class": positive}
    predictions = predict_subsets({}, *hand_made_tables(), params)
    report, scores = _metrics(predictions, {}, params)
    validation, by_hand = report["validation"], BY_HAND[positive]
    assert (
        validation["true_positives"],
        validation["false_negatives"],
        validation["false_positives"],
        validation["true_negatives"],
    ) == by_hand["counts"]
    for name in ("accuracy", "sensitivity", "specificity", "precision", "roc_auc", "average_precision"):
        assert validation[name] == pytest.approx(by_hand[name]), name
        assert scores[f"validation.{name}"]["value"] == pytest.approx(by_hand[name]), name
    test = report["test"]
    test_counts = (
        test["true_positives"],
        test["false_negatives"],
        test["false_positives"],
        test["true_negatives"],
    )
    assert test_counts == by_hand["test"]
    assert report["positive_class"] == positive
    p_parasitized = [p / 100 for p in HAND_P_PARASITIZED[2:]]
    expected = p_parasitized if positive == "Parasitized" else [1 - p for p in p_parasitized]
    # the column of the positive class's probability is named after it, in every table
    assert predictions[f"p_{positive.lower()}"].tolist() == pytest.approx(expected)


def test_expected_calibration_error_before_and_after_is_the_one_worked_out_by_hand():
    # validation, after: confidences 0.9 right, 0.6 right, 0.7 wrong (a missed 0.3), 0.8 right, 0.7 wrong; in
    # 15 bins 0.9, 0.6 and 0.8 are alone in theirs, both 0.7 share one: (0.1 + 0.4 + 0.7·2 + 0.2) / 5.
    # before: 0.99 right, 0.8 right, 0.9 wrong, 0.95 right, 0.95 wrong: 0.99 and the two 0.95 share the top bin
    # (accuracy 2/3, confidence 2.89/3): (3·|2/3 - 2.89/3| + 0.2 + 0.9) / 5.
    # test: after 0.8, 0.9, 0.6 right, each alone: (0.2 + 0.1 + 0.4) / 3; before 0.9, 0.95, 0.7: (0.1 + 0.05 + 0.3) / 3.
    report, scores = _metrics(PREDICTIONS, {"temperature": 1.7}, PARAMS)
    assert report["validation"]["ece"] == pytest.approx(0.42)
    assert report["validation"]["ece_uncalibrated"] == pytest.approx(
        (3 * abs(2 / 3 - 2.89 / 3) + 0.2 + 0.9) / 5
    )
    assert (report["test"]["ece"], report["test"]["ece_uncalibrated"]) == pytest.approx((0.7 / 3, 0.45 / 3))
    assert scores["test.ece"]["value"] == pytest.approx(0.7 / 3)
    assert scores["validation.ece_uncalibrated"]["value"] == report["validation"]["ece_uncalibrated"]
    assert report["temperature"] == 1.7 and report["calibration_bins"] == 15
    assert _metrics(PREDICTIONS, {}, PARAMS)[0]["temperature"] == 1.0  # a bundle saved before calibration


def test_the_models_operating_point_is_reported_with_its_sensitivity_and_specificity_on_each_subset():
    point = {
        "threshold": 0.25,
        "positive_class": "Parasitized",
        "target_sensitivity": 0.97,
        "tta": False,
        "sensitivity": 1.0,
        "specificity": 0.5,
    }
    report, scores = _metrics(PREDICTIONS, {"operating_point": point}, PARAMS)
    # at 0.25: validation finds 0.9, 0.6, 0.3 and passes 0.2 but not 0.7; test finds 0.8, passes 0.1 but not 0.4
    assert (
        report["operating_point"]["threshold"] == 0.25
        and report["operating_point"]["target_sensitivity"] == 0.97
    )
    assert report["operating_point"]["validation"] == {"sensitivity": 1.0, "specificity": 0.5}
    assert report["operating_point"]["test"] == {"sensitivity": 1.0, "specificity": 0.5}
    assert scores["test.sensitivity_at_operating_point"] == {"value": 1.0, "step": 0}
    assert report["threshold"] == 0.5 and report["validation"]["sensitivity"] == pytest.approx(
        2 / 3
    )  # unchanged
    report, scores = _metrics(PREDICTIONS, {}, PARAMS)
    assert report["operating_point"] is None and not [name for name in scores if "operating_point" in name]


def test_predictions_with_tta_and_temperature_are_the_written_out_ones_and_before_calibration_too():
    images, index, split, _ = tiny_tables(count=8)
    images[:, :, 1:5, 10:14] = 0  # an off-centre spot: the symmetries differ
    bundle = {**tiny_bundle(), "temperature": 0.5}
    predictions = predict_subsets(bundle, images, index, split, {**PARAMS, "tta": True})
    assert predictions["p_parasitized"].tolist() == pytest.approx(
        reference_tta_proba(bundle, images[4:], 0.5)[:, 0].tolist(), abs=1e-5
    )
    assert predictions["p_parasitized_uncalibrated"].tolist() == pytest.approx(
        reference_tta_proba(bundle, images[4:])[:, 0].tolist(), abs=1e-5
    )


def test_the_reliability_diagram_has_one_panel_per_subset_with_the_accuracy_of_each_bin():
    figure = reliability_diagram_figure(PREDICTIONS[PREDICTIONS["subset"] != "train"], PARAMS)
    titles = [ax.get_title() for ax in figure.axes]
    assert titles == ["validation (5 cells)", "test (3 cells)"]
    # after calibration, validation's non-empty bins, by confidence: 0.6 right, the two 0.7 wrong, 0.8, 0.9 right
    assert [bar.get_height() for bar in figure.axes[0].patches] == [1.0, 0.0, 1.0, 1.0]
    assert figure.get_suptitle() == "Reliability diagram"
    assert reliability_diagram_figure(PREDICTIONS.iloc[:0], PARAMS).texts  # nothing held out: says why


# The model's reference cells: at 0.5, 90 of 100 parasitized cells found and 95 of 100 uninfected passed.
HAND_REFERENCE = ReferenceCells(
    thresholds=[0.9, 0.1], found=[90, 100], false_alarms=[5, 100], positives=100, negatives=100, source="hand"
)


def test_each_subsets_patients_are_corrected_with_the_models_reference_cells_and_called_by_its_rule():
    model = {
        "reference_cells": HAND_REFERENCE.as_dict(),
        "patient_call": {"healthy_below": 0.01, "negative_below": 0.5, "min_cells": 1},
    }
    table = judge_patient_subsets(PREDICTIONS, model, PARAMS).set_index(["subset", "patient"])
    # Worked by hand (Lang & Reiczigel 2014, asht::prevSeSp) at Se 0.9 (n 100), Sp 0.95 (n 100):
    # validation A: 2 of 2 called; B: 1 of 3 (0.7); test C: 1 of 3 (0.8); the train row counts nowhere.
    assert set(table.index) == {("validation", "A"), ("validation", "B"), ("test", "C")}
    a, b, c = table.loc[("validation", "A")], table.loc[("validation", "B")], table.loc[("test", "C")]
    assert (a["cells"], a["parasitized"], b["cells"], b["parasitized"]) == (2, 2, 3, 1)
    assert [b["fraction"], b["fraction_low"], b["fraction_high"]] == pytest.approx(
        [0.33333333333333315, 0.0, 0.8895451157268588]
    )
    assert [c["fraction"], c["fraction_low"], c["fraction_high"]] == pytest.approx(
        [0.33333333333333315, 0.0, 0.8895451157268588]
    )
    assert [a["fraction"], a["fraction_low"], a["fraction_high"]] == pytest.approx(
        [1.0, 0.278603494509262, 1.0]
    )
    # the rule: a healthy patient (one rate, 1 - Sp = 0.05) shows 2 of 2 called with chance 0.05² = 0.0025,
    # below 0.01: A is positive; 1 of 3 with chance 1 - 0.95³ = 0.1426: B is not, and its estimate 0.33 is
    # below 0.5: negative
    assert a["healthy_chance"] == pytest.approx(0.05**2) and b["healthy_chance"] == pytest.approx(1 - 0.95**3)
    assert (a["call"], b["call"], c["call"]) == ("positive", "negative", "negative")
    assert (a["labelled_fraction"], b["labelled_fraction"], c["labelled_fraction"]) == (
        1.0,
        pytest.approx(1 / 3),
        pytest.approx(1 / 3),
    )
    assert (
        b["sensitivity"] == 0.9
        and b["specificity"] == 0.95
        and b["rates_from"]
        == "hand, at threshold 0.5; no spread between patients (one rate for every patient)"
    )
    report, scores = compute_metrics(PREDICTIONS, table.reset_index(), model, PARAMS)
    assert report["test"]["patients"]["interval_coverage"] == 1.0
    assert scores["validation.patients.review_share"] == {"value": 0.0, "step": 0}


def test_the_configured_level_reaches_the_subsets_patient_tables():
    model = {
        "reference_cells": HAND_REFERENCE.as_dict(),
        "patient_call": {"healthy_below": 0.01, "negative_below": 0.5, "min_cells": 1},
    }
    params = {**PARAMS, "patients": {**PARAMS["patients"], "level": 0.9}}
    table = judge_patient_subsets(PREDICTIONS, model, params).set_index(["subset", "patient"])
    assert table.loc[("validation", "B"), ["fraction_low", "fraction_high"]].tolist() == pytest.approx(
        interval_by_hand(1, 3, (90, 100), (95, 100), 0.9), abs=1e-12
    )


def test_a_model_without_reference_cells_estimates_no_fraction_and_sends_every_patient_to_review():
    table = judge_patient_subsets(PREDICTIONS, {}, PARAMS)
    assert table["fraction"].isna().all() and (table["call"] == "review").all()
    assert (table["rates_from"] == "none").all()


def test_the_test_patients_smears_are_judged_with_the_models_counting_threshold_spread_and_rule():
    from malaria_pipeline.assess.detection import detection_limits, judge_smears, simulate_smears
    from malaria_pipeline.assess.patient_call import PatientCall
    from malaria_pipeline.assess.spread import PatientSpread, RateSpread

    spread = PatientSpread(
        threshold=0.5,
        false_alarm=RateSpread(mean=0.05, rho=0.05, patients=20, cells=2000, events=100),
        detection=RateSpread(mean=0.9, rho=0.05, patients=20, cells=2000, events=1800),
        source="hand",
    )
    rule = {"healthy_below": 0.01, "negative_below": 0.1, "min_cells": 1}
    model = {
        "reference_cells": HAND_REFERENCE.as_dict(),
        "patient_call": rule,
        "count_threshold": 0.5,
        "patient_spread": spread.as_dict(),
    }
    report, scores = _metrics(PREDICTIONS, model, PARAMS)
    # C's three test cells (one parasitized, called; two uninfected, neither called): smears of them,
    # judged here with the rates at 0.5 (Se 0.9, Sp 0.95), the spread and the rule written out
    test = PREDICTIONS[PREDICTIONS["subset"] == "test"]
    detection = PARAMS["patients"]["detection"]
    smears = simulate_smears(
        test["patient_id"].to_numpy(),
        (test["label"] == "Parasitized").to_numpy(),
        test["p_parasitized"].to_numpy() >= 0.5,
        parasitemia=detection["parasitemia"],
        cells=detection["cells"],
        smears=detection["smears"],
        seed=detection["seed"],
    )
    expected = detection_limits(
        judge_smears(smears, HAND_REFERENCE.at(0.5), PatientCall(**rule), 0.95, spread)
    )
    got = report["test"]["detection"]
    assert {k: got[k] for k in expected} == expected and got["cells"] == 100
    assert scores["test.detection.lob"]["value"] == expected["lob"]
    assert "validation" not in report or "detection" not in report["validation"]


def test_the_review_workload_of_the_test_patients_against_hand_worked_figures():
    from malaria_pipeline.pipelines.evaluation.nodes import review_workload_of_test

    # T1 (review, infected): P 0.9 (U), 0.8 (P), 0.1 (U): its first parasitized cell ranks 2. T2 (review,
    # uninfected): 0.7, 0.2. T3 (positive, infected). A validation patient, not counted.
    predictions = pd.DataFrame(
        {
            "subset": ["test"] * 6 + ["validation"],
            "patient_id": ["T1", "T1", "T1", "T2", "T2", "T3", "V1"],
            "label": [
                "Uninfected",
                "Parasitized",
                "Uninfected",
                "Uninfected",
                "Uninfected",
                "Parasitized",
                "Parasitized",
            ],
            "p_parasitized": [0.9, 0.8, 0.1, 0.7, 0.2, 0.95, 0.9],
        }
    )
    patients = pd.DataFrame(
        {
            "subset": ["test", "test", "test", "validation"],
            "patient": ["T1", "T2", "T3", "V1"],
            "cells": [3, 2, 1, 1],
            "call": ["review", "review", "positive", "review"],
            "infected": [True, False, True, True],
            "labelled_fraction": [1 / 3, 0.0, 1.0, 1.0],
            "fraction": [0.3, 0.0, 1.0, 1.0],
            "observed": [0.33, 0.0, 1.0, 1.0],
            "covered": [True] * 4,
        }
    )
    report = review_workload_of_test(predictions, patients, PARAMS, {"workload_k": [1, 2]})
    by_k = {row["k"]: row for row in report["after_review"]}
    # top 1: T1's first cell is uninfected, so T1 is missed; one cell read of each review patient
    assert (by_k[1]["call_sensitivity"], by_k[1]["call_specificity"], by_k[1]["missed"]) == (0.5, 1.0, 1)
    assert by_k[1]["cells_read_per_patient"] == pytest.approx(2 / 3)
    # top 2: T1's parasite found at rank 2; T2 read in full
    assert (by_k[2]["call_sensitivity"], by_k[2]["missed"], by_k[2]["undecided"]) == (1.0, 0, 0)
    assert by_k[2]["cells_read_per_patient"] == pytest.approx(4 / 3)
    assert by_k[2]["manual_cells_per_patient"] == pytest.approx(2.0)
    assert report["review_patients"] == [
        {
            "patient": "T1",
            "cells": 3,
            "infected": True,
            "labelled_fraction": 1 / 3,
            "first_parasitized_rank": 2,
        },
        {
            "patient": "T2",
            "cells": 2,
            "infected": False,
            "labelled_fraction": 0.0,
            "first_parasitized_rank": None,
        },
    ]
