"""The project's Kedro datasets (malaria_pipeline.framework.datasets), on files in tmp_path."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from kedro.io.core import DatasetError, Version
from PIL import Image

from malaria_pipeline.cells.archive import ImageArchive
from malaria_pipeline.framework.datasets import (
    BytesDataset,
    CellImageSourceDataset,
    CheckpointStoreDataset,
    CrossValidationArtifactDataset,
    ImageFolderDataset,
    OptionalCSVDataset,
    TorchDataset,
    TrainedModelDataset,
)
from malaria_pipeline.ml.checkpoint import CheckpointStore

OLD, NEW = "2024-01-01T00.00.00.000Z", "2024-02-01T00.00.00.000Z"

# CellImageSourceDataset


def test_a_local_source_is_opened_as_an_image_archive_and_cannot_be_written(cell_folder: Path):
    dataset = CellImageSourceDataset(source=str(cell_folder))
    archive = dataset.load()
    assert isinstance(archive, ImageArchive) and len(archive.members()) == 42
    assert dataset.exists()
    with pytest.raises(DatasetError, match="read-only"):
        dataset.save({"a": 1})


def test_a_missing_source_names_the_parameter_that_sets_it(tmp_path: Path):
    dataset = CellImageSourceDataset(source=str(tmp_path / "nowhere"), parameter="inference.source")
    assert not dataset.exists()
    with pytest.raises(DatasetError, match=r"does not exist\. Set inference\.source"):
        dataset.load()


# TorchDataset


def test_tensors_and_dicts_of_tensors_come_back_as_saved_in_their_version(tmp_path: Path):
    path = str(tmp_path / "data.pt")
    images = torch.arange(24, dtype=torch.uint8).reshape(2, 3, 2, 2)
    TorchDataset(filepath=path, version=Version(None, OLD)).save(images)
    TorchDataset(filepath=path, version=Version(None, NEW)).save(
        {"images": images.flip(0), "names": ["a", "b"]}
    )
    assert torch.equal(TorchDataset(filepath=path, version=Version(OLD, None)).load(), images)
    latest = TorchDataset(filepath=path, version=Version(None, None)).load()
    assert torch.equal(latest["images"], images.flip(0)) and latest["names"] == ["a", "b"]
    assert (tmp_path / "data.pt" / NEW / "data.pt").is_file()


def test_a_torch_file_that_is_not_local_is_refused():
    with pytest.raises(DatasetError, match="reads local files only"):
        TorchDataset(filepath="s3://bucket/data.pt")


# TrainedModelDataset


def test_a_missing_model_says_to_train_first(tmp_path):
    with pytest.raises(
        Exception, match=r"Found no model in .*model\.pt: run `kedro run --pipelines training` first"
    ):
        TrainedModelDataset(filepath=str(tmp_path / "model.pt")).load()


def test_the_model_is_the_latest_version_unless_one_is_named_and_a_missing_one_lists_the_versions(tmp_path):
    path = str(tmp_path / "model.pt")
    for version in (OLD, NEW):
        TorchDataset(filepath=path, version=Version(None, version)).save(
            {"weights": torch.zeros(1), "saved": version}
        )
    latest = TrainedModelDataset(filepath=path).load()
    assert latest["saved"] == NEW and latest["source"] == str(tmp_path / "model.pt" / NEW / "model.pt")
    assert TrainedModelDataset(filepath=path, load_version=OLD).load()["saved"] == OLD
    with pytest.raises(
        DatasetError, match=rf"Found no version '2000-01-01T00.00.00.000Z' of the model.*{NEW}, {OLD}"
    ):
        TrainedModelDataset(filepath=path, load_version="2000-01-01T00.00.00.000Z").load()
    with pytest.raises(DatasetError, match="read-only"):
        TrainedModelDataset(filepath=path).save({"a": 1})


def test_the_model_comes_with_the_graphs_of_its_own_version_and_an_empty_one_is_none(tmp_path):
    path, graphs, int8 = (str(tmp_path / name) for name in ("model.pt", "model.onnx", "model_int8.onnx"))
    for version in (OLD, NEW):
        TorchDataset(filepath=path, version=Version(None, version)).save({"saved": version})
        BytesDataset(filepath=graphs, version=Version(None, version)).save(f"graph of {version}".encode())
    BytesDataset(filepath=int8, version=Version(None, OLD)).save(b"int8 of old")
    BytesDataset(filepath=int8, version=Version(None, NEW)).save(b"")  # this run kept no int8 graph
    load = TrainedModelDataset(filepath=path, onnx_filepath=graphs, onnx_int8_filepath=int8).load
    latest = load()
    assert latest["onnx_graph"] == f"graph of {NEW}".encode() and "onnx_int8_graph" not in latest
    assert latest["onnx_graph_source"] == str(tmp_path / "model.onnx" / NEW / "model.onnx")
    old = TrainedModelDataset(
        filepath=path, load_version=OLD, onnx_filepath=graphs, onnx_int8_filepath=int8
    ).load()
    assert (old["onnx_graph"], old["onnx_int8_graph"]) == (f"graph of {OLD}".encode(), b"int8 of old")
    assert "onnx_graph" not in TrainedModelDataset(filepath=path).load()  # no graph files named: none


# CheckpointStoreDataset


def test_the_checkpoint_dataset_hands_over_a_store_of_its_folder_and_cannot_be_written(tmp_path):
    dataset = CheckpointStoreDataset(folder=str(tmp_path / "checkpoint"))
    store = dataset.load()
    assert isinstance(store, CheckpointStore) and store.path == tmp_path / "checkpoint" / "last.pt"
    assert store.load() is None and dataset.exists()
    with pytest.raises(DatasetError, match="read-only"):
        dataset.save({"a": 1})


def test_an_optional_csv_is_an_empty_table_until_a_version_exists_then_the_latest(tmp_path):
    import pandas as pd
    from kedro_datasets.pandas import CSVDataset

    path = str(tmp_path / "label_issues.csv")
    optional = OptionalCSVDataset(filepath=path, version=Version(None, None), columns=["path", "rank"])
    empty = optional.load()
    assert empty.empty and list(empty.columns) == ["path", "rank"]
    for rows in (
        ["a.png"],
        ["b.png", "c.png"],
    ):  # written by another dataset of the same file, as the catalog does
        CSVDataset(filepath=path, version=Version(None, None), save_args={"index": False}).save(
            pd.DataFrame({"path": rows, "rank": range(1, len(rows) + 1)})
        )
        time.sleep(0.01)
    latest = OptionalCSVDataset(filepath=path, version=Version(None, None), columns=["path", "rank"]).load()
    assert latest["path"].tolist() == ["b.png", "c.png"]


def test_an_image_folder_version_holds_its_pngs_and_refuses_a_name_that_leaves_it(tmp_path):
    pixels = {
        "00001_cell.png": np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3),
        "00002_cell.png": np.full((4, 4, 3), 200, dtype=np.uint8),
    }
    ImageFolderDataset(
        filepath=str(tmp_path / "explanations"), version=Version(None, "2026-01-01T00.00.00.000Z")
    ).save(pixels)
    folder = tmp_path / "explanations" / "2026-01-01T00.00.00.000Z" / "explanations"
    assert sorted(p.name for p in folder.iterdir()) == sorted(pixels)
    with Image.open(folder / "00001_cell.png") as png:
        assert np.array_equal(np.asarray(png), pixels["00001_cell.png"])
    loaded = ImageFolderDataset(filepath=str(tmp_path / "explanations"), version=Version(None, None)).load()
    assert loaded.keys() == pixels.keys() and all(np.array_equal(loaded[k], pixels[k]) for k in pixels)
    for name in ("../escape.png", "/tmp/escape.png", "sub/cell.png", "cell.jpg"):
        dataset = ImageFolderDataset(
            filepath=str(tmp_path / "explanations"), version=Version(None, f"v-{len(name)}")
        )
        with pytest.raises(DatasetError, match=r"is not a plain \.png file name"):
            dataset.save({name: pixels["00002_cell.png"]})
    assert not (tmp_path / "escape.png").exists()


@pytest.fixture
def cv_experiment(tmp_path):
    """An MLflow store and experiment of this test's own (the autouse fixture restores MLflow's state)."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow.create_experiment("cv", artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_experiment(experiment_id=experiment)
    return experiment


