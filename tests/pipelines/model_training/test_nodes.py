"""The training node on hand-made tables: a ResNet-9 of width 4 on 16-pixel images, on the CPU."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from malaria_pipeline.assess.patients import ReferenceCells
from malaria_pipeline.assess.spread import PatientSpread
from malaria_pipeline.cells.splitting import SplitError
from malaria_pipeline.framework import tracking
from malaria_pipeline.ml import load_model
from malaria_pipeline.ml.checkpoint import CheckpointStore
from malaria_pipeline.ml.train import HISTORY_COLUMNS
from malaria_pipeline.pipelines.model_training.nodes import train_model
from tests.helpers import TRAIN_PARAMS, reference_logits, reference_proba, reference_tta_proba, tiny_tables

# What the catalog's label_issues_to_exclude loads before any cross-validation has run.
NO_AUDIT = pd.DataFrame({"path": pd.Series(dtype="object")})


def test_the_node_trains_on_the_train_rows_and_returns_the_bundle_and_one_history_row_per_epoch(tmp_path):
    images, index, split, stats = tiny_tables()
    store = CheckpointStore(tmp_path / "checkpoint")
    bundle, history = train_model(images, index, split, stats, store, NO_AUDIT, {**TRAIN_PARAMS, "epochs": 1})
    assert list(history.columns) == list(HISTORY_COLUMNS) and history["epoch"].tolist() == [1]
    model = load_model(bundle)
    assert model.class_names == ["Parasitized", "Uninfected"] and model.image_size == 16
    assert model.normalize.mean.flatten().tolist() == pytest.approx(stats["mean"])
    assert bundle["best_epoch"] == 1 and bundle["pretrained"] is False
    assert model.predict_proba(images[:3]).shape == (3, 2)
    # each epoch is checkpointed, with the MLflow run that wrote it (none here)
    assert store.load()["metadata"] == {"mlflow_run_id": ""}


def test_an_interrupted_node_resumes_from_its_checkpoint_with_resume(tmp_path, monkeypatch):
    images, index, split, stats = tiny_tables()
    store = CheckpointStore(tmp_path / "checkpoint")
    params = {**TRAIN_PARAMS, "epochs": 2}

    def interrupt(row):  # Ctrl-C as epoch 1 ends (the node hands each row to tracking.log_epoch)
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(tracking, "log_epoch", interrupt)
        with pytest.raises(KeyboardInterrupt):
            train_model(images, index, split, stats, store, NO_AUDIT, params)
    (saved,) = store.load()["history"]
    _, history = train_model(images, index, split, stats, store, NO_AUDIT, {**params, "resume": True})
    assert history["epoch"].tolist() == [1, 2]
    assert history.iloc[0].to_dict() == saved  # epoch 1 is the checkpoint's, not trained again


def test_a_split_without_validation_images_is_refused_before_training(tmp_path):
    images, index, split, stats = tiny_tables()
    split["subset"] = split["subset"].replace("validation", "test")
    with pytest.raises(SplitError, match="no validation images"):
        train_model(
            images, index, split, stats, CheckpointStore(tmp_path), NO_AUDIT, {**TRAIN_PARAMS, "epochs": 1}
        )


def test_exclude_label_issues_leaves_the_suspects_out_of_the_training_images_only(tmp_path, monkeypatch):
    from malaria_pipeline.pipelines.model_training import nodes

    images, index, split, stats = tiny_tables(count=24)
    # Suspects: two training rows (0 and 3), one validation row (12) and one test row (20).
    audit = pd.DataFrame({"path": index["path"][[0, 3, 12, 20]], "rank": [1, 2, 3, 4]})
    given = []
    real = nodes.train_classifier

    def spy(data, config, **kwargs):
        given.append(data)
        return real(data, config, **kwargs)

    monkeypatch.setattr(nodes, "train_classifier", spy)
    before = split.copy()
    train_model(images, index, split, stats, CheckpointStore(tmp_path), audit, {**TRAIN_PARAMS, "epochs": 1})
    train_model(
        images,
        index,
        split,
        stats,
        CheckpointStore(tmp_path),
        audit,
        {**TRAIN_PARAMS, "epochs": 1, "exclude_label_issues": True},
    )
    kept, excluded = given
    train_rows = [i for i in range(12) if i not in (0, 3)]
    assert torch.equal(excluded.train_images, images[train_rows]) and torch.equal(
        kept.train_images, images[:12]
    )
    assert torch.equal(excluded.valid_images, images[12:18]) and torch.equal(
        excluded.valid_images, kept.valid_images
    )
    assert split.equals(before)  # the catalog's data_split, which evaluation reads, is left whole


def test_exclude_label_issues_without_an_audit_says_to_run_cross_validation(tmp_path):
    images, index, split, stats = tiny_tables()
    with pytest.raises(ValueError, match="kedro run --pipelines cross_validation"):
        train_model(
            images,
            index,
            split,
            stats,
            CheckpointStore(tmp_path),
            NO_AUDIT,
            {**TRAIN_PARAMS, "epochs": 1, "exclude_label_issues": True},
        )


# What calibrate_model reads of the evaluation parameters.
EVALUATION = {
    "positive_class": "Parasitized",
    "target_sensitivity": 0.75,
    "target_specificity": None,
    "tta": False,
    "batch_size": 5,
    "device": "cpu",
    "operating_point_checks": {"min_cells_per_class": 300, "min_rate": 0.8},
    "patients": {
        "level": 0.95,
        "count_at": 0.5,
        "quantifier": "ACC",
        "healthy_range": "all",
        "call": {"healthy_below": 0.001, "negative_below": 0.02},
    },
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model trained 2 epochs on the first 24 of 48 hand-made cells; validation: rows 24-35, test: 36-47."""
    images, index, split, stats = tiny_tables(count=48)
    bundle, _ = train_model(
        images,
        index,
        split,
        stats,
        CheckpointStore(tmp_path_factory.mktemp("checkpoint")),
        NO_AUDIT,
        {**TRAIN_PARAMS, "epochs": 2, "channels_last": False},
    )
    return bundle, images, index, split


