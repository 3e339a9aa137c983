"""The first task of an Airflow DAG run creates the MLflow run that its tasks log into."""

from __future__ import annotations

import mlflow

from malaria_pipeline.framework.dag_run import start_run
from tests.helpers import restored_mlflow_state


def test_a_dag_runs_mlflow_run_is_created_in_the_projects_store_and_experiment(kedro_project):
    with restored_mlflow_state():
        run_id = start_run(kedro_project.root, "training")
        # read back with a client of the project's own store (conf/local/mlflow.yml of the test project)
        client = mlflow.MlflowClient(f"sqlite:///{kedro_project.root / 'mlflow.db'}")
        run = client.get_run(run_id)
        assert run.info.run_name == "training" and run.info.status == "RUNNING"
        assert client.get_experiment(run.info.experiment_id).name == "malaria-pipeline"
        assert [r.info.run_id for r in client.search_runs([run.info.experiment_id])] == [run_id]
