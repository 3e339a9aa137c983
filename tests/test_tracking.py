"""MLflow runs that tell the truth: epochs logged as they end, dead runs marked KILLED, resumes linked."""

from __future__ import annotations

import socket
import subprocess

import mlflow

from malaria_pipeline import tracking

TINY = {"preprocessing": {"split": {"strategy": "stratified", "fractions": {"train": 0.5, "validation": 0.25, "test": 0.25}}},
        "training": {"width": 4, "epochs": 3, "batch_size": 8}}


def client_of(project) -> mlflow.MlflowClient:
    mlflow.set_tracking_uri(f"sqlite:///{project.root / 'mlflow.db'}")
    return mlflow.MlflowClient()


def test_each_epoch_is_in_mlflow_while_the_run_still_trains(kedro_project, cell_folder, monkeypatch):
    seen = []
    log_epoch = tracking.log_epoch

    def log_then_look(row):
        log_epoch(row)
        run = mlflow.active_run()
        client = mlflow.MlflowClient()
        seen.append({
            "epoch": row["epoch"],
            "status": client.get_run(run.info.run_id).info.status,
            "valid_loss_steps": [m.step for m in client.get_metric_history(run.info.run_id, "valid_loss")],
            "accuracy": [m.value for m in client.get_metric_history(run.info.run_id, "accuracy")],
        })

    monkeypatch.setattr(tracking, "log_epoch", log_then_look)
    kedro_project.run("training", ingestion={"source": str(cell_folder), "image_size": 16}, **TINY)
    assert [s["epoch"] for s in seen] == [1, 2, 3]
    assert [s["valid_loss_steps"] for s in seen] == [[1], [1, 2], [1, 2, 3]]
    assert {s["status"] for s in seen} == {"RUNNING"}
    history = kedro_project.load("training_history")
    assert seen[-1]["accuracy"] == history["accuracy"].tolist()

    (run,) = client_of(kedro_project).search_runs(
        [mlflow.get_experiment_by_name("malaria-pipeline").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags[tracking.HOST_TAG] == socket.gethostname() and run.data.tags[tracking.PID_TAG].isdigit()
    for name in tracking.EPOCH_METRICS:  # once per epoch, not once more when the run ends
        assert [m.step for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, name)] == [1, 2, 3], name


def test_a_run_left_running_by_a_dead_process_is_marked_killed_by_the_next_run(kedro_project, cell_folder):
    client = client_of(kedro_project)
    experiment = client.create_experiment("malaria-pipeline")
    host = socket.gethostname()
    finished = subprocess.Popen(["true"])
    finished.wait()
    sleeper = subprocess.Popen(["sleep", "120"])
    try:
        runs = {
            "dead": client.create_run(experiment, tags={"host": host, "pid": str(finished.pid)}),
            # the number of a live process, but a newer process than the one that started the run
            "recycled": client.create_run(experiment, tags={"host": host, "pid": str(sleeper.pid), "process_started": "1"}),
            "alive": client.create_run(experiment, tags={"host": host, "pid": str(sleeper.pid)}),
            "other_host": client.create_run(experiment, tags={"host": "elsewhere", "pid": str(finished.pid)}),
            "untagged": client.create_run(experiment),
        }
        kedro_project.run("ingestion", ingestion={"source": str(cell_folder), "image_size": 16})
        status = {name: client.get_run(run.info.run_id).info.status for name, run in runs.items()}
    finally:
        sleeper.kill()
    assert status == {"dead": "KILLED", "recycled": "KILLED", "alive": "RUNNING", "other_host": "RUNNING", "untagged": "RUNNING"}
    reason = client.get_run(runs["dead"].info.run_id).data.tags[tracking.KILLED_REASON_TAG]
    assert reason.startswith(f"process {finished.pid} on {host} ended without ending this run")
    newest = client.search_runs([experiment], filter_string="attributes.status = 'FINISHED'")
    assert len(newest) == 1 and newest[0].info.run_id in reason


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


def test_ctrl_c_ends_the_run_as_killed_when_kedro_exits(kedro_project, cell_folder):
    import sys

    done = subprocess.run([sys.executable, "-c", INTERRUPTED_KEDRO, str(kedro_project.root), str(cell_folder)],
                          cwd=kedro_project.root, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "KeyboardInterrupt" in done.stderr
    (run,) = client_of(kedro_project).search_runs([mlflow.get_experiment_by_name("malaria-pipeline").experiment_id])
    assert run.info.status == "KILLED"  # not FINISHED, as MLflow's own exit handler would have it
