"""Kedro datasets of this project: the image source, versioned torch files and bytes (ONNX graphs), the
model to classify with and its graphs, the training checkpoint.

In ``catalog.yml`` they are named by their full import path, e.g.
``type: malaria_pipeline.framework.datasets.TorchDataset``.

Over 500 lines, one module still: every dataset the catalog names by a path of this package, in one
place the catalog's ``type:`` lines point to, as kedro-datasets keeps a family of datasets together;
the versioned local files share one base (``_LocalVersionedDataset``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import fsspec
import pandas as pd
import torch
from kedro.io.core import (
    AbstractDataset,
    AbstractVersionedDataset,
    DatasetError,
    Version,
    get_protocol_and_path,
)
from kedro_datasets.json import JSONDataset
from kedro_datasets.pandas import CSVDataset, ParquetDataset

from malaria_pipeline.cells.archive import ImageArchive
from malaria_pipeline.cells.download import download_archive, is_url
from malaria_pipeline.framework import kedro_private
from malaria_pipeline.ml.checkpoint import CheckpointStore
from malaria_pipeline.ml.onnx_runtime import GRAPH_KEYS

logger = logging.getLogger(__name__)


class CellImageSourceDataset(AbstractDataset[None, ImageArchive]):
    """Reads cell images from a URL, a local ``.zip`` or a folder (read-only).

    A URL is downloaded once into ``download_dir``, resumably, and verified against the size and
    SHA-256 of the matching entry of ``known_archives``; a verified copy is reused by later runs.

    Example ``catalog.yml`` entry:

    .. code-block:: yaml

        cell_images:
          type: malaria_pipeline.framework.datasets.CellImageSourceDataset
          source: /data/cell_images.zip
          download_dir: data/01_raw
          known_archives:
            - {url: https://example.org/cell_images.zip, size: 353452851, sha256: 0a94...}
    """

    def __init__(
        self,
        *,
        source: str,
        download_dir: str = "data/01_raw",
        known_archives: list[dict[str, Any]] | None = None,
        timeout: float = 10.0,
        parameter: str = "ingestion.source",
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._source = str(source)
        self._parameter = parameter
        self._download_dir = download_dir
        self._known = {entry["url"]: entry for entry in known_archives or []}
        self._timeout = timeout
        self.metadata = metadata

    def load(self) -> ImageArchive:
        if not is_url(self._source):
            return ImageArchive.open(self._source, parameter=self._parameter)
        known = self._known.get(self._source, {})
        if not known:
            logger.warning("No size or SHA-256 is known for %s: the download is not verified", self._source)
        path = download_archive(
            self._source,
            self._download_dir,
            size=known.get("size"),
            sha256=known.get("sha256"),
            timeout=self._timeout,
        )
        return ImageArchive.open(path, source=self._source, parameter=self._parameter)

    def save(self, data: None) -> None:
        raise DatasetError(f"{type(self).__name__} is read-only: it reads the images of {self._source}")

    def _describe(self) -> dict[str, Any]:
        return {"source": self._source, "download_dir": self._download_dir}

    def _exists(self) -> bool:
        return is_url(self._source) or Path(self._source).expanduser().exists()


class ClassifiedImagesDataset(AbstractDataset[None, ImageArchive]):
    """The images that the latest ``inference`` run classified (read-only): the source its
    ``inference_summary`` names, so that the review shows exactly the files that were classified, without
    the user naming them again.

    Example ``catalog.yml`` entry:

    .. code-block:: yaml

        review_images:
          type: malaria_pipeline.framework.datasets.ClassifiedImagesDataset
          summary: data/08_reporting/inference_summary.json
    """

    def __init__(self, *, summary: str, metadata: dict[str, Any] | None = None) -> None:
        from kedro_datasets.json import JSONDataset

        self._summary = JSONDataset(filepath=summary, version=Version(None, None))
        self.metadata = metadata

    def load(self) -> ImageArchive:
        try:
            source = self._summary.load()["source"]
        except DatasetError as error:
            raise DatasetError(
                f"No inference run to review ({kedro_private.filepath(self._summary)} has no version): run "
                "`kedro run --pipelines inference` first"
            ) from error
        return ImageArchive.open(source, parameter="inference.source")

    def save(self, data: None) -> None:
        raise DatasetError(
            f"{type(self).__name__} is read-only: it reads the images that inference classified"
        )

    def _describe(self) -> dict[str, Any]:
        return {"summary": kedro_private.filepath(self._summary)}

    def _exists(self) -> bool:
        return self._summary.exists()


# What a dataset saves and what it loads.
Saved, Loaded = TypeVar("Saved"), TypeVar("Loaded")


class _LocalVersionedDataset(AbstractVersionedDataset[Saved, Loaded]):
    """A versioned file or folder on the local file system: what :class:`TorchDataset`,
    :class:`BytesDataset` and :class:`ImageFolderDataset` share (their path, description and existence
    of the latest version)."""

    def __init__(
        self, *, filepath: str, version: Version | None = None, metadata: dict[str, Any] | None = None
    ) -> None:
        self.filesystem = fsspec.filesystem("file", auto_mkdir=True)
        self.metadata = metadata
        super().__init__(
            filepath=PurePosixPath(filepath),
            version=version,
            exists_function=self.filesystem.exists,
            glob_function=self.filesystem.glob,
        )

    def _describe(self) -> dict[str, Any]:
        return {"filepath": kedro_private.filepath(self), "version": kedro_private.version(self)}

    def _latest_is(self, check) -> bool:
        """``check(path)`` of the latest version's path; False without a version."""
        try:
            return check(str(kedro_private.load_path(self)))
        except DatasetError:
            return False


class TorchDataset(_LocalVersionedDataset[Any, Any]):
    """A ``torch.save`` file of tensors, or of dicts and lists of tensors, strings and numbers.

    Loaded safely (``weights_only=True``: no code runs) and memory-mapped, so a large tensor is paged
    in as it is used.

    Example ``catalog.yml`` entry:

    .. code-block:: yaml

        image_tensors:
          type: malaria_pipeline.framework.datasets.TorchDataset
          filepath: data/02_intermediate/image_tensors.pt
          versioned: true
    """

    def __init__(
        self,
        *,
        filepath: str,
        version: Version | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        protocol, path = get_protocol_and_path(filepath, version)
        if protocol != "file":
            raise DatasetError(f"TorchDataset reads local files only, not {filepath!r}")
        super().__init__(filepath=path, version=version, metadata=metadata)

    def load(self) -> Any:
        return torch.load(str(kedro_private.load_path(self)), weights_only=True, mmap=True)

    def save(self, data: Any) -> None:
        path = Path(kedro_private.save_path(self))
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(data.contiguous() if isinstance(data, torch.Tensor) else data, path)
        self.filesystem.invalidate_cache(str(path))

    def _exists(self) -> bool:
        return self._latest_is(self.filesystem.exists)


class BytesDataset(_LocalVersionedDataset[bytes, bytes]):
    """A versioned file of bytes, as they are (an ONNX graph). No bytes write an empty file: the version
    of a run that kept nothing (an int8 graph that did not pay), which readers take as no graph.

    Example ``catalog.yml`` entry:

    .. code-block:: yaml

        onnx_model:
          type: malaria_pipeline.framework.datasets.BytesDataset
          filepath: data/06_models/model.onnx
          versioned: true
    """

    def load(self) -> bytes:
        return Path(kedro_private.load_path(self)).read_bytes()

    def save(self, data: bytes) -> None:
        path = Path(kedro_private.save_path(self))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.filesystem.invalidate_cache(str(path))

    def _exists(self) -> bool:
        return self._latest_is(self.filesystem.exists)


class TrainedModelDataset(AbstractDataset[None, dict[str, Any]]):
    """The model bundle to classify new images with (read-only): a version of the files that training
    writes, or the copy packed inside an MLflow model (a run's, or a registered version's).

    The bundle is returned with one more key, ``source``: the file or MLflow URI it was read from, and,
    for a registered model, ``registered_version``. Where the same training run exported the model
    (``onnx_filepath``: the version of the same name; an MLflow model: its ``onnx`` and ``onnx_int8``
    artifacts), the graphs come with it: ``onnx_graph`` and ``onnx_int8_graph`` (bytes) and their files,
    ``onnx_graph_source`` and ``onnx_int8_graph_source``, for ``inference.runtime``.

    Example ``catalog.yml`` entry:

    .. code-block:: yaml

        inference_model:
          type: malaria_pipeline.framework.datasets.TrainedModelDataset
          filepath: data/06_models/model.pt        # the versioned files of the catalog's `model`
          load_version: null                      # null: the latest; or 2026-11-22T10.00.00.000Z
          model_uri: null                         # or models:/malaria-cell-classifier@champion, runs:/<id>/model
          mlflow_run_id: null                     # or a run id: the same as model_uri runs:/<id>/model
          onnx_filepath: data/06_models/model.onnx  # the versioned files of the catalog's `onnx_model`
          onnx_int8_filepath: data/06_models/model_int8.onnx
    """

    def __init__(
        self,
        *,
        filepath: str,
        load_version: str | None = None,
        model_uri: str | None = None,
        mlflow_run_id: str | None = None,
        mlflow_model_name: str = "model",
        onnx_filepath: str | None = None,
        onnx_int8_filepath: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._files = TorchDataset(filepath=filepath, version=Version(load_version or None, None))
        self._graph_files = {"onnx": onnx_filepath, "onnx_int8": onnx_int8_filepath}
        self._version = load_version or None
        self._uri = model_uri or (f"runs:/{mlflow_run_id}/{mlflow_model_name}" if mlflow_run_id else None)
        self._parameter = "inference.model_uri" if model_uri else "inference.mlflow_run_id"
        self.metadata = metadata

    def load(self) -> dict[str, Any]:
        if self._uri:
            return self._load_from_mlflow()
        try:
            path = kedro_private.load_path(self._files)
            bundle = self._files.load()
        except (DatasetError, FileNotFoundError) as error:
            try:
                versions = self._files.list_versions(full_path=False)[:5]
            except DatasetError:
                versions = []
            which = f"version {self._version!r} of the model" if self._version else "model"
            raise DatasetError(
                f"Found no {which} in {kedro_private.filepath(self._files)}: run `kedro run --pipelines training` "
                "first, or set inference.model_version or inference.model_uri"
                + (f" (the latest versions: {', '.join(versions)})" if versions else "")
            ) from error
        return {**bundle, "source": str(path), **self._graphs_beside(PurePosixPath(path))}

    def _graphs_beside(self, path: PurePosixPath) -> dict[str, Any]:
        """The graphs of the same version as the bundle at ``path`` (``<filepath>/<version>/<name>``)."""
        found = {}
        for runtime, folder in self._graph_files.items():
            if folder is None:
                continue
            graph = Path(folder) / path.parent.name / Path(folder).name
            if graph.is_file() and graph.stat().st_size:  # an empty file: the run kept no such graph
                found[f"{GRAPH_KEYS[runtime]}"] = graph.read_bytes()
                found[f"{GRAPH_KEYS[runtime]}_source"] = str(graph)
        return found

    def _load_from_mlflow(self) -> dict[str, Any]:
        import mlflow  # only when asked: the tracking URI is the one kedro-mlflow set from mlflow.yml

        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=self._uri))
            flavor = mlflow.models.Model.load(local).flavors["python_function"]
            relative = flavor["artifacts"]["model"]["path"]
            registered = registered_version(self._uri)
        except (mlflow.exceptions.MlflowException, OSError, KeyError) as error:
            raise DatasetError(
                f"{self._parameter}: cannot read the model bundle of {self._uri} from {mlflow.get_tracking_uri()} "
                f"({error}). Give the MLflow model of a finished `training` run: models:/<name>@<alias>, "
                "models:/<name>/<version> or runs:/<run id>/model (see `mlflow ui --backend-store-uri sqlite:///mlflow.db`)."
            ) from error
        bundle = torch.load(local / relative, weights_only=True, map_location="cpu")
        graphs = {}
        for runtime, key in GRAPH_KEYS.items():
            if runtime in flavor["artifacts"]:
                graph = flavor["artifacts"][runtime]["path"]
                graphs.update({key: (local / graph).read_bytes(), f"{key}_source": f"{self._uri}/{graph}"})
        return {
            **bundle,
            **graphs,
            "source": f"{self._uri}/{relative}",
            **({"registered_version": registered} if registered else {}),
        }

    def save(self, data: None) -> None:
        raise DatasetError(f"{type(self).__name__} is read-only: training writes the catalog's `model`")

    def _describe(self) -> dict[str, Any]:
        return {
            "filepath": kedro_private.filepath(self._files),
            "version": self._version,
            "model_uri": self._uri,
        }

    def _exists(self) -> bool:
        return bool(self._uri) or self._files.exists()


def registered_version(uri: str) -> dict[str, Any] | None:
    """Name, version and run of the registered model version that a ``models:/<name>@<alias>`` or
    ``models:/<name>/<version>`` URI names; None for other URIs (``runs:/``, ``models:/m-<id>``)."""
    import mlflow

    if not uri.startswith("models:/"):
        return None
    rest = uri[len("models:/") :].strip("/")
    parts = rest.split("/")
    if "@" not in rest and (len(parts) != 2 or not parts[1].isdigit()):
        return None  # checked before any client opens the tracking store
    client = mlflow.MlflowClient()
    if "@" in rest:
        version = client.get_model_version_by_alias(*rest.split("@", 1))
    else:
        version = client.get_model_version(*parts)
    return {"name": version.name, "version": int(version.version), "run_id": version.run_id}


class CheckpointStoreDataset(AbstractDataset[None, CheckpointStore]):
    """Hands the training node the store where it keeps each epoch's state (read-only).

    The checkpoint is a working file that one run replaces after every epoch, so that an interrupted
    run can resume (``training.resume: true``); it is not a versioned output.

    Example ``catalog.yml`` entry:

    .. code-block:: yaml

        training_checkpoint:
          type: malaria_pipeline.framework.datasets.CheckpointStoreDataset
          folder: data/06_models/checkpoint
    """

    def __init__(self, *, folder: str, metadata: dict[str, Any] | None = None) -> None:
        self._folder = folder
        self.metadata = metadata

    def load(self) -> CheckpointStore:
        return CheckpointStore(Path(self._folder))

    def save(self, data: None) -> None:
        raise DatasetError(
            f"{type(self).__name__} is read-only: the training node writes {self._folder} itself"
        )

    def _describe(self) -> dict[str, Any]:
        return {"folder": self._folder}

    def _exists(self) -> bool:
        return True


class ImageFolderDataset(_LocalVersionedDataset[dict[str, Any], dict[str, Any]]):
    """A versioned folder of PNG files: saves ``{file name: uint8 H×W×3 array}``, loads the same.

    Each version is a folder ``<filepath>/<version>/<folder name>/``; the names are plain file names (no
    folders, no ``..``), so a saved version never writes outside its folder.

    Example ``catalog.yml`` entry:

    .. code-block:: yaml

        explanation_overlays:
          type: malaria_pipeline.framework.datasets.ImageFolderDataset
          filepath: data/08_reporting/explanations
          versioned: true
    """

    def load(self) -> dict[str, Any]:
        import numpy as np
        from PIL import Image

        folder = Path(kedro_private.load_path(self))
        images = {}
        for path in sorted(folder.glob("*.png")):
            with Image.open(path) as image:
                images[path.name] = np.asarray(image.convert("RGB"))
        return images

    def save(self, data: dict[str, Any]) -> None:
        from PIL import Image

        folder = Path(kedro_private.save_path(self))
        folder.mkdir(parents=True, exist_ok=True)
        for name, pixels in data.items():
            if Path(name).name != name or not name.endswith(".png") or name.startswith("."):
                raise DatasetError(
                    f"{name!r} is not a plain .png file name: {type(self).__name__} writes into {folder} only"
                )
            Image.fromarray(pixels).save(folder / name)
        self.filesystem.invalidate_cache(str(folder))

    def _exists(self) -> bool:
        return self._latest_is(self.filesystem.isdir)


class _EmptyWhileAbsent:
    """A versioned table that loads as an empty table of ``columns`` while no version of it exists."""

    def __init__(self, *, columns: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._columns = list(columns or [])

    def load(self) -> pd.DataFrame:
        if not self.exists():
            return pd.DataFrame({name: pd.Series(dtype="object") for name in self._columns})
        return super().load()


class OptionalCSVDataset(_EmptyWhileAbsent, CSVDataset):
    """A versioned CSV file that loads as an empty table of ``columns`` while no version of it exists.

    For a pipeline input that another pipeline writes and that a run may not have yet: training reads
    the latest label audit of ``cross_validation`` this way (``label_issues_to_exclude``), and uses it
    only when ``training.exclude_label_issues`` is true, which then refuses an empty audit by name.
    """


class OptionalJSONDataset(JSONDataset):
    """A versioned JSON file that loads as None while no version of it exists: the ONNX check, which the
    model card of a model trained before models were exported reads as none (``onnx_check``)."""

    def load(self) -> Any:
        return super().load() if self.exists() else None


class OptionalParquetDataset(_EmptyWhileAbsent, ParquetDataset):
    """A versioned Parquet file that loads as an empty table of ``columns`` while no version of it exists:
    ingestion reads the latest ``label_corrections`` of ``collect_reviews`` this way
    (``label_corrections_to_apply``), and ``collect_reviews`` its own previous ``reviewed_cells``."""


class CrossValidationArtifactDataset(AbstractDataset[None, dict[str, Any] | None]):
    """A JSON artifact of the cross-validation run that a training run claims, read from MLflow
    (read-only): the artifact's dict with one more key, ``cross_validation_run_id``; None when no run is
    claimed (``run_id`` null).

    ``run_id`` is an MLflow run id, or ``latest``: the newest finished ``cross_validation`` run of the active
    run's experiment, as :func:`~malaria_pipeline.framework.tracking.cross_validation_run` resolves it for
    the run's tag. A run without the artifact (one made before cross-validation wrote it) fails by name.

    Example ``catalog.yml`` entry:

    .. code-block:: yaml

        claimed_cv_patient_settings:
          type: malaria_pipeline.framework.datasets.CrossValidationArtifactDataset
          run_id: ${runtime_params:cross_validation_run_id, ${globals:cross_validation_run_id}}
          artifact_path: cv_patient_settings.json
    """

    def __init__(
        self,
        *,
        run_id: str | None,
        artifact_path: str,
        parameter: str = "cross_validation_run_id",
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._run_id = str(run_id) if run_id else None
        self._artifact = artifact_path
        self._parameter = parameter
        self.metadata = metadata

    def load(self) -> dict[str, Any] | None:
        if not self._run_id:
            return None
        import mlflow  # only when a run is claimed: the tracking URI is the one kedro-mlflow set

        from malaria_pipeline.framework import tracking

        active = mlflow.active_run()
        if active is None and self._run_id == "latest":
            raise DatasetError(
                f"{self._parameter} is latest, which is looked up in the experiment of the active MLflow run, "
                "and none is active: run through `kedro run` (kedro-mlflow opens one), or give the run's id"
            )
        try:
            run = tracking.cross_validation_run(self._run_id, active.info.experiment_id if active else None)
        except ValueError as error:
            raise DatasetError(str(error)) from error
        run_id = run.info.run_id
        try:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=self._artifact)
        except (mlflow.exceptions.MlflowException, OSError) as error:
            raise DatasetError(
                f"Cross-validation run {run_id} ({self._parameter}={self._run_id}) has no artifact {self._artifact}: "
                "it ran before cross-validation stored what a model trained on every patient takes from it. "
                "Run `kedro run --pipelines cross_validation` again with the same parameters, and claim the new "
                f"run ({self._parameter}=latest or its id)."
            ) from error
        return {**json.loads(Path(local).read_text()), "cross_validation_run_id": run_id}

    def save(self, data: None) -> None:
        raise DatasetError(
            f"{type(self).__name__} is read-only: the cross_validation pipeline logs {self._artifact} to its run"
        )

    def _describe(self) -> dict[str, Any]:
        return {"run_id": self._run_id, "artifact_path": self._artifact}

    def _exists(self) -> bool:
        return True


class OptionalDataset(AbstractDataset[None, Any]):
    """The latest version of another dataset, or None while it has none (read-only).

    For an input that a node needs only when a parameter asks for it, and that a run may not have: the
    ``review`` pipeline reads the archive's packed images this way, which it shows only with
    ``review.include_label_issues``.

    Example ``catalog.yml`` entry:

    .. code-block:: yaml

        review_archive_index:
          type: malaria_pipeline.framework.datasets.OptionalDataset
          dataset:
            type: pandas.ParquetDataset
            filepath: data/02_intermediate/image_index.parquet
            versioned: true
    """

    def __init__(self, *, dataset: dict[str, Any], metadata: dict[str, Any] | None = None) -> None:
        self._dataset = AbstractDataset.from_config("optional", dict(dataset))
        self.metadata = metadata

    def load(self) -> Any:
        return self._dataset.load() if self._dataset.exists() else None

    def save(self, data: None) -> None:
        raise DatasetError(f"{type(self).__name__} is read-only: it reads {self._dataset}")

    def _describe(self) -> dict[str, Any]:
        return {"dataset": str(self._dataset)}

    def _exists(self) -> bool:
        return True
