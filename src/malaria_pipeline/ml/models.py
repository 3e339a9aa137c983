"""Build the networks: ResNet-9, and torchvision's ResNet-18/34/50 with a new head.

torchvision's ResNets are built by torchvision and adapted in :func:`build_network` only: the
ImageNet head is replaced by one with ``num_classes`` outputs and, for small inputs, the stem keeps its
(pretrained) 7×7 convolution but with stride 1 and without the max-pool, so that a 64-pixel cell is
not reduced to 2×2 pixels before the last block.
"""

from __future__ import annotations

import os
import urllib.error

import torch
import torchvision
from torch import nn

from malaria_pipeline.ml.resnet9 import ResNet9

TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50")
ARCHITECTURES = ("resnet9", *TORCHVISION_RESNETS)
# Below this side, torchvision ResNets get the small-input stem (no downsampling in the stem).
SMALL_INPUT_BELOW = 128


class PretrainedWeightsError(RuntimeError):
    """ImageNet weights were asked for but can't be had (offline, no file in the torch cache)."""


def build_network(
    architecture: str,
    num_classes: int = 2,
    image_size: int = 64,
    width: int = 64,
    pretrained: bool = False,
    small_input_stem: bool | None = None,
) -> nn.Module:
    """The network named by ``architecture``, for ``N×3×image_size×image_size`` inputs.

    Args:
        architecture: ``resnet9``, ``resnet18``, ``resnet34`` or ``resnet50``.
        num_classes: outputs of the head.
        image_size: side of the input images, in pixels.
        width: base width of ResNet-9 (ignored by the others).
        pretrained: load torchvision's ImageNet weights (ResNet-18/34/50 only).
        small_input_stem: stride-1 stem without max-pool; None chooses it below 128 pixels.

    Raises:
        ValueError: an unknown architecture, or pretrained ResNet-9 (there are no such weights).
        PretrainedWeightsError: the weights can't be downloaded nor found in the torch cache.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"Unknown training.architecture {architecture!r}: use one of {list(ARCHITECTURES)}")
    if architecture == "resnet9":
        if pretrained:
            raise ValueError("There are no pretrained ResNet-9 weights: set training.pretrained=false for resnet9")
        return ResNet9(num_classes=num_classes, width=width)

    weights = torchvision.models.get_model_weights(architecture).DEFAULT if pretrained else None
    try:
        network = torchvision.models.get_model(architecture, weights=weights)
    except (urllib.error.URLError, OSError) as error:
        raise PretrainedWeightsError(_missing_weights_message(architecture, weights, error)) from error
    network.fc = nn.Linear(network.fc.in_features, num_classes)
    if small_input_stem if small_input_stem is not None else image_size < SMALL_INPUT_BELOW:
        network.conv1.stride = (1, 1)
        network.maxpool = nn.Identity()
    return network


def _missing_weights_message(architecture: str, weights, error: Exception) -> str:
    cache = os.path.join(torch.hub.get_dir(), "checkpoints")
    filename = os.path.basename(weights.url)
    return (
        f"Could not download the ImageNet weights of {architecture} ({error}); this machine may be offline. "
        f"Download {weights.url} on a machine with internet and put it in the torch cache as "
        f"{os.path.join(cache, filename)} (TORCH_HOME moves the cache), or set training.pretrained=false."
    )


def layer_groups(network: nn.Module, architecture: str) -> list[nn.Module]:
    """The network's layers from input to output in groups, the head last.

    Stage 2 of fine-tuning gives each group its own learning rate, lowest for the first.
    """
    if architecture == "resnet9":
        return [network.prep, network.layer1, network.layer2, network.layer3, network.head]
    stem = nn.ModuleList([network.conv1, network.bn1])
    return [stem, network.layer1, network.layer2, network.layer3, network.layer4, network.fc]


def set_frozen(groups: list[nn.Module], frozen: bool) -> None:
    """Freezes (or unfreezes) every group but the last (the head).

    Frozen parameters get no gradient, and frozen batch-norm layers keep their running statistics
    (they are put in eval mode by :func:`apply_frozen_mode` at each training epoch).
    """
    for group in groups[:-1]:
        for parameter in group.parameters():
            parameter.requires_grad_(not frozen)
        group.frozen = frozen


def apply_frozen_mode(groups: list[nn.Module]) -> None:
    """After ``model.train()``: keeps the batch-norm layers of frozen groups in eval mode."""
    for group in groups[:-1]:
        if getattr(group, "frozen", False):
            for module in group.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
