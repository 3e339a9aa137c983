"""The exported graph quantized to int8, and how fast a graph answers.

Post-training static quantization with ``onnxruntime.quantization``: the graph is pre-processed (shape
inference and ONNX Runtime's graph optimizations, ``quant_pre_process``), then its weights and
activations are quantized to int8 in QDQ form, the activations' ranges calibrated (MinMax) on cells the
model did not train on. The int8 graph keeps the float32 graph's model description (:mod:`.onnx_runtime`).

No torch here: NumPy and ONNX Runtime.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from malaria_pipeline.ml.onnx_runtime import INPUT, OnnxClassifier


def quantize_int8(graph: bytes, calibration: np.ndarray, batch_size: int = 64) -> bytes:
    """The int8 (QDQ, per-channel weights) graph of the float32 ``graph``, its activation ranges
    calibrated on ``calibration`` (``uint8, N×3×S×S``), with the float32 graph's ``metadata_props``."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(range(0, len(calibration), batch_size))

        def get_next(self) -> dict[str, np.ndarray] | None:
            start = next(self._batches, None)
            return None if start is None else {INPUT: calibration[start : start + batch_size]}

    with tempfile.TemporaryDirectory() as folder:
        source, prepared, quantized = (Path(folder) / name for name in ("fp32", "prepared", "int8"))
        source.write_bytes(graph)
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(quantized),
            Batches(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
        )
        model = onnx.load(str(quantized))
    original = onnx.load_from_string(graph)
    del model.metadata_props[:]
    model.metadata_props.extend(original.metadata_props)
    return model.SerializeToString()


def cells_per_second(
    classifiers: dict[str, OnnxClassifier], images: np.ndarray, batch_size: int = 256, rounds: int = 3
) -> dict[str, float]:
    """Cells per second of each classifier on ``images``, measured side by side: ``rounds`` rounds, each
    classifier once per round in turn (so that a busy machine slows them alike), the best round kept."""
    best = {name: 0.0 for name in classifiers}
    for name, classifier in classifiers.items():  # a first pass each: ONNX Runtime allocates its arenas
        classifier.predict_proba(images[:batch_size], batch_size)
    for _ in range(rounds):
        for name, classifier in classifiers.items():
            start = time.perf_counter()
            classifier.predict_proba(images, batch_size)
            best[name] = max(best[name], len(images) / (time.perf_counter() - start))
    return best
