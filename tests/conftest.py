"""Fixtures: a small folder of real cell images, and this project's configuration in tmp_path
(:class:`~tests.helpers.KedroProject`, through which every test that runs a pipeline runs it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import SMALL_PATIENTS, KedroProject, restored_mlflow_state, write_cells

# Kedro's telemetry never asks and never sends from the tests either.
os.environ.setdefault("DO_NOT_TRACK", "1")


@pytest.fixture(autouse=True)
def restore_mlflow_state():
    """Every test leaves MLflow as it found it, so that the tests pass in any order
    (:func:`~tests.helpers.restored_mlflow_state`)."""
    with restored_mlflow_state():
        yield


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
