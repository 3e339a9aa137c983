"""Which classifier answers for ``inference.runtime``, and its answers: the model's ONNX graph on ONNX
Runtime (``onnx``, ``onnx_int8``) or its torch network (``torch``), each kept per bundle, and P(positive
class) of packed images with the label at a threshold. The inference nodes, the served model, Spark's
workers and the review queue all choose here.

Importing this module imports no torch; the torch paths import it where they start.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from malaria_pipeline.ml.onnx_runtime import GRAPH_KEYS, OnnxClassifier, check_runtime

if TYPE_CHECKING:
    import torch

    from malaria_pipeline.ml.model_io import CellClassifier

logger = logging.getLogger(__name__)

# The served model calls its node once a request with the same bundle: the classifier made from a
# bundle is kept, per bundle object, runtime and device (the bundle is held too, so that its id stays its own).
_CLASSIFIERS: dict[tuple[int, str, str], tuple[dict[str, Any], Any]] = {}


def classifier_for(bundle: dict[str, Any], params: dict[str, Any]) -> CellClassifier | OnnxClassifier:
    """What answers for ``params["runtime"]``: the bundle's ONNX graph on ONNX Runtime (``onnx``; ``onnx_int8``
    its int8 graph, else the float32 one), or the torch network on ``params["device"]``. A bundle without
    the graph asked for (a model trained before models were exported) falls back, with one INFO line."""
    runtime = check_runtime(params.get("runtime", "onnx"))
    key = (id(bundle), runtime, str(params["device"]))
    cached = _CLASSIFIERS.get(key)
    if cached is None or cached[0] is not bundle:
        if len(_CLASSIFIERS) >= 4:
            _CLASSIFIERS.clear()
        cached = _CLASSIFIERS[key] = (bundle, make_classifier(bundle, runtime, params))
    classifier = cached[1]
    positive = params["positive_class"]
    if positive not in classifier.class_names or len(classifier.class_names) != 2:
        raise ValueError(
            f"The model's classes are {classifier.class_names}: inference needs {positive} and one other"
        )
    return classifier


def make_classifier(
    bundle: dict[str, Any], runtime: str, params: dict[str, Any]
) -> CellClassifier | OnnxClassifier:
    which = bundle.get("source", "this model")
    classifier = onnx_classifier(bundle, runtime, which)
    if classifier is not None:
        if "state_dict" in bundle:  # the bundle's own weights are at hand: the graph must be theirs
            from malaria_pipeline.ml.model_io import weights_sha256

            classifier.check_model(bundle, weights_sha256(bundle))
        return classifier
    if "state_dict" not in bundle:
        raise ValueError(
            f"{which} is an ONNX graph alone: PyTorch (inference.runtime=torch, inference.explain) needs the "
            "model bundle, model.pt"
        )
    from malaria_pipeline.ml.device import pick_device
    from malaria_pipeline.ml.model_io import load_model

    return load_model(bundle, device=pick_device(params["device"]))


def onnx_classifier(graphs: dict[str, Any], runtime: str, which: str) -> OnnxClassifier | None:
    """The graph that ``runtime`` asks for among ``graphs`` (the keys of :data:`GRAPH_KEYS`' values, and
    ``<key>_source`` for their files) on ONNX Runtime; None for ``torch``, or where there is no graph (a
    model trained before models were exported), with one INFO line. ``onnx_int8`` without an int8 graph
    answers with the float32 one, with one INFO line. ``which`` names the model in both."""
    if (
        runtime == "onnx_int8"
        and graphs.get(GRAPH_KEYS["onnx_int8"]) is None
        and graphs.get(GRAPH_KEYS["onnx"])
    ):
        logger.info(
            "inference.runtime is onnx_int8, but %s keeps no int8 graph (its training run kept none: not faster, "
            "or not as accurate as float32; see its onnx_int8_check): answering with its float32 ONNX graph",
            which,
        )
        runtime = "onnx"
    if runtime == "torch":
        return None
    graph = graphs.get(GRAPH_KEYS[runtime])
    if graph is None:
        logger.info(
            "inference.runtime is %s, but %s has no ONNX graph (it was trained before models were exported): "
            "answering with PyTorch",
            runtime,
            which,
        )
        return None
    path = graphs.get(f"{GRAPH_KEYS[runtime]}_source", which)
    return OnnxClassifier(graph, path=path, run=which, runtime=runtime)


def torch_classifier(bundle: dict[str, Any], params: dict[str, Any]) -> CellClassifier:
    """The bundle's network on ``params["device"]`` (kept per bundle, as :func:`classifier_for` keeps its own)."""
    return classifier_for(bundle, {**params, "runtime": "torch"})


def runtime_name(classifier: CellClassifier | OnnxClassifier) -> str:
    """``onnx``, ``onnx_int8`` or ``torch``: what answered."""
    return classifier.runtime if isinstance(classifier, OnnxClassifier) else "torch"


def classify(
    classifier: CellClassifier | OnnxClassifier,
    images: torch.Tensor | np.ndarray,
    threshold: float,
    params: dict[str, Any],
) -> tuple[np.ndarray, np.ndarray]:
    """P(positive class) of ``uint8, N×3×S×S`` images (with ``params["tta"]``), and the label at ``threshold``."""
    positive = params["positive_class"]
    if isinstance(classifier, OnnxClassifier):
        probabilities = classifier.predict_proba(np.asarray(images), params["batch_size"], params["tta"])
    else:
        import torch

        probabilities = classifier.predict_proba(
            torch.as_tensor(images), batch_size=params["batch_size"], tta=params["tta"]
        ).numpy()
    p_positive = probabilities[:, classifier.class_names.index(positive)].astype(np.float64)
    negative = next(name for name in classifier.class_names if name != positive)
    return p_positive, np.where(p_positive >= threshold, positive, negative)
