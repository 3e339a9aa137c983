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


@pytest.mark.slow  # a whole training run in a thread (about 20 s)
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


def test_the_fold_of_a_namespace_is_its_top_level_cv_fold_number():
    assert [
        tracking.fold_of(n)
        for n in ("cv_fold_3", "cv_fold_3.model_training", "cv_fold_12", "cv_folds", "cross_validation", None)
    ] == [3, 3, 12, None, None, None]


def _node(namespace):
    from types import SimpleNamespace

    return SimpleNamespace(namespace=namespace)


def test_each_folds_nodes_log_into_one_nested_run_that_ends_with_each_node(own_tracking_store):
    from malaria_pipeline.framework.hooks import NestFoldRuns

    client, hook = mlflow.MlflowClient(), NestFoldRuns()
    training = {"params:training": {"epochs": 2, "max_lr": 0.01}, "image_index": "not a parameter"}
    with mlflow.start_run() as parent:
        hook.before_pipeline_run()
        hook.before_node_run(_node("cv_fold_1.model_training"), training)
        first = mlflow.active_run().info.run_id
        tracking.log_metrics({"training.temperature": 1.5})
        hook.after_node_run(_node("cv_fold_1.model_training"))
        assert mlflow.active_run().info.run_id == parent.info.run_id  # before the node's outputs are saved
        hook.before_node_run(_node("cv_fold_2"), {})
        second = mlflow.active_run().info.run_id
        hook.on_node_error(_node("cv_fold_2"))
        hook.before_node_run(_node("cross_validation"), {"params:cross_validation": {"folds": 2}})
        assert mlflow.active_run().info.run_id == parent.info.run_id  # the pooling logs into the parent
        hook.after_node_run(_node("cross_validation"))
        # another process (an Airflow task, a fold run alone) finds fold 1's run by its tag
        other = NestFoldRuns()
        other.before_pipeline_run()
        other.before_node_run(_node("cv_fold_1"), {})
        assert mlflow.active_run().info.run_id == first
        tracking.log_metrics({"test.accuracy": 0.9, "test.roc_auc": None})
        other.after_node_run(_node("cv_fold_1"))
    runs = {run_id: client.get_run(run_id) for run_id in (first, second)}
    assert [runs[first].info.status, runs[second].info.status] == ["FINISHED", "FAILED"]
    data = runs[first].data
    assert data.tags["mlflow.parentRunId"] == parent.info.run_id and data.tags[tracking.FOLD_TAG] == "1"
    assert data.params == {"training.epochs": "2", "training.max_lr": "0.01"}
    assert data.metrics == {"training.temperature": 1.5, "test.accuracy": 0.9}
    assert data.tags[tracking.PID_TAG] == str(os.getpid())  # so a killed process's folds are swept too
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert len(children) == 2


def test_ctrl_c_in_a_fold_ends_its_run_and_the_parent_killed(own_tracking_store):
    from malaria_pipeline.framework.hooks import EndInterruptedMlflowRun, NestFoldRuns

    client, folds, interrupted = mlflow.MlflowClient(), NestFoldRuns(), EndInterruptedMlflowRun()
    parent = mlflow.start_run()
    interrupted.before_pipeline_run()
    folds.before_pipeline_run()
    folds.before_node_run(_node("cv_fold_1"), {})
    child = mlflow.active_run().info.run_id
    interrupted._end_interrupted_run()  # what the next session, or the exit handler, does after Ctrl-C
    assert mlflow.active_run() is None
    assert [client.get_run(r).info.status for r in (child, parent.info.run_id)] == ["KILLED", "KILLED"]


def test_without_an_active_run_a_fold_logs_nothing():
    from malaria_pipeline.framework.hooks import NestFoldRuns

    hook = NestFoldRuns()
    assert mlflow.active_run() is None
    hook.before_pipeline_run()
    hook.before_node_run(_node("cv_fold_1"), {"params:training": {"epochs": 2}})
    tracking.log_metrics({"test.accuracy": 0.9})
    hook.after_node_run(_node("cv_fold_1"))
    assert mlflow.active_run() is None
