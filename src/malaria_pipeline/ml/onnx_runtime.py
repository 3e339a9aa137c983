"""The exported classifier on ONNX Runtime, without PyTorch: what ``inference``, the served model and
Spark's workers answer with when ``inference.runtime`` is ``onnx`` (or ``onnx_int8``).

The graph (:mod:`.onnx_export`) is the calibrated classifier whole, and its ``metadata_props`` keep the
model bundle less its weights (class names, image size, operating point, reference cells, patient rule:
:data:`MODEL_KEY`) and the SHA-256 of those weights (:data:`WEIGHTS_KEY`). So one ``.onnx`` file answers
per cell and per patient, as the bundle does, and can be matched to the bundle it was exported from.

Nothing here imports torch; ``onnxruntime`` is imported when a graph is first loaded.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

INPUT, OUTPUT = "images", "probabilities"
MODEL_KEY = "malaria_pipeline.model"
WEIGHTS_KEY = "malaria_pipeline.weights_sha256"

# inference.runtime: the exported graph in float32, PyTorch, or the graph quantized to int8.
RUNTIMES = ("onnx", "torch", "onnx_int8")
# Where each ONNX runtime finds its graph: the key of a loaded bundle, and the served model's artifact.
GRAPH_KEYS = {"onnx": "onnx_graph", "onnx_int8": "onnx_int8_graph"}
# What the graph holds inside besides the weights: a bundle that differs there is not the graph's model.
BAKED_IN = ("class_names", "image_size", "mean", "std", "temperature")


class OnnxModelError(ValueError):
    """An ONNX file that is not a readable graph of this project's classifier, or not of the model asked for."""


def check_runtime(runtime: Any, parameter: str = "inference.runtime") -> str:
    """``runtime`` when it is one of :data:`RUNTIMES`.

    Raises:
        ValueError: any other value, with the allowed ones.
    """
    if runtime not in RUNTIMES:
        raise ValueError(
            f"{parameter} is {runtime!r}: give onnx (the exported graph on ONNX Runtime, the default), torch "
            "(PyTorch) or onnx_int8 (the graph quantized to int8, where the training run kept one)"
        )
    return runtime


def import_onnxruntime(runtime: str = "onnx", parameter: str = "inference.runtime"):
    """The ``onnxruntime`` module.

    Raises:
        ImportError: it is not installed, naming the package and the runtime to choose instead.
    """
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError(
            f"{parameter} is {runtime}, but the package onnxruntime is not installed in {sys.executable}: "
            f"install it (pip install onnxruntime, the version in requirements.lock), or set {parameter}=torch"
        ) from error
    return onnxruntime


class OnnxClassifier:
    """The exported classifier on ONNX Runtime's CPU provider: ``uint8, N×3×S×S`` in, probabilities out.

    Args:
        graph: the serialized ONNX model.
        path: the file (or MLflow artifact) it came from, named in every error.
        run: the model it belongs to (a file version, an MLflow run), named in every error.
        runtime: ``onnx`` or ``onnx_int8``, named in the errors.
        threads: ONNX Runtime's intra-op threads (None: ``OMP_NUM_THREADS`` where set, else its default).

    Raises:
        ImportError: onnxruntime is not installed.
        OnnxModelError: the file is not a readable ONNX graph, or not one of this project's classifiers.
    """

    def __init__(
        self, graph: bytes, *, path: str, run: str, runtime: str = "onnx", threads: int | None = None
    ) -> None:
        onnxruntime = import_onnxruntime(runtime)
        self.path, self.run, self.runtime, self.graph = path, run, runtime, graph
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only: its warnings are for graph authors, not users
        threads = threads or _omp_threads()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        except Exception as error:  # noqa: BLE001 - ONNX Runtime's own error classes (Fail, InvalidProtobuf...)
            raise self._error(f"is not a readable ONNX graph ({_first_line(error)})") from error
        metadata = self.session.get_modelmeta().custom_metadata_map
        if MODEL_KEY not in metadata:
            raise self._error(
                "holds no malaria-pipeline model description: it was not exported by a training run"
            )
        self.model: dict[str, Any] = json.loads(metadata[MODEL_KEY])
        self.weights_sha256: str | None = metadata.get(WEIGHTS_KEY)
        self.class_names: list[str] = list(self.model["class_names"])
        self.image_size = int(self.model["image_size"])
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        expected = ["cells", 3, self.image_size, self.image_size]
        if (
            [i.name for i in inputs] != [INPUT]
            or inputs[0].type != "tensor(uint8)"
            or list(inputs[0].shape[1:]) != expected[1:]
            or [o.name for o in outputs] != [OUTPUT]
            or (isinstance(outputs[0].shape[1], int) and outputs[0].shape[1] != len(self.class_names))
        ):
            raise self._error(
                f"takes {[(i.name, i.type, i.shape) for i in inputs]} and gives {[(o.name, o.shape) for o in outputs]}, "
                f"not uint8 images N×3×{self.image_size}×{self.image_size} in and {len(self.class_names)} "
                "probabilities out as its model description says"
            )

    def _error(self, what: str) -> OnnxModelError:
        return OnnxModelError(
            f"{self.path} (the ONNX graph of {self.run}) {what}: export it again with `kedro run --pipelines "
            f"training`, or set inference.runtime=torch"
        )

    def check_model(self, bundle: dict[str, Any], weights_sha256: str) -> None:
        """Raises :class:`OnnxModelError` unless the graph was exported from ``bundle``: weights of this
        SHA-256, and the same classes, image size, normalization and temperature (inside the graph)."""
        if self.weights_sha256 != weights_sha256:
            raise self._error(
                f"was exported from other weights (SHA-256 {str(self.weights_sha256)[:12]}…) than the model "
                f"bundle's ({weights_sha256[:12]}…)"
            )
        for key in BAKED_IN:
            ours, theirs = self.model.get(key), bundle.get(key)
            if ours != theirs and not (key == "temperature" and (ours or 1.0) == (theirs or 1.0)):
                raise self._error(f"has {key} {ours!r} inside, and the model bundle {theirs!r}")

    def predict_proba(self, images: np.ndarray, batch_size: int = 256, tta: bool = False) -> np.ndarray:
        """Class probabilities ``float32, N×classes`` of ``uint8, N×3×S×S``, ``batch_size`` at a time; with
        ``tta`` the mean over the 8 symmetries of the square, as
        :meth:`~malaria_pipeline.ml.models.CellClassifier.predict_proba` averages them."""
        if len(images) == 0:
            return np.empty((0, len(self.class_names)), dtype=np.float32)
        parts = []
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            views = square_symmetries(batch) if tta else [batch]
            answers = [self.session.run([OUTPUT], {INPUT: np.ascontiguousarray(view)})[0] for view in views]
            parts.append(np.mean(answers, axis=0, dtype=np.float32) if tta else answers[0])
        return np.concatenate(parts)


def square_symmetries(images: np.ndarray) -> list[np.ndarray]:
    """The 8 symmetries of the square of ``…×S×S`` images: the 4 quarter turns of the images and of
    their transposes."""
    transposed = np.swapaxes(images, -1, -2)
    return [np.rot90(view, k, axes=(-2, -1)) for view in (images, transposed) for k in range(4)]


def _omp_threads() -> int | None:
    threads = os.environ.get("OMP_NUM_THREADS", "")
    return int(threads) if threads.isdigit() and int(threads) > 0 else None


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return " ".join(lines[0].split()) if lines else type(error).__name__
