"""Fixtures: a small folder of real cell images, and this project's configuration in tmp_path."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.helpers import PROJECT_ROOT, SMALL_PATIENTS, write_cells

# Kedro's telemetry never asks and never sends from the tests either.
os.environ.setdefault("DO_NOT_TRACK", "1")


@pytest.fixture
def cell_folder(tmp_path: Path) -> Path:
    """A folder ``cell_images/{Parasitized,Uninfected}/*.png`` of 42 real 20×20 images."""
    folder = tmp_path / "cells"
    write_cells(folder, SMALL_PATIENTS)
    return folder


class KedroProject:
    """This project's conf/ copied into ``root``; runs write there only (the working directory)."""

    def __init__(self, root: Path):
        from kedro.framework.startup import bootstrap_project

        self.root = root
        root.mkdir(parents=True)
        shutil.copy(PROJECT_ROOT / "pyproject.toml", root)
        shutil.copytree(PROJECT_ROOT / "conf", root / "conf", ignore=shutil.ignore_patterns("local"))
        for folder in ("conf/local", "data", "src"):  # bootstrap_project wants src/; the package is installed
            (root / folder).mkdir()
        # MLflow caches its store per tracking URI, so the relative sqlite:///mlflow.db would keep
        # pointing at the first project's file within one process: give each project its own.
        (root / "conf" / "local" / "mlflow.yml").write_text(
            f"server:\n  mlflow_tracking_uri: sqlite:///{root / 'mlflow.db'}\n"
        )
        bootstrap_project(root)

    def run(self, pipeline: str, **runtime_params):
        """Runs a registered pipeline in a new KedroSession, as ``kedro run --params`` would."""
        from kedro.framework.session import KedroSession

        with KedroSession.create(project_path=self.root, runtime_params=runtime_params) as session:
            return session.run(pipeline_names=[pipeline])

    def load(self, name: str, **runtime_params):
        """The latest version of a catalog dataset."""
        from kedro.framework.session import KedroSession

        with KedroSession.create(project_path=self.root, runtime_params=runtime_params) as session:
            return session.load_context().catalog.load(name)


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