def _best_threshold_by_brute_force(scores, truth, target):
    best = None
    for t in np.unique(scores):
        sens, spec = (scores[truth] >= t).mean(), (scores[~truth] < t).mean()
        if sens >= target and (best is None or (spec, sens) > (best[2], best[1])):
            best = (t, sens, spec)
    return best


@pytest.mark.parametrize("tta", [False, True])
def test_calibration_fits_t_and_the_threshold_on_the_validation_cells_as_written_out(trained, tta):
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    from malaria_pipeline.pipelines.model_training.nodes import calibrate_model

    bundle, images, index, split = trained
    model = calibrate_model(bundle, images, index, split, TRAIN_PARAMS, {**EVALUATION, "tta": tta})
    logits, labels = (
        reference_logits(bundle, images[24:36]).numpy(),
        np.arange(24, 36) % 2,
    )  # even rows parasitized
    nll = lambda t: -log_softmax(logits / t, axis=1)[np.arange(12), labels].mean()  # noqa: E731
    expected_t = minimize_scalar(nll, bounds=(0.01, 100), method="bounded", options={"xatol": 1e-8}).x
    assert model["temperature"] == pytest.approx(expected_t, rel=2e-3)
    reference = reference_tta_proba if tta else reference_proba
    scores = reference(bundle, images[24:36], model["temperature"])[:, 0].numpy()
    threshold, sensitivity, specificity = _best_threshold_by_brute_force(scores, labels == 0, 0.75)
    point = model["operating_point"]
    assert point["threshold"] == pytest.approx(threshold, abs=1e-5)
    assert (point["sensitivity"], point["specificity"]) == pytest.approx((sensitivity, specificity))
    assert (
        point["positive_class"] == "Parasitized"
        and point["tta"] is tta
        and point["target_sensitivity"] == 0.75
    )
    assert load_model(model).temperature == model["temperature"]
    # the reference cells: the validation cells' counts at any threshold, as counted here by hand
    reference = ReferenceCells.from_dict(model["reference_cells"])
    distinct = np.unique(scores)
    for t in [0.0, *((distinct[1:] + distinct[:-1]) / 2), 1.01]:  # between the scores: clear of rounding
        at = reference.at(t)
        found, passed = (scores[labels == 0] >= t).sum(), (scores[labels == 1] < t).sum()
        assert (at.found, at.positives, at.passed, at.negatives) == (found, 6, passed, 6)
    assert model["patient_call"] == {"healthy_below": 0.001, "negative_below": 0.02, "min_cells": 50}
    # the spread between the validation patients at the counting threshold, counted here by hand
    valid = split["subset"].to_numpy() == "validation"
    patients = index["patient_id"].to_numpy()[valid]
    expected = PatientSpread.of(patients, labels == 0, scores >= 0.5, 0.5, "hand")
    saved = PatientSpread.from_dict(model["patient_spread"])
    assert (saved.false_alarm, saved.detection, saved.threshold) == (
        expected.false_alarm,
        expected.detection,
        0.5,
    )
    assert model["count_threshold"] == 0.5 and model["quantifier"] == "ACC"
    assert (point["positives"], point["negatives"]) == (6, 6)


