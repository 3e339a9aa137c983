"""Project hooks."""

from __future__ import annotations

import logging

import mlflow
from kedro.framework.hooks import hook_impl

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
