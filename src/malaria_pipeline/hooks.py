"""Project hooks."""

from __future__ import annotations

import logging

import mlflow
from kedro.framework.hooks import hook_impl
from kedro.io.core import AbstractVersionedDataset

logger = logging.getLogger(__name__)


class EndInterruptedMlflowRun:
    """Ends the MLflow run of a ``kedro run`` that was interrupted in this Python process.

    Kedro calls ``on_pipeline_error`` for exceptions but not for Ctrl-C (``KeyboardInterrupt``), so
    kedro-mlflow leaves that run open; in a notebook the next session would log into it and fail on
    changed parameters (``training.resume=true``, say). A run that the user opened around
    ``kedro run`` on purpose is left alone: only the one started by the interrupted session is ended.
    """

    def __init__(self) -> None:
        self._open_run_id: str | None = None

    @hook_impl(tryfirst=True)
    def after_context_created(self) -> None:
        run = mlflow.active_run()
        if run is not None and run.info.run_id == self._open_run_id:
            logger.warning("Ending MLflow run %s, left open by an interrupted kedro run, as KILLED", run.info.run_id)
            mlflow.end_run(status="KILLED")
        self._open_run_id = None

    @hook_impl
    def before_pipeline_run(self) -> None:
        # kedro-mlflow, registered after the project's hooks, has started its run by now.
        run = mlflow.active_run()
        self._open_run_id = run.info.run_id if run is not None else None

    @hook_impl
    def after_pipeline_run(self) -> None:
        self._open_run_id = None

    @hook_impl
    def on_pipeline_error(self) -> None:
        self._open_run_id = None


class LogArtifactsToMlflow:
    """Logs the file of each saved dataset whose catalog ``metadata`` has ``mlflow_artifact_path``.

    kedro-mlflow's ``MlflowArtifactDataset`` can't wrap a versioned dataset under Kedro 1.7: Kedro gives
    the wrapped dataset its own save version, which the catalog then refuses. So the datasets stay
    plain and versioned, and this hook sends the version just saved to the active MLflow run (the one
    kedro-mlflow opened), under the folder that ``mlflow_artifact_path`` names ("" for the top).
    """

    def __init__(self) -> None:
        self._catalog = None

    @hook_impl
    def after_catalog_created(self, catalog) -> None:
        self._catalog = catalog

    @hook_impl
    def after_dataset_saved(self, dataset_name: str) -> None:
        if self._catalog is None or mlflow.active_run() is None:
            return
        dataset = self._catalog.get(dataset_name)
        folder = (getattr(dataset, "metadata", None) or {}).get("mlflow_artifact_path")
        if folder is None:
            return
        # The load path of a versioned dataset is its latest version: the one just saved.
        path = dataset._get_load_path() if isinstance(dataset, AbstractVersionedDataset) else dataset._filepath
        mlflow.log_artifact(str(path), folder or None)
