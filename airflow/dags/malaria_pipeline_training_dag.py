"""The `training` pipeline of malaria_pipeline as an Airflow DAG: one task per Kedro namespace,
each a `kedro run --pipelines training --namespaces <namespace>` in the project's own
environment, all logging into one MLflow run that the first task creates (a cross-validation fold's
task into a run nested under it, tagged with its fold).

Written by kedro-airflow from airflow/dag_template.j2 (`make dags`): edit the template, not this file.
Airflow runs in an environment of its own (`make airflow-install`, docs/orchestration.md).

- MALARIA_PIPELINE_ROOT: the project's root (default: two folders above this file);
- MALARIA_PIPELINE_PYTHON: the project's Python (default: <root>/.venv/bin/python);
- the DAG run's conf `{"params": "<key>=<value>,..."}` goes to every task as `kedro run --params`.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import dag

PROJECT = os.environ.get("MALARIA_PIPELINE_ROOT") or str(Path(__file__).resolve().parents[2])
PYTHON = os.environ.get("MALARIA_PIPELINE_PYTHON") or f"{PROJECT}/.venv/bin/python"
KEDRO_ENV = "local"
ENVIRONMENT = {
    "DO_NOT_TRACK": "1",
    "KEDRO_DISABLE_TELEMETRY": "true",
    "KEDRO_LOGGING_CONFIG": f"{PROJECT}/conf/logging.yml",
    "KEDRO_PARAMS": "{{ dag_run.conf.get('params', '') if dag_run.conf else '' }}",
    # the run that the first task created (its last line of output), resumed by each task's kedro-mlflow
    "MLFLOW_RUN_ID": "{{ ti.xcom_pull(task_ids='start-mlflow-run') }}",
}


def kedro_task(namespace: str) -> BashOperator:
    return BashOperator(
        task_id=namespace.replace("_", "-"),
        cwd=PROJECT,
        env=ENVIRONMENT,
        append_env=True,
        bash_command=f"{PYTHON} -m kedro run --pipelines training --env {KEDRO_ENV} "
        f"--namespaces {namespace}" + ' ${KEDRO_PARAMS:+--params "$KEDRO_PARAMS"}',
    )


@dag(
    dag_id="malaria-pipeline-training",
    start_date=datetime(2026, 1, 1),
    max_active_runs=1,
    schedule=None,
    catchup=False,
    default_args={"retries": 0},
)
def malaria_pipeline_training():
    start = BashOperator(
        task_id="start-mlflow-run",
        cwd=PROJECT,
        env={
            key: ENVIRONMENT[key]
            for key in ("DO_NOT_TRACK", "KEDRO_DISABLE_TELEMETRY", "KEDRO_LOGGING_CONFIG")
        },
        append_env=True,
        bash_command=f"{PYTHON} -m malaria_pipeline.framework.dag_run --pipeline training "
        f"--env {KEDRO_ENV} | tail -n 1",
    )
    tasks = {
        "ingestion": kedro_task("ingestion"),
        "evaluation": kedro_task("evaluation"),
        "preprocessing": kedro_task("preprocessing"),
        "model_training": kedro_task("model_training"),
    }
    start >> tasks["ingestion"]
    tasks["ingestion"] >> tasks["evaluation"]
    tasks["model_training"] >> tasks["evaluation"]
    tasks["preprocessing"] >> tasks["evaluation"]
    tasks["ingestion"] >> tasks["preprocessing"]
    tasks["ingestion"] >> tasks["model_training"]
    tasks["preprocessing"] >> tasks["model_training"]


malaria_pipeline_training()
