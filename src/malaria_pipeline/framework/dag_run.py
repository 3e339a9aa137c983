"""The MLflow run of one Airflow DAG run: its first task creates it, every other task logs into it.

kedro-mlflow opens a run for each ``kedro run``, so the tasks of a DAG (one ``kedro run --namespaces``
each) would scatter one DAG run over as many runs. The maintainer's answer (kedro-mlflow issues #44 and
#432) is to start the run outside and hand its id on: the DAG's first task runs

    python -m malaria_pipeline.framework.dag_run --pipeline training [--env local]

which creates a run in the project's tracking store and experiment (``conf/<env>/mlflow.yml``, as
kedro-mlflow reads them) and prints its id; Airflow passes the id to each task as ``MLFLOW_RUN_ID``,
which MLflow's ``start_run`` (called by kedro-mlflow) resumes. Each task ends it as FINISHED, the next
resumes it: one run, with every task's parameters, metrics and artifacts.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)


def start_run(project: Path, pipeline: str, env: str | None = None) -> str:
    """Creates an MLflow run named ``pipeline`` in the tracking store and experiment of the project at
    ``project`` (``env``'s ``mlflow.yml``), and returns its id."""
    import mlflow
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project)
    with KedroSession.create(project_path=project, env=env) as session:
        config = session.load_context().mlflow  # conf/<env>/mlflow.yml, as kedro-mlflow reads it
        mlflow.set_tracking_uri(config.server.mlflow_tracking_uri)
        experiment = mlflow.set_experiment(config.tracking.experiment.name)
        run = mlflow.MlflowClient().create_run(experiment.experiment_id, run_name=pipeline)
    logger.info("Created MLflow run %s for the tasks of this DAG run", run.info.run_id)
    return run.info.run_id


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Creates the MLflow run of one DAG run; prints its id.")
    parser.add_argument("--pipeline", required=True, help="the pipeline the DAG runs (the run's name)")
    parser.add_argument("--env", default=None, help="the Kedro environment (conf/<env>)")
    parser.add_argument("--project", default=".", help="the project's root (default: here)")
    args = parser.parse_args(argv)
    # the id alone on the last line of the output: what Airflow's BashOperator pushes to XCom
    sys.stdout.write(start_run(Path(args.project).resolve(), args.pipeline, args.env) + "\n")


if __name__ == "__main__":
    main()
