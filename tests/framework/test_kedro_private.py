"""The private attributes of Kedro and kedro-mlflow that ``malaria_pipeline.framework.kedro_private`` wraps, checked
on real objects: after an upgrade, a failure here names the attribute that changed, before a run
breaks somewhere less clear. And no other module of ``src/`` touches such attributes itself."""

from __future__ import annotations

import ast
import contextlib
import importlib.metadata
from pathlib import Path, PurePosixPath

import pytest
from kedro.framework.hooks import hook_impl
from kedro.io.core import DatasetError, Version
from kedro_datasets.json import JSONDataset
from kedro_datasets.pickle import PickleDataset

from malaria_pipeline.framework import kedro_private
from malaria_pipeline.framework.datasets import TorchDataset
from tests.helpers import PROJECT_ROOT

WRITTEN_AGAINST = {"kedro": "1.7.0", "kedro-datasets": "9.6.0", "kedro_mlflow": "2.0.3"}
VERSION = "2024-01-02T03.04.05.678Z"
OTHER_VERSION = "2023-01-02T03.04.05.678Z"


@contextlib.contextmanager
def private(attribute: str):
    """Turns any failure inside into one that names ``attribute`` and the module to update."""
    try:
        yield
        return
    except Exception as error:  # noqa: BLE001 - an AttributeError, a TypeError, a failed assert: all mean the same
        cause = f"{type(error).__name__}: {error}"
    installed = ", ".join(f"{name} {importlib.metadata.version(name)}" for name in WRITTEN_AGAINST)
    written = ", ".join(f"{name} {version}" for name, version in WRITTEN_AGAINST.items())
    raise pytest.fail.Exception(
        f"Kedro private API changed: {attribute} no longer behaves as src/malaria_pipeline/framework/kedro_private.py "
        f"expects. That module was written against {written}; installed: {installed}. Update "
        f"kedro_private.py (and its docstring) to the new attribute.\n{cause}",
        pytrace=False,
    ) from None


@pytest.fixture(params=[JSONDataset, PickleDataset, TorchDataset], ids=lambda cls: cls.__name__)
def versioned(request, tmp_path):
    """A versioned file dataset of kedro-datasets (or ours), to be saved as VERSION, and its file's path."""
    cls = request.param
    name = {JSONDataset: "data.json", PickleDataset: "data.pkl", TorchDataset: "data.pt"}[cls]
    return lambda load=None, save=VERSION: cls(
        filepath=str(tmp_path / name), version=Version(load, save)
    ), tmp_path / name


def test_filepath_is_the_path_given_and_version_the_version_given(versioned, tmp_path):
    make, path = versioned
    dataset = make()
    with private("AbstractVersionedDataset._filepath"):
        assert kedro_private.filepath(dataset) == PurePosixPath(path)
    with private("AbstractVersionedDataset._version"):
        assert kedro_private.version(dataset) == Version(None, VERSION)
        plain = PickleDataset(filepath=str(tmp_path / "plain.pkl"))
        assert kedro_private.version(plain) is None


def test_load_path_is_the_version_just_saved_or_the_pinned_one(versioned, tmp_path):
    make, path = versioned
    make(save=OTHER_VERSION).save({"a": 1})
    make().save({"a": 2})
    with private("AbstractVersionedDataset._get_load_path"):
        assert kedro_private.load_path(make(save=None)) == PurePosixPath(path / VERSION / path.name)
        assert kedro_private.load_path(make(load=OTHER_VERSION)) == PurePosixPath(
            path / OTHER_VERSION / path.name
        )
        assert Path(kedro_private.load_path(make(save=None))).is_file()
        plain = PickleDataset(filepath=str(tmp_path / "plain.pkl"))
        assert kedro_private.load_path(plain) == PurePosixPath(tmp_path / "plain.pkl")


def test_save_path_is_the_new_version_and_an_existing_one_is_refused(versioned):
    make, path = versioned
    with private("AbstractVersionedDataset._get_save_path"):
        assert kedro_private.save_path(make()) == PurePosixPath(path / VERSION / path.name)
        make().save({"a": 1})
        with pytest.raises(DatasetError, match="must not exist"):
            kedro_private.save_path(make())


class _Noted:
    def __init__(self) -> None:
        self.contexts = []

    @hook_impl
    def after_context_created(self, context) -> None:
        self.contexts.append(context)


