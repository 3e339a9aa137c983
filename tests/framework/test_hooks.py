"""The project's Kedro hooks (malaria_pipeline.framework.hooks), each in a real session where what it does needs one."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
from types import SimpleNamespace

import mlflow
import pytest
from kedro.io import DataCatalog, MemoryDataset

from malaria_pipeline.framework import profiles, tracking
from malaria_pipeline.framework.hooks import CheckTrainingParameters, LogHardwareProfile
from malaria_pipeline.pipeline_registry import register_pipelines
from tests.helpers import TRAIN_PARAMS

# CheckTrainingParameters


def test_check_training_parameters_accepts_the_training_parameters_and_names_a_typo():
    CheckTrainingParameters().after_context_created(SimpleNamespace(params={"training": TRAIN_PARAMS}))
    typo = {**TRAIN_PARAMS, "max_Lr": 0.1}
    with pytest.raises(
        ValueError, match=r"training\.max_Lr is not a parameter of training: did you mean training\.max_lr\?"
    ):
        CheckTrainingParameters().after_context_created(SimpleNamespace(params={"training": typo}))


# LogHardwareProfile


@pytest.mark.parametrize(
    ("requested", "line"),
    [
        (
            "auto",
            "No CUDA device: training the cpu profile (50-pixel images, resnet9 width 16, 12 epochs); set "
            '--params "profile=gpu" or profile: gpu in conf/local/globals.yml to change it',
        ),
        (
            "cpu",
            "profile=cpu was set: training the cpu profile (50-pixel images, resnet9 width 16, 12 epochs)",
        ),
    ],
)
def test_a_training_run_says_in_one_line_which_profile_and_why(
    kedro_project, monkeypatch, caplog, requested, line
):
    monkeypatch.setattr(profiles, "_cuda_available", lambda: False)
    params = kedro_project.context(profile=requested).params
    catalog = DataCatalog({"parameters": MemoryDataset(params)})
    with caplog.at_level(logging.INFO, logger="malaria_pipeline.framework.hooks"):
        LogHardwareProfile().before_pipeline_run(pipeline=register_pipelines()["training"], catalog=catalog)
        LogHardwareProfile().before_pipeline_run(pipeline=register_pipelines()["inference"], catalog=catalog)
    (message,) = [r.getMessage() for r in caplog.records if r.name == "malaria_pipeline.framework.hooks"]
    assert message.startswith(line) and "\n" not in message


# MarkDeadMlflowRunsKilled


def test_a_run_left_running_by_a_dead_process_is_marked_killed_by_the_next_run(kedro_project, cell_folder):
    client = kedro_project.mlflow_client()
    experiment = client.create_experiment("malaria-pipeline")
    host = socket.gethostname()
    finished = subprocess.Popen(["true"])
    finished.wait()
    sleeper = subprocess.Popen(["sleep", "120"])
    try:
        runs = {
            "dead": client.create_run(experiment, tags={"host": host, "pid": str(finished.pid)}),
            # the number of a live process, but a newer process than the one that started the run
            "recycled": client.create_run(
                experiment, tags={"host": host, "pid": str(sleeper.pid), "process_started": "1"}
            ),
            "alive": client.create_run(experiment, tags={"host": host, "pid": str(sleeper.pid)}),
            "other_host": client.create_run(experiment, tags={"host": "elsewhere", "pid": str(finished.pid)}),
            "untagged": client.create_run(experiment),
        }
        kedro_project.run("ingestion", ingestion={"source": str(cell_folder), "image_size": 16})
        status = {name: client.get_run(run.info.run_id).info.status for name, run in runs.items()}
    finally:
        sleeper.kill()
    assert status == {
        "dead": "KILLED",
        "recycled": "KILLED",
        "alive": "RUNNING",
        "other_host": "RUNNING",
        "untagged": "RUNNING",
    }
    reason = client.get_run(runs["dead"].info.run_id).data.tags[tracking.KILLED_REASON_TAG]
    assert reason.startswith(f"process {finished.pid} on {host} ended without ending this run")
    newest = client.search_runs([experiment], filter_string="attributes.status = 'FINISHED'")
    assert len(newest) == 1 and newest[0].info.run_id in reason


# EndInterruptedMlflowRun

INTERRUPTED_KEDRO = """
import sys
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from malaria_pipeline.pipelines.ingestion import nodes

def interrupted(*args, **kwargs):
    raise KeyboardInterrupt  # Ctrl-C while the node runs

nodes.index_images.__code__ = interrupted.__code__
bootstrap_project(sys.argv[1])
with KedroSession.create(project_path=sys.argv[1], runtime_params={"ingestion": {"source": sys.argv[2]}}) as session:
    session.run(pipeline_names=["ingestion"])
"""


@pytest.mark.slow  # a kedro process interrupted mid-training (about 13 s)
def test_ctrl_c_ends_the_run_as_killed_when_kedro_exits(kedro_project, cell_folder):
    # A process of its own, not KedroProject.run: what is tested is what happens when that process exits.
    done = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_KEDRO, str(kedro_project.root), str(cell_folder)],
        cwd=kedro_project.root,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode != 0 and "KeyboardInterrupt" in done.stderr
    (run,) = kedro_project.mlflow_client().search_runs(
        [mlflow.get_experiment_by_name("malaria-pipeline").experiment_id]
    )
    assert run.info.status == "KILLED"  # not FINISHED, as MLflow's own exit handler would have it


def test_a_model_on_every_patient_is_told_each_choice_of_its_cross_validation_that_it_does_not_follow():
    from malaria_pipeline.framework.hooks import claim_mismatches

    metrics = {
        "cv.recommended_epochs": 11.0,
        "cv.recommended_temperature": 1.1234,
        "cv.recommended_operating_threshold": 0.2512,
    }
    following = {"without_validation": {"temperature": 1.1234, "operating_threshold": 0.2512}}
    assert claim_mismatches({"epochs": 11}, following, metrics) == []
    advice = claim_mismatches(
        {"epochs": 12}, {"without_validation": {"temperature": None, "operating_threshold": 0.3}}, metrics
    )
    assert advice == [
        "training.epochs is 12 but the folds kept 11 epochs (median): set training.epochs=11",
        "evaluation.without_validation.temperature is None but the folds chose 1.1234 (median): "
        "set evaluation.without_validation.temperature=1.1234",
        "evaluation.without_validation.operating_threshold is 0.3 but the folds chose 0.2512 (median): "
        "set evaluation.without_validation.operating_threshold=0.2512",
    ]
    # A cross-validation run of before the folds chose thresholds (no such metrics) asks nothing of them.
    assert claim_mismatches({"epochs": 11}, {}, {"cv.recommended_epochs": 11.0}) == []
