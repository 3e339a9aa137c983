"""The project as a user runs it: a KedroSession over conf/, in a fresh folder."""

import mlflow
import pytest
import yaml

from malaria_pipeline.ml.checkpoint import CheckpointStore

from tests.helpers import PROJECT_ROOT


def test_every_dataset_the_pipelines_write_is_versioned():
    catalog = yaml.safe_load((PROJECT_ROOT / "conf" / "base" / "catalog.yml").read_text())
    written = {name: entry for name, entry in catalog.items() if "filepath" in entry}
    assert {"image_index", "image_tensors", "ingestion_report", "data_split", "normalization_stats", "model",
            "training_history", "lr_finder_result", "lr_finder_plot"} <= written.keys()
    assert [name for name, entry in written.items() if entry.get("versioned") is not True] == []


def test_telemetry_consent_is_off():
    assert yaml.safe_load((PROJECT_ROOT / ".telemetry").read_text()) == {"consent": False}


def test_two_runs_leave_two_versions_of_every_dataset(kedro_project, cell_folder):
    params = {"ingestion": {"source": str(cell_folder), "image_size": 16},
              "preprocessing": {"split": {"folds": 6, "fractions": {"train": 4 / 6, "validation": 1 / 6, "test": 1 / 6}}},
              "training": {"width": 4, "epochs": 1, "batch_size": 8}}
    kedro_project.run("training", **params)
    kedro_project.run("training", **params)
    data = kedro_project.root / "data"
    for path in ("02_intermediate/image_index.parquet", "02_intermediate/image_tensors.pt",
                 "08_reporting/ingestion_report.json", "05_model_input/data_split.parquet",
                 "05_model_input/normalization_stats.json", "06_models/model.pt", "08_reporting/training_history.csv"):
        versions = sorted(p.name for p in (data / path).iterdir())
        assert len(versions) == 2, (path, versions)
    report = kedro_project.load("ingestion_report")
    assert report["source"] == str(cell_folder.resolve()) and report["images"] == 42


def test_each_run_is_one_finished_mlflow_run_and_none_stays_open(kedro_project, cell_folder):
    params = {"ingestion": {"source": str(cell_folder), "image_size": 16}}
    kedro_project.run("ingestion", **params)
    kedro_project.run("ingestion", **params)  # a second session in the same process, as in a notebook
    assert mlflow.active_run() is None
    mlflow.set_tracking_uri(f"sqlite:///{kedro_project.root / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["malaria-pipeline"], output_format="list")
    assert [run.info.status for run in runs] == ["FINISHED", "FINISHED"]
    assert {run.data.params["ingestion.source"] for run in runs} == {str(cell_folder)}


def test_an_interrupted_training_run_resumes_with_training_resume(kedro_project, cell_folder, monkeypatch):
    params = {"ingestion": {"source": str(cell_folder), "image_size": 16},
              "preprocessing": {"split": {"folds": 6, "fractions": {"train": 4 / 6, "validation": 1 / 6, "test": 1 / 6}}},
              "training": {"width": 4, "epochs": 3, "batch_size": 8}}
    save = CheckpointStore.save

    def save_then_interrupt(store, state):  # Ctrl-C right after epoch 1 is checkpointed
        save(store, state)
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(CheckpointStore, "save", save_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            kedro_project.run("training", **params)
    assert not (kedro_project.root / "data" / "08_reporting" / "training_history.csv").exists()

    params["training"]["resume"] = True
    kedro_project.run("model_training", **params)
    history = kedro_project.load("training_history")
    assert history["epoch"].tolist() == [1, 2, 3]
    # The interrupted session's MLflow run was ended (KILLED), not reused by the resumed one.
    mlflow.set_tracking_uri(f"sqlite:///{kedro_project.root / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["malaria-pipeline"], output_format="list")
    assert sorted(run.info.status for run in runs) == ["FINISHED", "KILLED"]
    assert mlflow.active_run() is None
