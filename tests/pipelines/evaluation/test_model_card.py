"""The model card: written from the run's own records (the figures below are typed into the inputs here
and looked for in the card; the counts are worked out with pandas)."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest
import yaml

from malaria_pipeline.pipelines.evaluation.nodes import write_model_card
from tests.helpers import TRAIN_PARAMS, tiny_bundle, tiny_tables

INGESTION = {
    "source": "/data/cell_images.zip",
    "image_size": 16,
    "files": 25,
    "images": 24,
    "images_per_class": {"Parasitized": 12, "Uninfected": 12},
    "patients": 3,
    "skipped": [{"path": "broken.png", "reason": "truncated"}],
    "duplicates": [],
}
EVALUATION = {
    "threshold": 0.5,
    "validation": {
        "images": 6,
        "accuracy": 0.8333,
        "sensitivity": 0.6667,
        "specificity": 1.0,
        "roc_auc": 0.9444,
        "ece": 0.05,
        "ece_uncalibrated": 0.07,
        "intervals": {"accuracy": [0.5, 1.0]},
    },
    "test": {
        "images": 6,
        "accuracy": 0.9123,
        "sensitivity": 0.8765,
        "specificity": 0.9512,
        "roc_auc": 0.9876,
        "ece": 0.0126,
        "ece_uncalibrated": 0.0123,
        "intervals": {
            "accuracy": [0.8001, 0.9902],
            "sensitivity": [0.7, 1.0],
            "specificity": [0.9, 1.0],
            "roc_auc": [0.95, 1.0],
        },
        "at_specificity": [
            {"target_specificity": 0.99, "threshold": 0.8123, "sensitivity": 0.7543, "specificity": 0.9905},
            {"target_specificity": 0.999, "threshold": None, "sensitivity": 0.0, "specificity": 1.0},
        ],
    },
    "operating_point": {"threshold": 0.31, "test": {"sensitivity": 0.9611, "specificity": 0.9301}},
}


def parameters(**overrides):
    return {
        "profile": "cpu",
        "positive_class": "Parasitized",
        "cross_validation_run_id": None,
        "training": {**TRAIN_PARAMS, "epochs": 6},
        "ingestion": {"source": "/data/cell_images.zip"},
        "preprocessing": {"split": {"strategy": "patient", "seed": 42}},
        "evaluation": {"intervals": {"resamples": 1000, "level": 0.95}},
        "inference": {"threshold": 0.5},
        "registry": {"model_name": "malaria-cell-classifier"},
        **overrides,
    }


def bundle():
    point = {
        "threshold": 0.3069,
        "positive_class": "Parasitized",
        "target_sensitivity": 0.96,
        "tta": False,
        "sensitivity": 0.9655,
        "specificity": 0.9412,
    }
    return {**tiny_bundle(), "temperature": 1.1046, "operating_point": point, "best_epoch": 11}


@pytest.fixture(autouse=True)
def project(tmp_path, monkeypatch):
    """A Kedro project whose conf/base holds the test's parameters but for two that the run changed:
    ``training.epochs`` (20 in base) and ``ingestion.source`` (a URL in base)."""
    (tmp_path / "pyproject.toml").write_text(
        '[tool.kedro]\npackage_name = "malaria_pipeline"\nproject_name = "t"\nkedro_init_version = "1.0.0"\n'
    )
    base = {
        **parameters(),
        "training": {**TRAIN_PARAMS, "epochs": 20},
        "ingestion": {"source": "https://example.org/cell_images.zip"},
    }
    (tmp_path / "conf" / "base").mkdir(parents=True)
    (tmp_path / "conf" / "base" / "parameters.yml").write_text(yaml.safe_dump(base))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def card(images=None, patients=None, **overrides) -> str:
    tensors, index, split, _ = tiny_tables(count=24)
    return write_model_card(
        bundle(),
        EVALUATION,
        pd.DataFrame() if patients is None else patients,
        INGESTION,
        index,
        split,
        tensors if images is None else images,
        parameters(**overrides),
    )


def test_the_card_holds_the_runs_data_split_metrics_operating_point_and_calibration():
    text = card()
    _, index, split, _ = tiny_tables(count=24)
    merged = index.merge(split, on="path")
    for subset in ("train", "validation", "test"):
        cells = merged[merged["subset"] == subset]
        row = f"| {subset} | {cells['patient_id'].nunique()} | {len(cells)} | {(cells['label'] == 'Parasitized').sum()} |"
        assert row in text, row
    assert text.startswith("# Model card: malaria-cell-classifier\n")
    assert (
        "`/data/cell_images.zip`: 24 images (Parasitized 12, Uninfected 12) of 3 patients; 1 files skipped"
        in text
    )
    assert "resnet9, width 4, trained from scratch; input 16×16 pixels" in text
    assert (
        "| test | 6 | 0.9123 [0.8001, 0.9902] | 0.8765 [0.7000, 1.0000] | 0.9512 [0.9000, 1.0000] | 0.9876 [0.9500, 1.0000] |"
        in text
    )
    assert "| validation | 6 | 0.8333 [0.5000, 1.0000] | 0.6667 | 1.0000 | 0.9444 |" in text
    assert "95% interval from 1000 bootstrap resamples of whole patients" in text
    assert (
        "Stored operating threshold 0.3069 on P(Parasitized), chosen for a sensitivity of 0.96; on validation: "
        "sensitivity 0.9655, specificity 0.9412; on test: sensitivity 0.9611, specificity 0.9301."
    ) in text
    assert (
        "T = 1.1046; expected calibration error on test 0.0126 (0.0123 before temperature scaling)." in text
    )
    assert "Weights of epoch 11" in text
    assert "Decision support for trained microscopists" in text and "It is not a diagnosis" in text
    assert (
        'kedro run --pipelines training --params "ingestion.source=/data/cell_images.zip,profile=cpu,training.epochs=6"'
        in text
    )
    assert "colour" in text.split("## Data")[1].split("## Training")[0]  # tiny_tables' cells are random RGB


def test_grayscale_images_are_named_and_so_is_their_limitation():
    tensors, *_ = tiny_tables(count=24)
    gray = tensors[:, :1].expand(-1, 3, -1, -1).contiguous()
    text = card(images=gray)
    assert "Images: grayscale (the three channels are equal in every image checked)" in text
    assert "Trained on grayscale images: stain colour" in text
    assert "Trained on grayscale" not in card()
    gray[5, 2, 0, 0] += 1  # one pixel of colour in one checked image
    assert "Images: colour" in card(images=gray)


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("malaria-pipeline")
    yield
    while mlflow.active_run():
        mlflow.end_run()


def test_a_model_trained_on_every_patient_quotes_its_cross_validation_run(store):
    with mlflow.start_run() as cv:
        mlflow.log_params({"cross_validation.folds": 5})
        mlflow.log_metrics(
            {
                "cv.accuracy.mean": 0.9611,
                "cv.accuracy.std": 0.0082,
                "cv.roc_auc.mean": 0.9914,
                "cv.roc_auc.std": 0.0027,
                "cv.sensitivity.mean": 0.948,
                "cv.sensitivity.std": 0.0125,
                "cv.sensitivity_at_specificity_0.999.mean": 0.6391,
                "cv.sensitivity_at_specificity_0.999.std": 0.0712,
                "cv.sensitivity_at_specificity_0.99.mean": 0.9003,
                "cv.sensitivity_at_specificity_0.99.std": 0.0311,
            }
        )
    with mlflow.start_run() as training:
        text = card(cross_validation_run_id=cv.info.run_id)
    assert f"patient-grouped cross-validation**, run `{cv.info.run_id}` (5 folds" in text
    assert "| accuracy | 0.9611 | 0.0082 |" in text and "| roc_auc | 0.9914 | 0.0027 |" in text
    assert "| sensitivity | 0.9480 | 0.0125 |" in text
    assert f"MLflow run `{training.info.run_id}`" in text
    assert "--env all_patients" in text
    assert "One split of" not in text  # the claim is the cross-validation's, not the test subset's
    assert "One split of" in card()
    assert (
        "- cross-validation (mean ± std over folds, each read on its held-out cells): sensitivity 0.9003 ± "
        "0.0311 at specificity 0.99; sensitivity 0.6391 ± 0.0712 at specificity 0.999." in text
    )


def test_the_card_gives_the_sensitivity_at_the_specificity_a_smear_needs(store):
    text = card()
    assert "## At the specificity a smear needs" in text
    assert (
        "- test: sensitivity 0.7543 at specificity 0.99 (threshold 0.8123); "
        "sensitivity 0.0000 at specificity 0.999 (threshold n/a)." in text
    )
    assert "- validation:" not in text  # no such figures were given for it


def test_an_operating_point_chosen_for_a_specificity_says_so():
    tensors, index, split, _ = tiny_tables(count=24)
    model = bundle()
    model["operating_point"] = {
        **model["operating_point"],
        "target_sensitivity": None,
        "target_specificity": 0.999,
    }
    text = write_model_card(model, EVALUATION, pd.DataFrame(), INGESTION, index, split, tensors, parameters())
    assert "Stored operating threshold 0.3069 on P(Parasitized), chosen for a specificity of 0.999;" in text
    assert "chosen for a specificity of 0.999" not in card()


def test_the_card_gives_the_test_patients_with_their_fraction_interval_and_call():
    patients = pd.DataFrame(
        {
            "patient": ["P2", "P1"],
            "cells": [40, 50],
            "parasitized": [1, 10],
            "labelled_fraction": [0.0, 0.2],
            "fraction": [0.0, 0.1766],
            "fraction_low": [0.0, 0.0522],
            "fraction_high": [0.0826, 0.3341],
            "call": ["negative", "positive"],
            "rates_from": "the validation subset, at threshold 0.5",
            "subset": "test",
        }
    )
    evaluation = {**EVALUATION, "test": {**EVALUATION["test"], "patients": None}}
    tensors, index, split, _ = tiny_tables(count=24)
    model = {**bundle(), "patient_call": {"healthy_below": 0.001, "negative_below": 0.02, "min_cells": 50}}
    text = write_model_card(model, evaluation, patients, INGESTION, index, split, tensors, parameters())
    section = text.split("## Patients")[1].split("\n## ")[0]
    assert (
        "Parasitized with a chance below 0.001 (the healthy range), else **negative** when the estimate is "
        "below 0.02, else **review**" in section
    )
    assert "rates from the validation subset, at threshold 0.5" in section
    assert section.index("| P1 | 50 | 10 | 0.200 | 0.177 [0.052, 0.334] | positive |") < section.index(
        "| P2 | 40 | 1 | 0.000 | 0.000 [0.000, 0.083] | negative |"
    )
    assert "not the smear's parasitemia" in section


def test_a_poor_operating_point_or_one_chosen_on_few_cells_is_flagged_with_its_interval():
    tensors, index, split, _ = tiny_tables(count=24)
    point = {
        **bundle()["operating_point"],
        "sensitivity": 0.95,
        "specificity": 0.566,
        "positives": 121,
        "negatives": 2000,
    }
    params = parameters(
        evaluation={
            "intervals": {"resamples": 1000, "level": 0.95},
            "operating_point_checks": {"min_cells_per_class": 300, "min_rate": 0.8},
        }
    )
    text = write_model_card(
        {**bundle(), "operating_point": point},
        EVALUATION,
        pd.DataFrame(),
        INGESTION,
        index,
        split,
        tensors,
        params,
    )
    # Wilson 95% intervals, by hand: 115 of 121 (0.95 * 121 = 114.95 -> 115) and 1132 of 2000
    assert "sensitivity 0.9500 (95% interval 0.8960 to 0.9771, 121 cells)" in text
    assert "specificity 0.5660 (95% interval 0.5442 to 0.5876, 2,000 cells)" in text
    assert "**Warning: do not trust this threshold**: chosen on only 121 parasitized cells" in text
    assert (
        "specificity 0.566 (95% interval 0.544 to 0.588) where it was chosen, below evaluation.operating_point_checks.min_rate (0.8)"
        in text
    )


def test_the_card_states_the_detection_limits_in_one_sentence_a_clinician_can_read():
    sentence = (
        "On smears of patients it never saw, this model detects 20.00% parasitemia on 95% of 1,000-cell "
        "smears, and counts no parasitemia of the grid within ±25% on 90% of them; a healthy smear reads at "
        "most 0.97% on 95% of smears, and 0 of 400 healthy smears were called positive."
    )
    detection = {"cells": 1000, "lob": 0.0097, "lod": 0.2, "loq": None, "sentence": sentence}
    evaluation = {**EVALUATION, "test": {**EVALUATION["test"], "patients": None, "detection": detection}}
    tensors, index, split, _ = tiny_tables(count=24)
    model = {**bundle(), "patient_call": {"healthy_below": 0.001, "negative_below": 0.02, "min_cells": 50}}
    patients = pd.DataFrame(columns=["patient", "subset"])
    text = write_model_card(model, evaluation, patients, INGESTION, index, split, tensors, parameters())
    section = text.split("## Patients")[1].split("\n## ")[0]
    assert sentence in section and "LoB 0.0097, LoD 0.2000, LoQ none of the grid." in section


def test_a_model_that_took_its_rates_from_cross_validation_names_the_run_in_its_patients_section():
    tensors, index, split, _ = tiny_tables(count=24)
    source = "the pooled out-of-fold cells of cross-validation run cv42 (2,000 cells of 12 patients)"
    taken = {
        **bundle(),
        "patient_settings_from": "cv42",
        "count_threshold": 0.5,
        "patient_call": {"healthy_below": 0.001, "negative_below": 0.02, "min_cells": 50},
        "reference_cells": {"source": source},
    }
    text = write_model_card(taken, EVALUATION, pd.DataFrame(), INGESTION, index, split, tensors, parameters())
    patients = text.split("## Patients", 1)[1]
    assert "**Where the rates come from: cross-validation run `cv42`.**" in patients
    assert f"(P ≥ 0.5) and the call rule above are those of {source}" in patients
    assert "Where the rates come from" not in card()


def test_the_card_states_the_onnx_export_and_its_check():
    tensors, index, split, _ = tiny_tables(count=24)
    check = {
        "cells": 2048,
        "max_abs_difference": 5.96e-08,
        "tolerance": 0.0001,
        "same_labels": True,
        "opset": 18,
        "onnxruntime": "1.32.0",
        "bytes": 1650123,
        "checked_on": "validation",
    }
    text = write_model_card(
        bundle(), EVALUATION, pd.DataFrame(), INGESTION, index, split, tensors, parameters(), check
    )
    assert (
        "- Also one ONNX graph (opset 18, 1,650,123 bytes; `model.onnx` in the run's `onnx/` artifacts): uint8 "
        "images in, probabilities out, normalization and T inside. Checked against PyTorch on 2,048 validation "
        "cells with ONNX Runtime 1.32.0: the probabilities differ by at most 6e-08 (the run fails above 0.0001), "
        "the labels are the same."
    ) in text
    assert "- No ONNX graph: the run that trained it exported none." in card()