def test_a_hook_registered_on_a_session_is_called_by_that_session_only(kedro_project):
    from kedro.framework.session import KedroSession

    hook = _Noted()
    # Sessions of their own, not KedroProject: what is tested is a hook registered on one session object.
    with private("KedroSession._hook_manager"):
        with KedroSession.create(project_path=kedro_project.root) as session:
            kedro_private.register_session_hook(session, hook)
            context = session.load_context()
        with KedroSession.create(project_path=kedro_project.root) as other:
            other.load_context()
        assert hook.contexts == [context]


# Private attributes of Kedro and kedro-mlflow classes (datasets, sessions, catalogs, hook managers)
# that code outside kedro_private.py must not touch, unless its own class defines the attribute.
KEDRO_PRIVATE = frozenset(
    {
        "_filepath",
        "_version",
        "_get_load_path",
        "_get_save_path",
        "_get_versioned_path",
        "_get_versions",
        "_get_version_from_path",
        "_exists_function",
        "_glob_function",
        "_cached_load_version",
        "_cached_save_version",
        "_fetch_latest_load_version",
        "_fetch_latest_save_version",
        "_clear_version_cache",
        "_hook_manager",
        "_store",
        "_fs",
        "_protocol",
        "_fs_args",
        "_load_args",
        "_save_args",
        "_credentials",
        "_describe",
        "_exists",
        "_load",
        "_save",
        "_release",
        "_logger",
        "_init_args",
        "_init_config",
        "_copy",
        "_datasets",
        "_lazy_datasets",
        "_config_resolver",
    }
)
FENCED = PROJECT_ROOT / "src" / "malaria_pipeline" / "framework" / "kedro_private.py"


def private_uses(source: str) -> list[tuple[int, str]]:
    """(line, ``expression._attribute``) of each Kedro private attribute that ``source`` touches, other
    than ``self._x`` in a class that assigns ``self._x`` or defines a method ``_x`` itself."""
    tree = ast.parse(source)
    own: dict[ast.AST, set[str]] = {}  # each node of a class body -> the attributes that class defines

    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        defined = {f.name for f in cls.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))}
        for sub in ast.walk(cls):
            targets = (
                sub.targets
                if isinstance(sub, ast.Assign)
                else [sub.target]
                if isinstance(sub, (ast.AnnAssign, ast.AugAssign))
                else []
            )
            for target in targets:
                if (
                    isinstance(target, ast.Attribute)
                    and isinstance(target.value, ast.Name)
                    and target.value.id == "self"
                ):
                    defined.add(target.attr)
        for sub in ast.walk(cls):
            own[sub] = defined  # an inner class, walked later, overrides
    uses = []
    for sub in ast.walk(tree):
        if isinstance(sub, ast.Attribute) and sub.attr in KEDRO_PRIVATE:
            is_self = isinstance(sub.value, ast.Name) and sub.value.id == "self"
            if not (is_self and sub.attr in own.get(sub, set())):
                uses.append((sub.lineno, f"{ast.unparse(sub.value)}.{sub.attr}"))
    return sorted(uses)


def test_the_scan_finds_a_private_attribute_of_a_kedro_object_and_not_a_class_s_own():
    source = (
        "class Mine(AbstractVersionedDataset):\n"
        "    def __init__(self):\n"
        "        self._fs = None\n"
        "        super().__init__(filepath=None, version=None)\n"
        "    def _describe(self):\n"
        "        return {'fs': self._fs, 'path': self._filepath}\n"
        "def log(dataset, session):\n"
        "    session._hook_manager.register(None)\n"
        "    return dataset._filepath, dataset.resolve_load_version(), dataset._get_load_path()\n"
    )
    assert private_uses(source) == [
        (6, "self._filepath"),
        (8, "session._hook_manager"),
        (9, "dataset._filepath"),
        (9, "dataset._get_load_path"),
    ]


def test_only_kedro_private_touches_private_attributes_of_kedro_objects():
    found = [
        f"{path.relative_to(PROJECT_ROOT)}:{line}: {use}"
        for path in sorted((PROJECT_ROOT / "src").rglob("*.py"))
        if path != FENCED
        for line, use in private_uses(path.read_text())
    ]
    assert found == [], (
        "Kedro private attributes used outside src/malaria_pipeline/framework/kedro_private.py: wrap each in a function "
        "there (and a test in tests/framework/test_kedro_private.py):\n  " + "\n  ".join(found)
    )
