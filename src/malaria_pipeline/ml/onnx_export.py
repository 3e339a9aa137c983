"""The trained classifier as one portable ONNX graph, and its check against PyTorch.

The graph is the calibrated classifier whole: ``uint8, N×3×S×S`` images in (any N), class probabilities
``float32, N×classes`` out, with the normalization and the temperature inside, so that ONNX Runtime (on a
server, in Spark, on a phone) answers what :meth:`~malaria_pipeline.ml.models.CellClassifier.predict_proba`
answers without PyTorch. Exported with ``torch.onnx`` (the ``torch.export``-based exporter).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from malaria_pipeline.ml.models import CellClassifier

logger = logging.getLogger(__name__)

INPUT, OUTPUT = "images", "probabilities"
OPSET = 18


class OnnxMismatchError(ValueError):
    """The exported graph answers differently from PyTorch."""


class CalibratedProbabilities(nn.Module):
    """``uint8`` images in, the softmax of the classifier's logits divided by its temperature out."""

    def __init__(self, classifier: CellClassifier):
        super().__init__()
        self.classifier = classifier
        self.temperature = float(classifier.temperature)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.classifier(images) / self.temperature, dim=1)


def export_onnx(classifier: CellClassifier) -> bytes:
    """The ONNX graph (serialized ``ModelProto``) of ``classifier`` as :class:`CalibratedProbabilities`, on
    the CPU in float32 and the contiguous memory layout, with a dynamic batch dimension."""
    classifier = classifier.cpu().eval()
    speed = classifier.channels_last, classifier.bf16
    classifier.set_speed(channels_last=False, bf16=False)
    try:
        example = torch.zeros((2, 3, classifier.image_size, classifier.image_size), dtype=torch.uint8)
        program = torch.onnx.export(
            CalibratedProbabilities(classifier).eval(),
            (example,),
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_shapes=({0: torch.export.Dim("cells")},),
            opset_version=OPSET,
            dynamo=True,
            verbose=False,
        )
        return program.model_proto.SerializeToString()
    finally:
        classifier.set_speed(*speed)


def onnx_probabilities(graph: bytes, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Class probabilities ``float32, N×classes`` of ``uint8, N×3×S×S`` images by ONNX Runtime (CPU)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(graph, providers=["CPUExecutionProvider"])
    parts = [
        session.run([OUTPUT], {INPUT: np.ascontiguousarray(images[start : start + batch_size])})[0]
        for start in range(0, len(images), batch_size)
    ]
    return np.concatenate(parts) if parts else np.empty((0, 0), dtype=np.float32)


def check_onnx(
    graph: bytes, classifier: CellClassifier, images: torch.Tensor, tolerance: float, batch_size: int = 256
) -> dict[str, Any]:
    """The largest |Δp| between the graph (ONNX Runtime) and PyTorch on ``images``, both calibrated, and
    whether their labels agree at 0.5.

    Raises:
        OnnxMismatchError: a gap above ``tolerance``, named.
    """
    expected = classifier.predict_proba(images, batch_size=batch_size).numpy()
    answered = onnx_probabilities(graph, images.numpy(), batch_size)
    gap = float(np.abs(answered - expected).max()) if len(images) else 0.0
    report = {
        "cells": int(len(images)),
        "max_abs_difference": gap,
        "tolerance": float(tolerance),
        "same_labels": bool((answered.argmax(axis=1) == expected.argmax(axis=1)).all()),
        "opset": OPSET,
        "onnxruntime": _version("onnxruntime"),
        "bytes": len(graph),
    }
    if gap > tolerance:
        raise OnnxMismatchError(
            f"The ONNX graph's probabilities differ from PyTorch's by up to {gap:.3g} on {len(images)} cells, "
            f"more than training.onnx.tolerance ({tolerance:g}): the export is not the trained model"
        )
    return report


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)