def test_an_operating_point_chosen_on_few_cells_is_flagged_in_the_log(trained, caplog):
    from malaria_pipeline.pipelines.model_training.nodes import calibrate_model

    bundle, images, index, split = trained
    calibrate_model(bundle, images, index, split, TRAIN_PARAMS, EVALUATION)
    assert "Do not trust the operating threshold" in caplog.text
    assert (
        "chosen on only 6 parasitized cells (fewer than evaluation.operating_point_checks.min_cells_per_class, 300)"
        in caplog.text
    )


def test_a_target_specificity_chooses_the_threshold_that_reaches_it_and_finds_the_most(trained, caplog):
    from malaria_pipeline.pipelines.model_training.nodes import calibrate_model

    bundle, images, index, split = trained
    model = calibrate_model(
        bundle, images, index, split, TRAIN_PARAMS, {**EVALUATION, "target_specificity": 0.8}
    )
    scores = reference_proba(bundle, images[24:36], model["temperature"])[:, 0].numpy()
    truth = np.arange(24, 36) % 2 == 0  # even rows parasitized
    # Written out: every score tried, those that pass at least 80% of the 6 uninfected cells, the most sensitive.
    tried = [(t, (scores[truth] >= t).mean(), (scores[~truth] < t).mean()) for t in np.unique(scores)]
    threshold, sensitivity, specificity = max((r for r in tried if r[2] >= 0.8), key=lambda r: (r[1], r[2]))
    point = model["operating_point"]
    assert point["threshold"] == pytest.approx(threshold, abs=1e-5)
    assert (point["sensitivity"], point["specificity"]) == pytest.approx((sensitivity, specificity))
    assert point["target_specificity"] == 0.8 and point["target_sensitivity"] is None


def test_a_target_specificity_that_only_calling_nothing_positive_reaches_stores_no_threshold(caplog):
    import torch

    from malaria_pipeline.assess.operating_point import calibrate
    from malaria_pipeline.ml import load_model
    from tests.helpers import tiny_bundle

    classifier = load_model(tiny_bundle())  # classes Parasitized, Uninfected
    # Every uninfected cell scores above every parasitized one: no threshold passes 99% of them and finds any.
    logits = torch.tensor([[[-2.0, 2.0], [-1.0, 1.0], [3.0, -3.0], [2.0, -2.0]]])
    labels = torch.tensor([0, 0, 1, 1])
    point = calibrate(
        classifier,
        logits,
        labels,
        fit=False,
        positive_class="Parasitized",
        target_sensitivity=0.9,
        target_specificity=0.99,
    )
    assert point is None
    assert "Only calling none of the 4 held-out images Parasitized reaches specificity 0.99" in caplog.text


def test_calibration_never_looks_at_the_test_cells_and_calibrate_false_keeps_t_1(trained):
    from malaria_pipeline.pipelines.model_training.nodes import calibrate_model

    bundle, images, index, split = trained
    model = calibrate_model(bundle, images, index, split, TRAIN_PARAMS, EVALUATION)
    other_test_cells = images.clone()
    other_test_cells[36:] = 255 - other_test_cells[36:]
    assert calibrate_model(bundle, other_test_cells, index, split, TRAIN_PARAMS, EVALUATION) == model
    other_validation_cells = images.clone()
    other_validation_cells[24:30] = 255 - other_validation_cells[24:30]
    changed = calibrate_model(bundle, other_validation_cells, index, split, TRAIN_PARAMS, EVALUATION)
    assert changed["temperature"] != model["temperature"]
    uncalibrated = calibrate_model(
        bundle, images, index, split, {**TRAIN_PARAMS, "calibrate": False}, EVALUATION
    )
    assert uncalibrated["temperature"] == 1.0 and "threshold" in uncalibrated["operating_point"]


def test_without_validation_cells_or_with_one_class_there_is_no_operating_point(trained):
    from malaria_pipeline.pipelines.model_training.nodes import calibrate_model

    bundle, images, index, split = trained
    no_validation = split.assign(subset=split["subset"].replace("validation", "train"))
    model = calibrate_model(bundle, images, index, no_validation, TRAIN_PARAMS, EVALUATION)
    assert model["temperature"] == 1.0 and "operating_point" not in model
    one_class = index.assign(label=index["label"].where(~split["subset"].eq("validation"), "Uninfected"))
    model = calibrate_model(bundle, images, one_class, split, TRAIN_PARAMS, EVALUATION)
    assert "operating_point" not in model and model["temperature"] != 1.0


