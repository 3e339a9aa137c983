"""The Airflow DAGs of the training and cross-validation pipelines, run by Airflow 3 (`airflow dags test`,
its own environment: make airflow-install) on tiny data in a project of their own, with a SQLite metadata
database in a temporary folder: every task succeeds; a training DAG run is one MLflow run with one logged
model and one registered version, a cross-validation DAG run one run with a nested run per fold."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import PROJECT_ROOT, SMALL_PATIENTS, restored_mlflow_state, write_cells

AIRFLOW = PROJECT_ROOT / ".venv-airflow" / "bin" / "airflow"
DAGS = PROJECT_ROOT / "airflow" / "dags"

pytestmark = pytest.mark.slow


def airflow(
    args: list[str], home: Path, project: Path, timeout: int = 900, dags: Path = DAGS
) -> subprocess.CompletedProcess:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AIRFLOW"))},
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "MALARIA_PIPELINE_ROOT": str(project),
        "MALARIA_PIPELINE_PYTHON": sys.executable,
    }
    return subprocess.run(
        [str(AIRFLOW), *args], env=env, cwd=home, capture_output=True, text=True, timeout=timeout, check=False
    )


def run_dag(dag_id: str, params: str, tmp_path: Path, project: Path, dags: Path = DAGS) -> str:
    """``airflow dags test`` of ``dag_id`` with ``{"params": params}`` on a new SQLite metadata database in
    ``tmp_path``; its output, once every task succeeded."""
    if not AIRFLOW.exists():
        pytest.skip(f"no Airflow environment at {AIRFLOW.parent.parent}: run make airflow-install")
    home = tmp_path / "airflow"
    home.mkdir()
    migrated = airflow(["db", "migrate"], home, project, dags=dags)
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    done = airflow(["dags", "test", dag_id, "-c", json.dumps({"params": params})], home, project, dags=dags)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-5000:]
    assert "state=success" in output, output[-5000:]
    return output


def create_dags(project: Path, target: Path, pipelines: str) -> None:
    """``make dags``: kedro-airflow renders airflow/dag_template.j2 for ``pipelines`` of ``project``, ruff formats it."""
    env = {**os.environ, "DO_NOT_TRACK": "1", "KEDRO_DISABLE_TELEMETRY": "true"}
    bin_ = Path(sys.executable).parent
    subprocess.run(
        [
            str(bin_ / "kedro"),
            "airflow",
            "create",
            "--pipelines",
            pipelines,
            "--group-by",
            "namespace",
            "--env",
            "local",
            "--jinja-file",
            str(PROJECT_ROOT / "airflow" / "dag_template.j2"),
            "--target-dir",
            str(target),
        ],
        cwd=project,
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    subprocess.run([str(bin_ / "ruff"), "format", "--quiet", str(target)], cwd=PROJECT_ROOT, check=True)
    subprocess.run(
        [str(bin_ / "ruff"), "check", "--fix", "--quiet", str(target)], cwd=PROJECT_ROOT, check=True
    )


def test_the_committed_dags_are_what_make_dags_writes(tmp_path):
    create_dags(PROJECT_ROOT, tmp_path / "dags", "training,cross_validation")
    for name in ("malaria_pipeline_training_dag.py", "malaria_pipeline_cross_validation_dag.py"):
        written = tmp_path / "dags" / name
        assert written.read_text() == (DAGS / name).read_text(), (
            f"airflow/dags/{name} is stale: run make dags"
        )


def test_the_training_dag_runs_every_stage_into_one_mlflow_run_with_one_model_and_one_version(
    kedro_project, tmp_path
):
    cells = tmp_path / "cells"
    write_cells(cells, SMALL_PATIENTS)
    params = (
        f"ingestion.source={cells},ingestion.image_size=16,preprocessing.split.strategy=stratified,"
        "preprocessing.split.fractions.train=0.5,preprocessing.split.fractions.validation=0.25,"
        "preprocessing.split.fractions.test=0.25,training.width=4,training.epochs=1,training.batch_size=8"
    )
    output = run_dag("malaria-pipeline-training", params, tmp_path, kedro_project.root)
    for task in ("start-mlflow-run", "ingestion", "preprocessing", "model-training", "evaluation"):
        assert f"task_id={task}" in output or f"'{task}'" in output, task

    with restored_mlflow_state():
        client = kedro_project.mlflow_client()
        experiment = client.get_experiment_by_name("malaria-pipeline")
        runs = client.search_runs([experiment.experiment_id])
        (run,) = runs  # the four stages, one run
        assert run.info.status == "FINISHED"
        assert {"training.epochs", "ingestion.image_size"} <= set(run.data.params)
        assert "test.accuracy" in run.data.metrics and "train_loss" in run.data.metrics
        models = client.search_logged_models([experiment.experiment_id])
        assert [m.name for m in models if m.name == "model"] == ["model"]
        (version,) = client.search_model_versions("name = 'malaria-cell-classifier'")
        assert version.run_id == run.info.run_id


def test_the_cross_validation_dag_runs_each_fold_as_a_task_into_one_run_with_a_nested_run_per_fold(
    kedro_project, tmp_path
):
    cells = tmp_path / "cells"
    write_cells(cells, SMALL_PATIENTS)
    # K = 2 in the project's conf/local, where kedro-airflow and each task's kedro run read it
    (kedro_project.root / "conf" / "local" / "parameters.yml").write_text(
        "cross_validation:\n  folds: 2\n  validation_folds: 2\n"
    )
    dags = tmp_path / "dags"
    create_dags(kedro_project.root, dags, "cross_validation")
    params = (
        f"ingestion.source={cells},ingestion.image_size=16,training.width=4,training.epochs=1,"
        "training.batch_size=8"
    )
    output = run_dag("malaria-pipeline-cross-validation", params, tmp_path, kedro_project.root, dags)
    for task in ("start-mlflow-run", "ingestion", "cv-folds", "cv-fold-1", "cv-fold-2", "cross-validation"):
        assert f"task_id={task}" in output or f"'{task}'" in output, task
    assert "cv-fold-3" not in output

    with restored_mlflow_state():
        client = kedro_project.mlflow_client()
        experiment = client.get_experiment_by_name("malaria-pipeline")
        runs = client.search_runs([experiment.experiment_id])
        (parent,) = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
        folds = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert len(runs) == 3 and sorted(run.data.tags["fold"] for run in folds) == ["1", "2"]
        assert all(run.info.status == "FINISHED" for run in runs)
        assert {"cv.accuracy.mean", "cv.pooled.roc_auc"} <= set(parent.data.metrics)
        for fold in folds:
            assert "test.accuracy" in fold.data.metrics and fold.data.params["training.epochs"] == "1"
            assert [m.step for m in client.get_metric_history(fold.info.run_id, "valid_loss")] == [1]
