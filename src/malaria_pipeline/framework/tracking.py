"""What this project records in MLflow besides what kedro-mlflow logs: each epoch as it ends, the
process that owns a run, and the run that a resumed training run continues.

Every function here acts on the active MLflow run (the one kedro-mlflow opened for ``kedro run``) and
does nothing when there is none, so the training node also runs outside a tracked session.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import socket
import time
from pathlib import Path
from typing import Any

import mlflow

logger = logging.getLogger(__name__)

# Run tags. host, pid and process_started identify the process that owns a run.
HOST_TAG = "host"
PID_TAG = "pid"
PROCESS_STARTED_TAG = "process_started"
PROFILE_TAG = "profile"
RESUMED_FROM_TAG = "resumed_from_run_id"
KILLED_REASON_TAG = "killed_reason"
FOLD_TAG = "fold"
# The cross-validation run whose out-of-fold figures are the accuracy claim of a model trained on every patient.
CROSS_VALIDATION_RUN_TAG = "cross_validation_run_id"

# The per-epoch metrics: MLflow name ← column of the training history.
EPOCH_METRICS = {
    "train_loss": "train_loss",
    "valid_loss": "valid_loss",
    "accuracy": "accuracy",
    "lr": "lr",
    "epoch_seconds": "seconds",
}


def active_run_id() -> str | None:
    run = mlflow.active_run()
    return run.info.run_id if run is not None else None


def log_epoch(row: dict[str, Any]) -> None:
    """Logs one row of the training history to the active run, at step ``row["epoch"]``.

    Called as each epoch ends, so the MLflow UI's charts grow while the model trains.
    """
    if mlflow.active_run() is not None:
        _log_epoch_to(active_run_id(), mlflow.get_tracking_uri(), row)


def epoch_logger(run_id: str | None):
    """A picklable :func:`log_epoch` for another process (a data-parallel training process, which has no
    active run): logs each row to run ``run_id`` of this process's tracking store; None: logs nothing."""
    return functools.partial(_log_epoch_to, run_id, mlflow.get_tracking_uri()) if run_id else None


def _log_epoch_to(run_id: str, tracking_uri: str, row: dict[str, Any]) -> None:
    """Logs one row of the training history to run ``run_id`` of the store at ``tracking_uri``."""
    client = mlflow.MlflowClient(tracking_uri)
    step, timestamp = int(row["epoch"]), int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[
            mlflow.entities.Metric(name, float(row[column]), timestamp, step)
            for name, column in EPOCH_METRICS.items()
        ],
    )


def set_tags(tags: dict[str, Any]) -> None:
    """Sets tags on the active run, if there is one."""
    if mlflow.active_run() is not None:
        mlflow.set_tags({key: str(value) for key, value in tags.items()})


def owner_tags() -> dict[str, str]:
    """The tags that identify this process: host name, process id and, on Linux, its start time."""
    tags = {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}
    started = _process_started(os.getpid())
    if started is not None:
        tags[PROCESS_STARTED_TAG] = started
    return tags


