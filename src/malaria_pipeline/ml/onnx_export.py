"""The trained classifier as one portable ONNX graph, and its check against PyTorch.

The graph is the calibrated classifier whole: ``uint8, N×3×S×S`` images in (any N), class probabilities
``float32, N×classes`` out, with the normalization and the temperature inside, so that ONNX Runtime (on a
server, in Spark, on a phone) answers what :meth:`~malaria_pipeline.ml.models.CellClassifier.predict_proba`
answers without PyTorch. Exported with ``torch.onnx`` (the ``torch.export``-based exporter). The graph's
``metadata_props`` keep the bundle less its weights and their SHA-256 (:mod:`.onnx_runtime`).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from malaria_pipeline.ml.model_io import weights_sha256
from malaria_pipeline.ml.models import CellClassifier
from malaria_pipeline.ml.onnx_runtime import INPUT, MODEL_KEY, OUTPUT, WEIGHTS_KEY, OnnxClassifier

logger = logging.getLogger(__name__)

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


def export_onnx(classifier: CellClassifier, bundle: dict[str, Any]) -> bytes:
    """The ONNX graph (serialized ``ModelProto``) of ``classifier`` as :class:`CalibratedProbabilities`, on
    the CPU in float32 and the contiguous memory layout, with a dynamic batch dimension; its
    ``metadata_props`` hold ``bundle`` (the one ``classifier`` was loaded from) less its weights, as JSON,
    and the SHA-256 of the weights."""
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
        proto = program.model_proto
        described = {key: value for key, value in bundle.items() if key != "state_dict"}
        for key, value in {MODEL_KEY: json.dumps(described), WEIGHTS_KEY: weights_sha256(bundle)}.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        return proto.SerializeToString()
    finally:
        classifier.set_speed(*speed)


def check_onnx(
    graph: bytes, classifier: CellClassifier, images: torch.Tensor, tolerance: float, batch_size: int = 256
) -> dict[str, Any]:
    """The largest |Δp| between the graph (ONNX Runtime) and PyTorch on ``images``, both calibrated, and
    whether their labels agree at 0.5.

    Raises:
        OnnxMismatchError: a gap above ``tolerance``, named.
    """
    expected = classifier.predict_proba(images, batch_size=batch_size).numpy()
    exported = OnnxClassifier(graph, path="the exported graph", run="this training run")
    answered = exported.predict_proba(images.numpy(), batch_size)
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
