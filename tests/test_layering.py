"""The package's layers, as ``ls src/malaria_pipeline`` shows them, from the bottom:

- ``ml``: the torch code (no Kedro, no pandas, no MLflow), run on its own on a GPU machine and by the benchmark;
- ``cells``: reading and splitting the images; ``assess``: judging predictions (neither imports Kedro or MLflow);
- ``framework``: what Kedro and MLflow call by name; ``pipelines``: the Kedro nodes; ``benchmark``: a command over all.

A module may import its own group and the groups below it, never one above. Above them all, at the package
root, the modules Kedro reads (``settings``, ``pipeline_registry``, ``__main__``) may import any layer, and no
layer imports them.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import malaria_pipeline

PACKAGE = Path(malaria_pipeline.__file__).parent
LAYERS = ["ml", "cells", "assess", "framework", "pipelines", "benchmark"]
RANK = {"ml": 0, "cells": 1, "assess": 2, "framework": 3, "pipelines": 4, "benchmark": 5}
# The package root's modules that Kedro reads, above every layer.
TOP = {"settings", "pipeline_registry", "__main__"}
KEDRO = {"kedro", "kedro_datasets", "kedro_mlflow", "kedro_viz"}
FORBIDDEN = {
    "ml": KEDRO | {"pandas", "mlflow"},
    "cells": KEDRO | {"mlflow"},
    "assess": KEDRO | {"mlflow"},
}
# Kedro finds these at the package root; nothing else lies there.
ROOT_MODULES = {"__init__", "__main__", "settings", "pipeline_registry"}


def test_the_package_root_holds_only_what_kedro_looks_for_and_the_layers():
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert modules == ROOT_MODULES
    assert folders == set(LAYERS)


@pytest.mark.parametrize("group", sorted(FORBIDDEN))
def test_a_lower_layer_pulls_in_no_framework(group):
    # Imported in a fresh interpreter: what the group's modules bring in, directly or through a library.
    modules = [
        f"malaria_pipeline.{group}.{p.stem}"
        for p in sorted((PACKAGE / group).glob("*.py"))
        if p.stem != "__init__"
    ]
    assert len(modules) >= 4
    code = (
        f"import sys; import {', '.join(modules)}; "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({sorted(FORBIDDEN[group])!r})))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", f"malaria_pipeline.{group} imports {result.stdout.strip()}"


def imported_layers(path: Path) -> set[str]:
    """The package's layers (and :data:`TOP` modules) that a file imports, at the top or inside a function."""
    layers = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "malaria_pipeline" and len(parts) > 1 and (parts[1] in RANK or parts[1] in TOP):
                layers.add(parts[1])
    return layers


def upward_imports(package: Path) -> list[str]:
    found = []
    for group in LAYERS:
        for path in sorted((package / group).rglob("*.py")):
            for layer in imported_layers(path):
                if layer in TOP or RANK[layer] > RANK[group]:
                    found.append(f"{path.relative_to(package)} imports malaria_pipeline.{layer}")
    return found


def test_no_layer_imports_one_above_it():
    assert upward_imports(PACKAGE) == []


def test_the_upward_import_check_sees_a_function_level_import(tmp_path):
    # The guard itself, on a made-up package: an import inside a function counts as much as one at the top.
    (tmp_path / "ml").mkdir()
    (tmp_path / "ml" / "loop.py").write_text(
        "def f():\n    from malaria_pipeline.framework import tracking\n"
    )
    (tmp_path / "cells").mkdir()
    (tmp_path / "cells" / "read.py").write_text("from malaria_pipeline.ml.images import decode_cell_image\n")
    for group in LAYERS[2:]:
        (tmp_path / group).mkdir()
    assert upward_imports(tmp_path) == ["ml/loop.py imports malaria_pipeline.framework"]


@pytest.mark.parametrize(
    ("statement", "name"),
    [
        ("from malaria_pipeline import settings", "settings"),
        ("from malaria_pipeline.settings import CONFIG_LOADER_ARGS", "settings"),
        ("import malaria_pipeline.pipeline_registry", "pipeline_registry"),
    ],
)
def test_the_upward_import_check_sees_a_layer_reach_up_to_the_package_root(tmp_path, statement, name):
    # Kedro's settings.py sits above every layer: framework/ reading it made the package's one circle.
    for group in LAYERS:
        (tmp_path / group).mkdir()
    (tmp_path / "framework" / "loader.py").write_text(f"def f():\n    {statement}\n")
    assert upward_imports(tmp_path) == [f"framework/loader.py imports malaria_pipeline.{name}"]
