"""The composed `training` pipeline (ingestion, preprocessing, model_training, evaluation) run end to end
over the project's own catalog.yml, in a KedroProject in tmp_path."""

import base64
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from malaria_pipeline.ml import load_model
from tests.helpers import add_bad_files, free_port, image_bytes, zip_folder

# 4 folds of the six patients, and a ResNet-9 of width 4 for 2 epochs: seconds on a CPU.
TINY_SPLIT_AND_TRAINING = {
    "preprocessing": {"split": {"folds": 4, "fractions": {"train": 0.5, "validation": 0.25, "test": 0.25}}},
    "training": {"width": 4, "epochs": 2, "batch_size": 8, "pad": 2},
}


@pytest.mark.parametrize(
    "as_zip", [pytest.param(False, marks=pytest.mark.slow), True], ids=["folder", "zip"]
)  # the folder: end to end again, slow (make test-slow)
def test_training_pipeline_runs_on_real_pngs_some_broken(kedro_project, cell_folder, tmp_path, as_zip):
    broken = add_bad_files(cell_folder)
    source = zip_folder(cell_folder, tmp_path / "cells.zip") if as_zip else cell_folder
    kedro_project.run(
        "training", ingestion={"source": str(source), "image_size": 16}, **TINY_SPLIT_AND_TRAINING
    )
    catalog = kedro_project.context().catalog  # the latest version of each dataset

    index, tensors = catalog.load("image_index"), catalog.load("image_tensors")
    report, split, stats = (
        catalog.load("ingestion_report"),
        catalog.load("data_split"),
        catalog.load("normalization_stats"),
    )
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
    assert list(history.columns) == [
        "epoch",
        "stage",
        "train_loss",
        "valid_loss",
        "accuracy",
        "lr",
        "seconds",
    ]
    model = load_model(bundle)
    assert model.class_names == ["Parasitized", "Uninfected"] and model.image_size == 16
    assert model.predict_proba(tensors[:5]).shape == (5, 2)
    assert (kedro_project.root / "data" / "06_models" / "checkpoint" / "last.pt").exists()

    metrics = catalog.load("evaluation_metrics")
    assert metrics["positive_class"] == "Parasitized"
    for subset in ("validation", "test"):
        report = metrics[subset]
        assert report["images"] == (split["subset"] == subset).sum()
        assert (
            report["true_positives"]
            + report["false_negatives"]
            + report["false_positives"]
            + report["true_negatives"]
            == report["images"]
        )
        assert report["false_negatives_phrase"].endswith(
            "parasitized cells" + report["false_negatives_phrase"].split("cells")[1]
        )
        assert [p["threshold"] for p in report["operating_points"]][:2] == [0.02, 0.05]
        assert {p["patient_id"] for p in report["per_patient"]} == set(
            index[split["subset"] == subset]["patient_id"]
        )
    predictions = catalog.load("evaluation_predictions")
    assert (
        set(predictions["subset"]) == {"validation", "test"}
        and predictions["p_parasitized"].between(0, 1).all()
    )
    # calibrated on validation: T in the model file, ECE before and after, the operating point of the model
    assert bundle["temperature"] > 0 and metrics["temperature"] == bundle["temperature"]
    assert all(
        0 <= metrics[s]["ece"] <= 1 and 0 <= metrics[s]["ece_uncalibrated"] <= 1
        for s in ("validation", "test")
    )
    point = metrics["operating_point"]
    assert (
        point["threshold"] == bundle["operating_point"]["threshold"] and point["target_sensitivity"] == 0.96
    )  # conf/base
    assert point["validation"]["sensitivity"] >= 0.96 and set(point["test"]) == {"sensitivity", "specificity"}
    for figure in (
        "confusion_matrix",
        "roc_curve",
        "training_curves",
        "top_losses",
        "sample_images",
        "reliability_diagram",
        "explanations",
    ):
        png = (
            next((kedro_project.root / "data" / "08_reporting" / f"{figure}.png").iterdir()) / f"{figure}.png"
        )
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", figure


