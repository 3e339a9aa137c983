"""The trained model as one file: weights and everything needed to rebuild and use them.

A bundle is a plain dict of tensors, strings and numbers, so ``torch.load(path, weights_only=True)``
reads it safely, and :func:`load_model` rebuilds the classifier without the training code's state.

Optional keys, absent from bundles saved before they existed (such a bundle still loads):

- ``temperature``: T of temperature scaling, fitted on the validation subset (absent: 1).
- ``operating_point``: the threshold on P(positive class) chosen on the validation subset for a target
  sensitivity, which ``inference.threshold: auto`` uses: ``threshold``, ``positive_class``,
  ``target_sensitivity``, ``tta`` (whether it was chosen on test-time-augmented probabilities), and the
  ``sensitivity`` and ``specificity`` it gave on validation (absent: no threshold was chosen).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from malaria_pipeline.ml.models import CellClassifier, build_network

BUNDLE_FORMAT = 1


def model_bundle(
    classifier: CellClassifier,
    *,
    architecture: str,
    network_args: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything :func:`load_model` needs, weights on the CPU.

    Args:
        classifier: the trained classifier (not compiled).
        architecture: as for :func:`~malaria_pipeline.ml.models.build_network`.
        network_args: the other arguments of ``build_network`` (width, small_input_stem).
        extra: more facts to keep (the best epoch, the training parameters...).
    """
    return {
        "format": BUNDLE_FORMAT,
        "architecture": architecture,
        "network_args": dict(network_args),
        "class_names": list(classifier.class_names),
        "mean": classifier.normalize.mean.flatten().tolist(),
        "std": classifier.normalize.std.flatten().tolist(),
        "image_size": int(classifier.image_size),
        "state_dict": {
            name: tensor.detach().cpu().clone() for name, tensor in classifier.network.state_dict().items()
        },
        "temperature": float(classifier.temperature),
        "torch_version": str(torch.__version__),  # a plain str: TorchVersion is not weights_only-safe
        **(extra or {}),
    }


def weights_sha256(bundle: dict[str, Any]) -> str:
    """The SHA-256 of a bundle's weights: each tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(bundle["state_dict"]):
        tensor = bundle["state_dict"][name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_model(source: str | Path | dict[str, Any], device: str | torch.device = "cpu") -> CellClassifier:
    """Rebuilds the classifier of a saved bundle (a path to the ``.pt`` file, or the loaded dict), in eval mode."""
    bundle = (
        torch.load(source, weights_only=True, map_location="cpu")
        if isinstance(source, (str, Path))
        else source
    )
    if bundle.get("format") != BUNDLE_FORMAT:
        raise ValueError(
            f"Not a malaria-pipeline model bundle (format {bundle.get('format')!r}): {source!s:.200}"
        )
    network = build_network(
        bundle["architecture"],
        num_classes=len(bundle["class_names"]),
        image_size=bundle["image_size"],
        pretrained=False,
        **bundle["network_args"],
    )
    network.load_state_dict(bundle["state_dict"])
    classifier = CellClassifier(
        network=network,
        mean=bundle["mean"],
        std=bundle["std"],
        class_names=bundle["class_names"],
        image_size=bundle["image_size"],
    )
    classifier.temperature = float(bundle.get("temperature", 1.0))
    # Channels-last batches of 256 measured fastest for inference on the CPU: docs/benchmarks.md.
    return classifier.to(device).set_speed(channels_last=True, bf16=False).eval()
