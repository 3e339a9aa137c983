"""The registered pipelines run by Kedro's runner over the project's own catalog.yml, in tmp_path."""

from pathlib import Path

import numpy as np
import pytest
import torch
from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog
from kedro.runner import SequentialRunner

from malaria_pipeline.ml import load_model
from malaria_pipeline.pipeline_registry import register_pipelines
from malaria_pipeline.settings import CONFIG_LOADER_ARGS
from tests.helpers import PROJECT_ROOT, add_bad_files, zip_folder


def project_catalog(tmp_path: Path, source: Path) -> DataCatalog:
    config = OmegaConfigLoader(
        conf_source=str(PROJECT_ROOT / "conf"), **CONFIG_LOADER_ARGS, runtime_params={"ingestion": {"source": str(source)}},
    )
    # No MLflow run here (the session-based tests in test_project.py cover MLflow): datasets that
    # MLflow wraps are used unwrapped, and MLflow's own metrics and model datasets live in memory.
    entries = {}
    for name, entry in config["catalog"].items():
        if entry["type"].startswith("kedro_mlflow.io.artifacts"):
            entry = entry["dataset"]
        elif entry["type"].startswith("kedro_mlflow"):
            entry = {"type": "MemoryDataset"}
        for key in ("filepath", "folder"):
            if key in entry:
                entry[key] = str(tmp_path / entry[key])
        entries[name] = entry
    catalog = DataCatalog.from_config(entries)
    parameters = config["parameters"]
    parameters["ingestion"]["image_size"] = 16
    parameters["preprocessing"]["split"].update(folds=4, fractions={"train": 0.5, "validation": 0.25, "test": 0.25})
    parameters["training"].update(TINY_TRAINING)
    parameters["lr_finder"]["num_batches"] = 10
    catalog["params:ingestion"] = parameters["ingestion"]
    catalog["params:preprocessing.split"] = parameters["preprocessing"]["split"]
    catalog["params:training"] = parameters["training"]
    catalog["params:lr_finder"] = parameters["lr_finder"]
    catalog["params:evaluation"] = parameters["evaluation"]
    return catalog


# A ResNet-9 of width 4 for 2 epochs: seconds on a CPU.
TINY_TRAINING = {"width": 4, "epochs": 2, "batch_size": 8, "pad": 2}


def test_registry_names_the_pipelines_and_training_is_the_default():
    pipelines = register_pipelines()
    assert {"ingestion", "preprocessing", "model_training", "evaluation", "lr_finder", "training", "__default__"} <= pipelines.keys()
    assert pipelines["__default__"] is pipelines["training"]
    parts = ("ingestion", "preprocessing", "model_training", "evaluation")
    assert set(pipelines["training"].nodes) == {n for part in parts for n in pipelines[part].nodes}


@pytest.mark.parametrize("as_zip", [False, True], ids=["folder", "zip"])
def test_training_pipeline_runs_on_real_pngs_some_broken(cell_folder, tmp_path, as_zip):
    broken = add_bad_files(cell_folder)
    source = zip_folder(cell_folder, tmp_path / "cells.zip") if as_zip else cell_folder
    catalog = project_catalog(tmp_path / "out", source)
    SequentialRunner().run(register_pipelines()["training"], catalog)

    index, tensors = catalog.load("image_index"), catalog.load("image_tensors")
    report, split, stats = catalog.load("ingestion_report"), catalog.load("data_split"), catalog.load("normalization_stats")
    assert len(index) == len(tensors) == 42 and tensors.shape[1:] == (3, 16, 16)
    assert {entry["path"] for entry in report["skipped"]} == broken.keys()
    assert split["path"].tolist() == index["path"].tolist()
    assert index.assign(subset=split["subset"]).groupby("patient_id")["subset"].nunique().max() == 1
    train = torch.from_numpy(np.flatnonzero(split["subset"].to_numpy() == "train"))
    direct = tensors[train].double() / 255
    assert stats["mean"] == pytest.approx(direct.mean(dim=(0, 2, 3)).tolist(), abs=1e-4)
    assert stats["std"] == pytest.approx(direct.std(dim=(0, 2, 3), correction=0).tolist(), abs=1e-4)

    history, bundle = catalog.load("training_history"), catalog.load("model")
    assert history["epoch"].tolist() == [1, 2]
    assert list(history.columns) == ["epoch", "stage", "train_loss", "valid_loss", "accuracy", "lr", "seconds"]
    model = load_model(bundle)
    assert model.class_names == ["Parasitized", "Uninfected"] and model.image_size == 16
    assert model.predict_proba(tensors[:5]).shape == (5, 2)
    assert (tmp_path / "out" / "data" / "06_models" / "checkpoint" / "last.pt").exists()

    metrics = catalog.load("evaluation_metrics")
    assert metrics["positive_class"] == "Parasitized"
    for subset in ("validation", "test"):
        report = metrics[subset]
        assert report["images"] == (split["subset"] == subset).sum()
        assert report["true_positives"] + report["false_negatives"] + report["false_positives"] + report["true_negatives"] == report["images"]
        assert report["false_negatives_phrase"].endswith("parasitized cells" + report["false_negatives_phrase"].split("cells")[1])
        assert [p["threshold"] for p in report["operating_points"]][:2] == [0.02, 0.05]
        assert {p["patient_id"] for p in report["per_patient"]} == set(index[split["subset"] == subset]["patient_id"])
    predictions = catalog.load("evaluation_predictions")
    assert set(predictions["subset"]) == {"validation", "test"} and predictions["p_positive"].between(0, 1).all()
    for figure in ("confusion_matrix", "roc_curve", "training_curves", "top_losses", "sample_images"):
        png = next((tmp_path / "out" / "data" / "08_reporting" / f"{figure}.png").iterdir()) / f"{figure}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", figure


def test_lr_finder_runs_on_the_latest_preprocessed_data(cell_folder, tmp_path):
    catalog = project_catalog(tmp_path / "out", cell_folder)
    pipelines = register_pipelines()
    SequentialRunner().run(pipelines["ingestion"] + pipelines["preprocessing"], catalog)
    SequentialRunner().run(pipelines["lr_finder"], catalog)
    result = catalog.load("lr_finder_result")
    assert len(result["lrs"]) == len(result["losses"]) and result["lrs"][0] == pytest.approx(1e-6)
    assert result["lrs"][0] <= result["suggested_max_lr"] <= result["lrs"][-1]
    assert next((tmp_path / "out" / "data" / "08_reporting" / "lr_finder.png").iterdir()).stat().st_size > 1000