def test_without_validation_cells_the_model_takes_the_temperature_and_threshold_its_cross_validation_chose(
    trained,
):
    from malaria_pipeline.pipelines.model_training.nodes import calibrate_model

    bundle, images, index, split = trained
    no_validation = split.assign(subset=split["subset"].replace("validation", "train"))
    given = {**EVALUATION, "without_validation": {"temperature": 1.25, "operating_threshold": 0.3}}
    model = calibrate_model(bundle, images, index, no_validation, TRAIN_PARAMS, given)
    assert model["temperature"] == 1.25 and load_model(model).temperature == 1.25
    assert (
        model["operating_point"]["threshold"] == 0.3
        and model["operating_point"]["positive_class"] == "Parasitized"
    )
    assert model["operating_point"]["tta"] is False and model["operating_point"]["target_sensitivity"] == 0.75
    for wrong, name in (
        ({"temperature": 0, "operating_threshold": None}, "temperature"),
        ({"temperature": None, "operating_threshold": 1.5}, "operating_threshold"),
    ):
        with pytest.raises(ValueError, match=f"evaluation.without_validation.{name} is"):
            calibrate_model(
                bundle,
                images,
                index,
                no_validation,
                TRAIN_PARAMS,
                {**EVALUATION, "without_validation": wrong},
            )
    # With validation cells, those are what T and the threshold are fitted on; the given values are ignored.
    assert calibrate_model(bundle, images, index, split, TRAIN_PARAMS, given) == calibrate_model(
        bundle, images, index, split, TRAIN_PARAMS, EVALUATION
    )


def test_without_validation_cells_the_model_takes_the_patient_settings_of_its_cross_validation_run(trained):
    from malaria_pipeline.pipelines.model_training.nodes import calibrate_model

    bundle, images, index, split = trained
    no_validation = split.assign(subset=split["subset"].replace("validation", "train"))
    claimed = {
        "reference_cells": {
            "thresholds": [0.9, 0.4],
            "found": [8, 10],
            "false_alarms": [1, 30],
            "positives": 10,
            "negatives": 40,
            "source": "the pooled out-of-fold cells of cross-validation run r1 (50 cells of 5 patients)",
        },
        "count_threshold": 0.5,
        "patient_spread": {"threshold": 0.5, "source": "the same"},
        "quantifier": "ACC",
        "patient_call": {"healthy_below": 0.01, "negative_below": 0.04, "min_cells": 3},
        "cross_validation_run_id": "r1",
    }
    model = calibrate_model(bundle, images, index, no_validation, TRAIN_PARAMS, EVALUATION, claimed)
    for key in ("reference_cells", "count_threshold", "patient_spread", "quantifier", "patient_call"):
        assert model[key] == claimed[key]
    assert model["patient_settings_from"] == "r1" and model["temperature"] == 1.0
    # none claimed: no reference cells, as before; with validation cells, the claimed ones are ignored
    alone = calibrate_model(bundle, images, index, no_validation, TRAIN_PARAMS, EVALUATION, None)
    assert not {"reference_cells", "patient_settings_from", "patient_spread"} & alone.keys()
    assert alone["patient_call"] == {**EVALUATION["patients"]["call"], "min_cells": 50}
    validated = calibrate_model(bundle, images, index, split, TRAIN_PARAMS, EVALUATION, claimed)
    assert validated == calibrate_model(bundle, images, index, split, TRAIN_PARAMS, EVALUATION)
    assert "patient_settings_from" not in validated
    with pytest.raises(ValueError, match="cross-validation run r1 lack patient_spread: run"):
        calibrate_model(
            bundle,
            images,
            index,
            no_validation,
            TRAIN_PARAMS,
            EVALUATION,
            {key: value for key, value in claimed.items() if key != "patient_spread"},
        )