@pytest.mark.slow
def test_two_machines_on_loopback_train_one_model_logged_and_saved_once(kedro_project, cell_folder, tmp_path):
    # Node 0 is this `training` run; node 1, a second launch on the same machine, joins with the command of
    # docs/distributed.md. Rank 0 sends node 1 the configuration and the images: node 1 runs in an empty folder.
    endpoint = f"127.0.0.1:{free_port()}"
    elsewhere = tmp_path / "node1"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("KEDRO_LOGGING_CONFIG",)}
    with (tmp_path / "node1.log").open("w") as log:
        joiner = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "malaria_pipeline.ml.distributed",
                "--nnodes",
                "2",
                "--node-rank",
                "1",
                "--rdzv-endpoint",
                endpoint,
            ],
            cwd=elsewhere,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            training = {
                **TINY_SPLIT_AND_TRAINING["training"],
                "distributed": {"nnodes": 2, "nproc_per_node": 1, "rdzv_endpoint": endpoint},
            }
            kedro_project.run(
                "training",
                ingestion={"source": str(cell_folder), "image_size": 16},
                **{**TINY_SPLIT_AND_TRAINING, "training": training},
            )
            assert joiner.wait(timeout=120) == 0, (tmp_path / "node1.log").read_text()[-3000:]
        finally:
            joiner.kill()
    node1 = (tmp_path / "node1.log").read_text()
    assert f"Joining the training run at {endpoint} as machine 1 of 2" in node1
    assert " malaria_pipeline.ml.train: " not in node1  # rank 1 reports nothing: rank 0 prints the table
    assert list(elsewhere.iterdir()) == []  # no data, no checkpoint, no model on node 1

    client = kedro_project.mlflow_client()
    (run,) = client.search_runs([client.get_experiment_by_name("malaria-pipeline").experiment_id])
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "valid_loss")] == [
        1,
        2,
    ]  # once per epoch
    assert len(list((kedro_project.root / "data" / "06_models" / "model.pt").iterdir())) == 1
    history = kedro_project.load("training_history")
    assert history["epoch"].tolist() == [1, 2]
    assert (
        client.get_model_version_by_alias("malaria-cell-classifier", "challenger").run_id == run.info.run_id
    )


