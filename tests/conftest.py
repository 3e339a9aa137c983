"""Fixtures: a small folder of real cell images, and this project's configuration in tmp_path
(:class:`~tests.helpers.KedroProject`, through which every test that runs a pipeline runs it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import SMALL_PATIENTS, KedroProject, write_cells

# Kedro's telemetry never asks and never sends from the tests either.
os.environ.setdefault("DO_NOT_TRACK", "1")

# MLflow mirrors its tracking URI and active experiment in these, for subprocesses to inherit.
MLFLOW_ENVIRONMENT = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_EXPERIMENT_ID",
    "MLFLOW_EXPERIMENT_NAME",
)


@pytest.fixture(autouse=True)
def restore_mlflow_state():
    """Every test leaves MLflow as it found it, so that the tests pass in any order.

    ``mlflow.set_tracking_uri``, ``set_registry_uri`` and ``set_experiment`` keep their value in module
    globals and in environment variables: a test that set them, unrestored, sent the next test's
    runs and registered models (and its subprocesses') to its own temporary store. MLflow has no public
    way to read the globals back as "unset", hence the private names.
    """
    import mlflow
    from mlflow.tracking import fluent
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    environment = {name: os.environ.get(name) for name in MLFLOW_ENVIRONMENT}
    saved = tracking_utils._tracking_uri, registry_utils._registry_uri, fluent._active_experiment_id
    yield
    while mlflow.active_run():  # a run left open, in the test's own store
        mlflow.end_run()
    tracking_utils._tracking_uri, registry_utils._registry_uri, fluent._active_experiment_id = saved
    for name, value in environment.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def cell_folder(tmp_path: Path) -> Path:
    """A folder ``cell_images/{Parasitized,Uninfected}/*.png`` of 42 real 20×20 images."""
    folder = tmp_path / "cells"
    write_cells(folder, SMALL_PATIENTS)
    return folder


@pytest.fixture
def kedro_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> KedroProject:
    monkeypatch.chdir(tmp_path)
    project = KedroProject(tmp_path / "project")
    monkeypatch.chdir(project.root)
    return project


@pytest.fixture(scope="module")
def module_kedro_project(tmp_path_factory: pytest.TempPathFactory):
    """A KedroProject shared by the tests of one module (for runs too slow to repeat)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        project = KedroProject(tmp_path_factory.mktemp("shared") / "project")
        monkeypatch.chdir(project.root)
        yield project