def test_the_onnx_export_is_checked_on_the_validation_cells_or_the_training_ones_without_them():
    from malaria_pipeline.ml.onnx_runtime import OnnxClassifier
    from malaria_pipeline.pipelines.model_training.nodes import export_onnx_model
    from tests.helpers import tiny_bundle

    images, index, split, _ = tiny_tables()  # 12 train, 6 validation, 6 test
    bundle = {**tiny_bundle(), "temperature": 1.3}
    params = {"onnx": {"tolerance": 1e-4, "check_cells": 4}}
    graph, report = export_onnx_model(bundle, images, index, split, params)
    assert (report["cells"], report["checked_on"]) == (4, "validation")  # at most check_cells of the 6
    assert report["max_abs_difference"] < 1e-5
    expected = reference_proba(bundle, images, temperature=1.3).numpy()
    exported = OnnxClassifier(graph, path="onnx_model", run="test")
    assert np.abs(exported.predict_proba(images.numpy()) - expected).max() < 1e-5
    assert exported.model == {key: value for key, value in bundle.items() if key != "state_dict"}

    every_image = split.assign(subset=np.where(split["subset"] == "validation", "train", split["subset"]))
    _, report = export_onnx_model(
        bundle, images, index, every_image, {"onnx": {"tolerance": 1e-4, "check_cells": 100}}
    )
    assert (report["cells"], report["checked_on"]) == (18, "train (no validation images)")


def _int8_params(**int8) -> dict:
    return {
        "onnx": {
            "int8": {"quantize": True, "calibration_cells": 6, "max_loss": 0.002, "timing_rounds": 1, **int8}
        }
    }


def test_the_int8_graph_is_kept_only_where_it_is_faster_and_as_accurate(monkeypatch):
    """The decision, on a real quantized graph, its speed measured by hand-set figures: kept when faster
    and within max_loss; not written (no bytes) when slower, or when less accurate than allowed."""
    from sklearn.metrics import roc_auc_score

    from malaria_pipeline.ml import onnx_quantize
    from malaria_pipeline.ml.onnx_runtime import OnnxClassifier
    from malaria_pipeline.pipelines.model_training.nodes import quantize_onnx_model
    from tests.helpers import tiny_bundle, with_onnx_graph

    images, index, split, _ = tiny_tables()  # 12 train, 6 validation, 6 test
    graph = with_onnx_graph(tiny_bundle())["onnx_graph"]
    evaluation = {"positive_class": "Parasitized", "threshold": 0.5}
    speeds = {"onnx": 100.0, "onnx_int8": 150.0}
    monkeypatch.setattr(onnx_quantize, "cells_per_second", lambda graphs, *a, **k: dict(speeds))

    kept, report = quantize_onnx_model(graph, images, index, split, _int8_params(max_loss=1.0), evaluation)
    assert report["kept"] and kept and report["compared_on"] == "test" and report["cells"] == 6
    int8 = OnnxClassifier(kept, path="int8", run="r", runtime="onnx_int8")
    assert int8.model == OnnxClassifier(graph, path="fp32", run="r").model  # the model description kept
    test = split["subset"].to_numpy() == "test"
    truth = index["label"].to_numpy()[test] == "Parasitized"
    p = int8.predict_proba(images.numpy()[test])[:, 0]
    assert report["onnx_int8"]["accuracy"] == ((p >= 0.5) == truth).mean()
    assert report["onnx_int8"]["roc_auc"] == pytest.approx(roc_auc_score(truth, p))
    assert report["onnx_int8"]["cells_per_second"] == 150.0

    speeds["onnx_int8"] = 90.0
    nothing, report = quantize_onnx_model(graph, images, index, split, _int8_params(max_loss=1.0), evaluation)
    assert nothing == b"" and not report["kept"] and report["why"] == "not faster than float32"

    # by hand: 0.3 points less accurate is refused at max_loss 0.002, 0.15 points is kept; so is the AUC
    from malaria_pipeline.pipelines.model_training.nodes import _int8_pays

    def pays(accuracy: float, roc_auc: float) -> tuple[bool, str]:
        fp32 = {"cells_per_second": 1.0, "accuracy": 0.96, "roc_auc": 0.99}
        int8 = {"cells_per_second": 2.0, "accuracy": accuracy, "roc_auc": roc_auc}
        return _int8_pays({"onnx": fp32, "onnx_int8": int8}, 0.002)

    below = "is more than training.onnx.int8.max_loss (0.002) below float32's"
    assert pays(0.957, 0.99) == (False, f"its accuracy {below}")
    assert pays(0.96, 0.987) == (False, f"its roc_auc {below}")
    assert pays(0.9585, 0.9885)[0]

    nothing, report = quantize_onnx_model(
        graph, images, index, split, _int8_params(quantize=False), evaluation
    )
    assert nothing == b"" and report == {"kept": False, "why": "training.onnx.int8.quantize is false"}
