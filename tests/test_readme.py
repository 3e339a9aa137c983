"""The README's layout block, read as a newcomer reads it: every path it names exists, and it names every
module and folder of ``src/malaria_pipeline``.

The block's grammar: a line that starts with a path ending in ``/`` begins an entry (at column 0 a path of
the repository, indented a folder of ``src/malaria_pipeline/``), deeper-indented lines continue it. An
entry of the package lists its modules and folders after the first ``: `` of its text, comma-separated, a
note in parentheses after a name.
"""

import re
from pathlib import Path

import pytest

import malaria_pipeline

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(malaria_pipeline.__file__).parent
SOURCE = "src/malaria_pipeline/"
# What every pipeline folder holds, and the pipelines/ entry names: Kedro's layout.
PIPELINE_MODULES = {"nodes", "pipeline"}


def layout_block(readme: str) -> str:
    """The code block under ``## Layout``."""
    section = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```\n", 2)[1]


def entries(block: str) -> dict[str, str]:
    """``{path: text}`` of each entry, a package folder's path given from the repository root."""
    found: dict[str, str] = {}
    path = None
    for line in block.splitlines():
        match = re.match(r"^( *)(\S+/)\s*(.*)$", line)
        if match and len(match[1]) <= 2:
            indent, name, text = match.groups()
            path = SOURCE + name if indent else name
            found[path] = text
        elif path is not None and line.strip():
            found[path] += " " + line.strip()
    return found


def listed_names(text: str) -> set[str]:
    """The names after the first ``: `` of an entry's text, notes in parentheses left out."""
    plain = re.sub(r"\([^()]*\)", "", text)
    if ": " not in plain:
        return set()
    return {name.strip() for name in plain.split(": ", 1)[1].split(",") if name.strip()}


def actual_names(folder: Path) -> set[str]:
    """The modules (less ``__init__``) and subpackages of a package folder."""
    modules = {p.stem for p in folder.glob("*.py")}
    packages = {p.name for p in folder.iterdir() if (p / "__init__.py").exists()}
    return modules | packages


def layout_problems(root: Path, block: str) -> list[str]:
    """What the block says that the tree does not hold, and what the package holds that the block does not name."""
    problems = []
    found = entries(block)
    package = root / SOURCE
    for path, text in found.items():
        if not (root / path).is_dir():
            problems.append(f"{path} does not exist")
        elif path.startswith(SOURCE):
            names = listed_names(text)
            expected = actual_names(root / path)
            if path == SOURCE:
                expected = {name for name in expected if not (package / name).is_dir()}
            elif Path(path).parent.name == "pipelines":
                expected -= PIPELINE_MODULES | {"__init__"}
            else:
                expected -= {"__init__"}
            problems += [f"{path} names {name}, which is not there" for name in sorted(names - expected)]
            problems += [f"{path} does not name {name}" for name in sorted(expected - names)]
    for folder in sorted(p for p in package.rglob("*") if (p / "__init__.py").exists()):
        path = f"{folder.relative_to(root).as_posix()}/"
        in_pipelines = folder.parent.name == "pipelines"
        named = path in found or (
            in_pipelines
            and folder.name in listed_names(found.get(SOURCE + "pipelines/", ""))
            and actual_names(folder) <= PIPELINE_MODULES | {"__init__"}
        )
        if not named:
            problems.append(f"{path} is not in the block")
    return problems


def test_the_readme_layout_block_names_every_module_and_only_what_exists():
    assert layout_problems(ROOT, layout_block((ROOT / "README.md").read_text())) == []


@pytest.fixture
def tree(tmp_path):
    """A made-up project: one layer of two modules and one pipeline."""
    package = tmp_path / SOURCE
    for folder in (package, package / "ml", package / "pipelines", package / "pipelines" / "training"):
        folder.mkdir(parents=True)
        (folder / "__init__.py").write_text("")
    for module in (
        "settings",
        "ml/train",
        "ml/models",
        "pipelines/training/nodes",
        "pipelines/training/pipeline",
    ):
        (package / f"{module}.py").write_text("")
    (tmp_path / "docs").mkdir()
    return tmp_path


BLOCK = """docs/                       how each part works
src/malaria_pipeline/       at its root: __init__, settings
  ml/                       the torch code: train, models (networks)
  pipelines/                one folder a pipeline, nodes.py and pipeline.py: training
"""


def test_the_layout_check_passes_a_block_that_matches_its_tree(tree):
    assert layout_problems(tree, BLOCK) == []


def test_the_layout_check_names_a_module_the_block_omits_and_one_that_is_gone(tree):
    (tree / SOURCE / "ml" / "loader.py").write_text("")
    (tree / SOURCE / "ml" / "models.py").unlink()
    assert layout_problems(tree, BLOCK) == [
        f"{SOURCE}ml/ names models, which is not there",
        f"{SOURCE}ml/ does not name loader",
    ]


def test_the_layout_check_names_a_folder_the_block_omits_and_a_path_that_is_gone(tree):
    (tree / SOURCE / "cells").mkdir()
    (tree / SOURCE / "cells" / "__init__.py").write_text("")
    (tree / SOURCE / "pipelines" / "training" / "served_model.py").write_text("")
    block = BLOCK + "notebooks/                  exploration.ipynb\n"
    assert layout_problems(tree, block) == [
        "notebooks/ does not exist",
        f"{SOURCE}cells/ is not in the block",
        f"{SOURCE}pipelines/training/ is not in the block",
    ]