@pytest.mark.slow
def test_two_processes_under_the_kedro_command_print_each_epoch_once(kedro_project, cell_folder):
    # The `kedro` command itself (the script, not `python -m kedro`): each spawned process re-imports the
    # script, and with it the project's logging.
    params = (
        f"ingestion.source={cell_folder},ingestion.image_size=16,training.width=4,training.epochs=2,"
        "training.batch_size=8,preprocessing.split.strategy=stratified,preprocessing.split.fractions.train=0.5,"
        "preprocessing.split.fractions.validation=0.25,preprocessing.split.fractions.test=0.25,"
        f"training.distributed.nproc_per_node=2,training.distributed.rdzv_endpoint=127.0.0.1:{free_port()}"
    )
    env = {
        **os.environ,
        "KEDRO_LOGGING_CONFIG": str(kedro_project.root / "conf" / "logging.yml"),
    }  # as make does
    done = subprocess.run(
        [str(Path(sys.executable).parent / "kedro"), "run", "--pipelines", "training", "--params", params],
        cwd=kedro_project.root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert "Starting 2 training processes on this machine (1 machines, gloo" in done.stdout
    rows = [
        line.split("malaria_pipeline.ml.train:")[1]
        for line in done.stdout.splitlines()
        if "malaria_pipeline.ml.train:" in line
    ]
    assert sum(row.split()[:2] == ["1", "full"] for row in rows) == 1, rows
    assert sum(row.split()[:2] == ["2", "full"] for row in rows) == 1, rows
    assert sum("Data-parallel in 2 processes" in row for row in rows) == 1, rows


@pytest.mark.slow
def test_a_failing_training_process_fails_the_run_with_its_error_and_leaves_no_mlflow_run_open(
    kedro_project, cell_folder
):
    two = {"nproc_per_node": 2, "rdzv_endpoint": f"127.0.0.1:{free_port()}"}
    params = {"ingestion": {"source": str(cell_folder), "image_size": 16}, **TINY_SPLIT_AND_TRAINING}
    kedro_project.run("training", **{**params, "training": {**params["training"], "distributed": two}})
    # resuming with other epochs: every process refuses the checkpoint, which rank 0 sent them
    resumed = {
        **params["training"],
        "epochs": 3,
        "resume": True,
        "distributed": {**two, "rdzv_endpoint": f"127.0.0.1:{free_port()}"},
    }
    with pytest.raises(
        Exception,
        match=r"Training process of rank \d failed: ValueError: The "
        r"checkpoint .* belongs to another run \(it differs in \['epochs', 'stages'\]\)",
    ):
        kedro_project.run("training", **{**params, "training": resumed})
    client = kedro_project.mlflow_client()
    runs = client.search_runs([client.get_experiment_by_name("malaria-pipeline").experiment_id])
    assert sorted(run.info.status for run in runs) == ["FAILED", "FINISHED"]


STAGES = ["ingestion", "preprocessing", "model_training", "evaluation"]


@pytest.mark.slow
def test_the_stages_run_alone_in_turn_end_as_one_training_run_with_one_mlflow_model(
    kedro_project, cell_folder
):
    # as an orchestrator runs them: kedro run --pipelines training --namespaces <stage>, one after another
    params = {"ingestion": {"source": str(cell_folder), "image_size": 16}, **TINY_SPLIT_AND_TRAINING}
    kedro_project.run("training", **params)
    whole = _latest(kedro_project)
    for stage in STAGES:
        kedro_project.run("training", namespaces=[stage], **params)
    staged = _latest(kedro_project)

    assert staged["model_version"] > whole["model_version"]  # the stages wrote a model of their own
    assert staged["weights"] == whole["weights"]
    assert staged["history"].drop(columns="seconds").equals(whole["history"].drop(columns="seconds"))
    assert staged["metrics"] == whole["metrics"]

    client = kedro_project.mlflow_client()
    runs = client.search_runs(
        [client.get_experiment_by_name("malaria-pipeline").experiment_id],
        order_by=["attributes.start_time ASC"],
    )
    assert len(runs) == 5 and {run.info.status for run in runs} == {"FINISHED"}
    logged = client.search_logged_models(experiment_ids=[runs[0].info.experiment_id])
    models_of = {
        run.info.run_id: [m.name for m in logged if m.source_run_id == run.info.run_id] for run in runs
    }
    with_model = [run for run in runs if models_of[run.info.run_id]]
    # each: the served model ("model") and the PyTorch flavour of the network ("classifier")
    assert len(logged) == 4 and all(
        sorted(names) == ["classifier", "model"] for names in models_of.values() if names
    )
    # the whole run and, of the four stages, the evaluation's: one MLflow model each, one registered version each
    assert [run.info.run_id for run in with_model] == [runs[0].info.run_id, runs[4].info.run_id]
    versions = client.search_model_versions("name = 'malaria-cell-classifier'")
    assert sorted(v.run_id for v in versions) == sorted(run.info.run_id for run in with_model)
    # the staged MLflow model is the model the stages trained, and answers as the whole run's does
    rows = pd.DataFrame({"image": [base64.b64encode(image_bytes(20, 20, seed=i)).decode() for i in range(4)]})
    answers = [mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model").predict(rows) for run in with_model]
    assert answers[0]["p_parasitized"].tolist() == answers[1]["p_parasitized"].tolist()


def _latest(project) -> dict:
    catalog = project.context().catalog
    bundle = catalog.load("model")
    digest = hashlib.sha256()
    for name, tensor in bundle["state_dict"].items():
        digest.update(name.encode() + tensor.numpy().tobytes())
    model_versions = sorted(p.name for p in (project.root / "data" / "06_models" / "model.pt").iterdir())
    return {
        "weights": digest.hexdigest(),
        "history": catalog.load("training_history"),
        "metrics": catalog.load("evaluation_metrics"),
        "model_version": model_versions[-1],
    }
