"""MLflow runs that tell the truth: epochs logged as they end, and nothing logged outside a run.

(The hooks that mark dead runs KILLED and end interrupted ones are tested in tests/framework/test_hooks.py.)
"""

from __future__ import annotations

import os
import socket

import mlflow
import pytest

from malaria_pipeline.framework import tracking

TINY = {
    "preprocessing": {
        "split": {"strategy": "stratified", "fractions": {"train": 0.5, "validation": 0.25, "test": 0.25}}
    },
    "training": {"width": 4, "epochs": 3, "batch_size": 8},
}


def test_each_epoch_is_in_mlflow_while_the_run_still_trains(kedro_project, cell_folder, monkeypatch):
    seen = []
    log_epoch = tracking.log_epoch

    def log_then_look(row):
        log_epoch(row)
        run = mlflow.active_run()
        client = mlflow.MlflowClient()
        seen.append(
            {
                "epoch": row["epoch"],
                "status": client.get_run(run.info.run_id).info.status,
                "valid_loss_steps": [
                    m.step for m in client.get_metric_history(run.info.run_id, "valid_loss")
                ],
                "accuracy": [m.value for m in client.get_metric_history(run.info.run_id, "accuracy")],
            }
        )

    monkeypatch.setattr(tracking, "log_epoch", log_then_look)
    kedro_project.run("training", ingestion={"source": str(cell_folder), "image_size": 16}, **TINY)
    assert [s["epoch"] for s in seen] == [1, 2, 3]
    assert [s["valid_loss_steps"] for s in seen] == [[1], [1, 2], [1, 2, 3]]
    assert {s["status"] for s in seen} == {"RUNNING"}
    history = kedro_project.load("training_history")
    assert seen[-1]["accuracy"] == history["accuracy"].tolist()

    (run,) = kedro_project.mlflow_client().search_runs(
        [mlflow.get_experiment_by_name("malaria-pipeline").experiment_id]
    )
    assert run.info.status == "FINISHED"
    assert (
        run.data.tags[tracking.HOST_TAG] == socket.gethostname() and run.data.tags[tracking.PID_TAG].isdigit()
    )
    for name in tracking.EPOCH_METRICS:  # once per epoch, not once more when the run ends
        assert [m.step for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, name)] == [
            1,
            2,
            3,
        ], name


def test_outside_a_run_nothing_is_logged_and_nothing_fails():
    assert mlflow.active_run() is None and tracking.active_run_id() is None
    tracking.log_epoch(
        {"epoch": 1, "train_loss": 0.5, "valid_loss": 0.4, "accuracy": 0.9, "lr": 0.01, "seconds": 2.0}
    )
    tracking.set_tags({tracking.PROFILE_TAG: "cpu"})
    assert mlflow.active_run() is None


def test_the_owner_tags_name_this_host_and_process():
    tags = tracking.owner_tags()
    assert tags[tracking.HOST_TAG] == socket.gethostname() and tags[tracking.PID_TAG] == str(os.getpid())
    if os.path.exists(f"/proc/{os.getpid()}/stat"):  # Linux: the start time tells a recycled pid apart
        assert tags[tracking.PROCESS_STARTED_TAG].isdigit()


@pytest.fixture
def own_tracking_store(tmp_path):
    """An MLflow store of this test's own, and MLflow's default tracking URI back afterwards."""
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("child-runs")
    yield
    mlflow.set_tracking_uri(None)


def test_a_fold_runs_nested_under_the_active_run_and_ends_finished_failed_or_killed(own_tracking_store):
    client = mlflow.MlflowClient()
    outcomes = {}
    with mlflow.start_run() as parent:
        with tracking.child_run(
            "fold 1 of 3", {"training": {"epochs": 2, "max_lr": 0.01}}, {tracking.FOLD_TAG: 1}
        ) as run_id:
            tracking.log_metrics({"test.accuracy": 0.9, "test.roc_auc": None})
            outcomes["finished"] = run_id
        for name, error in (("failed", RuntimeError("out of memory")), ("killed", KeyboardInterrupt())):
            with pytest.raises(type(error)), tracking.child_run(name, {}, {}) as run_id:
                outcomes[name] = run_id
                raise error
        assert mlflow.active_run().info.run_id == parent.info.run_id  # the parent is active again
    runs = {name: client.get_run(run_id) for name, run_id in outcomes.items()}
    assert {name: run.info.status for name, run in runs.items()} == {
        "finished": "FINISHED",
        "failed": "FAILED",
        "killed": "KILLED",
    }
    finished = runs["finished"].data
    assert (
        finished.tags["mlflow.parentRunId"] == parent.info.run_id and finished.tags[tracking.FOLD_TAG] == "1"
    )
    assert finished.params == {"training.epochs": "2", "training.max_lr": "0.01"}
    assert finished.metrics == {"test.accuracy": 0.9}
    assert finished.tags[tracking.PID_TAG] == str(os.getpid())  # so a killed process's folds are swept too


def test_without_an_active_run_a_fold_logs_nothing():
    assert mlflow.active_run() is None
    with tracking.child_run("fold 1 of 3", {"a": 1}, {}) as run_id:
        tracking.log_metrics({"test.accuracy": 0.9})
    assert run_id is None and mlflow.active_run() is None
