"""The one module that touches private attributes of Kedro and kedro-mlflow: everything else calls
the functions here, and ``tests/framework/test_kedro_private.py`` checks each attribute on real objects, so an
upgrade that renames or changes one fails there, by name, instead of somewhere inside a run.

Written against kedro 1.7.0, kedro-datasets 9.6.0 and kedro-mlflow 2.0.3. The private attributes:

``AbstractVersionedDataset`` (``kedro.io.core``), which ``TorchDataset`` and kedro-datasets'
file datasets extend:

- ``_filepath``: the path given to the dataset; for a versioned one, the folder of its versions.
- ``_version``: the ``Version(load, save)`` given to the dataset, ``None`` when it is not versioned.
- ``_get_load_path()``: the file that ``load`` reads (the latest version, or the pinned one).
- ``_get_save_path()``: the file that ``save`` writes (raises if that version exists).

``KedroSession`` (``kedro.framework.session``):

- ``_hook_manager``: the pluggy ``PluginManager`` of that one session.

Public alternatives, where there are any: ``resolve_load_version()``, ``resolve_save_version()`` and
``list_versions()`` of a versioned dataset are public, but no public attribute gives its path, so
a path needs ``_filepath`` anyway. ``settings.HOOKS`` is the public way to register hooks, but for
every session of the project; nothing public adds one to a single session. The logger of a dataset
(``AbstractDataset._logger``) has a public replacement: ``logging.getLogger(__name__)``.

Overriding ``_describe`` and ``_exists`` in a dataset class is Kedro's documented way to write a
dataset, not a use of private API, and is not fenced here.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from kedro.io.core import AbstractVersionedDataset, Version


def filepath(dataset: AbstractVersionedDataset) -> PurePosixPath:
    """The path the dataset was given: its file, or for a versioned dataset the folder of its versions."""
    return dataset._filepath


def version(dataset: AbstractVersionedDataset) -> Version | None:
    """The ``Version(load, save)`` the dataset was given, ``None`` when it is not versioned."""
    return dataset._version


def load_path(dataset: Any) -> PurePosixPath:
    """The file that ``dataset.load()`` reads: for a versioned dataset its latest version (the one just
    saved, after a save) or the pinned one; for any other file dataset, its ``_filepath``."""
    if isinstance(dataset, AbstractVersionedDataset):
        return dataset._get_load_path()
    return dataset._filepath


def save_path(dataset: AbstractVersionedDataset) -> PurePosixPath:
    """The file that ``dataset.save()`` writes; raises ``DatasetError`` if that version exists."""
    return dataset._get_save_path()


def register_session_hook(session: Any, hook: Any) -> None:
    """Adds ``hook`` (an instance with ``@hook_impl`` methods) to the hooks of this ``KedroSession`` only."""
    session._hook_manager.register(hook)