def _finished_cv_run(settings: dict | None) -> str:
    """A run that tracking.cross_validation_run takes for a cross-validation one, with the settings artifact."""
    import mlflow

    with mlflow.start_run() as run:
        mlflow.log_metric("cv.accuracy.mean", 0.9)
        if settings is not None:
            mlflow.log_dict(settings, "cv_patient_settings.json")
    return run.info.run_id


def _claimed(run_id):
    return CrossValidationArtifactDataset(run_id=run_id, artifact_path="cv_patient_settings.json")


def test_the_claimed_settings_are_the_artifact_of_the_named_or_the_latest_run_with_its_id(cv_experiment):
    import mlflow

    assert _claimed(None).load() is None
    with pytest.raises(DatasetError, match="read-only"):
        _claimed(None).save({})
    older = _finished_cv_run({"count_threshold": 0.4})
    newer = _finished_cv_run({"count_threshold": 0.6})
    assert _claimed(older).load() == {"count_threshold": 0.4, "cross_validation_run_id": older}
    with pytest.raises(DatasetError, match="latest.*none is active"):
        _claimed("latest").load()
    with mlflow.start_run():  # a training run of the same experiment: latest is the newest CV run
        assert _claimed("latest").load() == {"count_threshold": 0.6, "cross_validation_run_id": newer}


def test_a_claimed_run_without_the_artifact_or_not_a_cross_validation_fails_by_name(cv_experiment):
    import mlflow

    old = _finished_cv_run(None)
    with pytest.raises(
        DatasetError,
        match=f"Cross-validation run {old} .*has no artifact cv_patient_settings.json.*"
        r"kedro run --pipelines cross_validation` again",
    ):
        _claimed(old).load()
    with mlflow.start_run() as other:
        pass
    with pytest.raises(
        DatasetError, match=f"MLflow run {other.info.run_id} .* is not a finished cross-validation"
    ):
        _claimed(other.info.run_id).load()