def mark_dead_runs_killed(experiment_id: str, current_run_id: str) -> list[str]:
    """Marks ``KILLED`` the runs of the experiment left ``RUNNING`` by a process of this host that is gone.

    A run killed by SIGKILL, the out-of-memory killer or a power cut never ends itself. Runs of other
    hosts, of this process, or without the owner tags are left alone: whether they still run cannot be
    told from here.

    Returns:
        The ids of the runs marked ``KILLED``.
    """
    client = mlflow.MlflowClient()
    host = socket.gethostname()
    killed = []
    for run in client.search_runs(
        [experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000
    ):
        tags = run.data.tags
        if (
            run.info.run_id == current_run_id
            or tags.get(HOST_TAG) != host
            or not tags.get(PID_TAG, "").isdigit()
        ):
            continue
        pid = int(tags[PID_TAG])
        if pid == os.getpid() or _alive(pid, tags.get(PROCESS_STARTED_TAG)):
            continue
        reason = (
            f"process {pid} on {host} ended without ending this run (killed, out of memory or shut down); "
            f"marked KILLED by run {current_run_id}"
        )
        client.set_tag(run.info.run_id, KILLED_REASON_TAG, reason)
        client.set_terminated(run.info.run_id, status="KILLED")
        logger.warning(
            "MLflow run %s was left RUNNING by process %d, which is gone: marked KILLED", run.info.run_id, pid
        )
        killed.append(run.info.run_id)
    return killed


def _alive(pid: int, started: str | None) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process there: assume it lives
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    # The same number may belong to a newer process: compare start times where the run recorded one.
    return started is None or _process_started(pid) in (None, started)


def _process_started(pid: int) -> str | None:
    """The start time of a process in clock ticks after boot (Linux), or None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; the start time is field 22, the 20th after it.
    return stat.rsplit(")", 1)[1].split()[19]


# The namespace of cross-validation fold k, cv_fold_<k> (malaria_pipeline.pipelines.cross_validation.pipeline
# names its folds with this prefix; fold_of reads them back).
FOLD_PREFIX = "cv_fold_"
FOLD_NAMESPACE = re.compile(rf"{FOLD_PREFIX}(\d+)")


def fold_of(namespace: str | None) -> int | None:
    """The fold whose nodes a namespace holds (``cv_fold_3`` and ``cv_fold_3.model_training``: 3), or None."""
    match = FOLD_NAMESPACE.fullmatch((namespace or "").split(".")[0])
    return int(match.group(1)) if match else None


def start_fold_run(parent_id: str, fold: int, params: dict[str, Any], run_id: str | None = None) -> str:
    """Starts, nested under the active run ``parent_id``, the run of cross-validation fold ``fold``: ``run_id``,
    else the parent's child tagged ``fold`` (another process's: an Airflow task, a fold run alone), else a new
    one named ``fold <k>``. Logs ``params`` (flattened ``a.b`` keys) and the owner tags, so that a killed
    process's fold runs are marked KILLED as its parent is.

    Returns:
        The fold run's id.
    """
    if run_id is None:
        experiment = mlflow.active_run().info.experiment_id
        found = mlflow.MlflowClient().search_runs(
            [experiment],
            filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}' and tags.{FOLD_TAG} = '{fold}'",
            max_results=1,
        )
        run_id = found[0].info.run_id if found else None
    if run_id is None:
        run = mlflow.start_run(run_name=f"fold {fold}", nested=True, tags={FOLD_TAG: str(fold)})
        logger.info("Cross-validation fold %d logs into the nested MLflow run %s", fold, run.info.run_id)
    else:
        run = mlflow.start_run(run_id=run_id, nested=True)
    mlflow.log_params(_flatten(params))
    set_tags(owner_tags())
    return run.info.run_id


def log_metrics(metrics: dict[str, Any]) -> None:
    """Logs the numeric values of ``metrics`` (None skipped) to the active run, if there is one."""
    if mlflow.active_run() is not None:
        mlflow.log_metrics(
            {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None}
        )


def _flatten(params: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in params.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)[:6000]
    return flat


def cross_validation_run(run_id: str, experiment_id: str):
    """The finished cross-validation run ``run_id`` (``latest``: the newest of the experiment).

    Raises:
        ValueError: there is no such run, it has not finished, or it is not a cross-validation run.
    """
    client = mlflow.MlflowClient()
    if run_id == "latest":
        runs = client.search_runs(
            [experiment_id],
            filter_string="attributes.status = 'FINISHED' and metrics.`cv.accuracy.mean` >= 0",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if not runs:
            raise ValueError(
                "cross_validation_run_id is 'latest' but this MLflow experiment has no finished cross-validation "
                "run: run `kedro run --pipelines cross_validation` first (docs/cross-validation.md)."
            )
        return runs[0]
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException as error:
        raise ValueError(
            f"cross_validation_run_id {run_id!r} is not an MLflow run of this tracking store"
        ) from error
    if run.info.status != "FINISHED" or "cv.accuracy.mean" not in run.data.metrics:
        raise ValueError(
            f"MLflow run {run_id} ({run.info.status}) is not a finished cross-validation run: give the id of a "
            "`kedro run --pipelines cross_validation` run, or latest."
        )
    return run


def claimed_cross_validation(run_id: str | None) -> dict[str, Any] | None:
    """The cross-validation run that ``cross_validation_run_id`` names (``latest`` in the active run's
    experiment): its id, fold count and metrics; None without a run id or an active run."""
    if not run_id or mlflow.active_run() is None:
        return None
    run = cross_validation_run(str(run_id), mlflow.active_run().info.experiment_id)
    return {
        "run_id": run.info.run_id,
        "folds": run.data.params.get("cross_validation.folds", "?"),
        "metrics": dict(run.data.metrics),
    }
