"""The classifier (normalization, network, class names) and its networks: ResNet-9, torchvision's ResNets.

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


class Normalize(nn.Module):
    """``uint8`` pixels to the network's inputs: ``(x / 255 - mean) / std`` per channel, as ``float32``.

    The only place the normalization statistics become tensors: buffers, so they move, save and load
    with the model.
    """

    def __init__(self, mean: list[float], std: list[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images.to(self.mean.dtype) / 255 - self.mean) / self.std


class CellClassifier(nn.Module):
    """The module that is trained, saved, evaluated and served: ``uint8, N×3×S×S`` images in, logits out.

    Attributes:
        normalize: the first layer, :class:`Normalize` with the training images' statistics.
        network: the ResNet, on normalized ``float32`` inputs.
        class_names: the label of each output, in order.
        image_size: the side S of the images it was trained on.
        channels_last, bf16: speed switches of the forward pass (:meth:`set_speed`); the logits are
            ``float32`` either way.
        temperature: T of temperature scaling (Guo et al. 2017): :meth:`predict_proba` takes the softmax
            of logits / T. 1 leaves the probabilities as trained; :meth:`forward` returns the logits
            unscaled, so that training and fitting T see the network's own.
    """

    def __init__(
        self,
        *,
        network: nn.Module,
        mean: list[float],
        std: list[float],
        class_names: list[str],
        image_size: int,
    ):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.network = network
        self.class_names = list(class_names)
        self.image_size = image_size
        self.channels_last = False
        self.bf16 = False
        self.temperature = 1.0

    def set_speed(self, channels_last: bool, bf16: bool) -> CellClassifier:
        """Runs the network on channels-last (NHWC) tensors and/or under bfloat16 autocast; returns self."""
        self.channels_last, self.bf16 = channels_last, bf16
        return self.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``float32, N×classes`` of ``uint8, N×3×S×S`` images (pixel values 0 to 255)."""
        if self.channels_last:  # before normalizing: a quarter of the bytes to move
            images = images.contiguous(memory_format=torch.channels_last)
        return self.classify_normalized(self.normalize(images))

    def classify_normalized(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits of inputs already normalized (``float32``, what :class:`Normalize` returns)."""
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with torch.autocast(inputs.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.network(inputs).float()

    @torch.inference_mode()
    def predict_proba(
        self, images: torch.Tensor, batch_size: int = 256, tta: bool = False, calibrated: bool = True
    ) -> torch.Tensor:
        """Class probabilities ``N×classes`` on the CPU, in eval mode, in batches (see :meth:`set_speed`).

        The one prediction path of evaluation, inference and the served model:
        :func:`probabilities` of :meth:`view_logits`.

        Args:
            images: ``uint8, N×3×S×S``.
            batch_size: images per forward pass (with ``tta``, each pass is one symmetry of a batch).
            tta: test-time augmentation: the mean of the probabilities of the 8 symmetries of the square
                (:func:`square_symmetries`), 8 forward passes per batch.
            calibrated: softmax of logits / :attr:`temperature`; False: of the logits as trained.
        """
        return probabilities(
            self.view_logits(images, batch_size, tta), self.temperature if calibrated else 1.0
        )

    @torch.inference_mode()
    def view_logits(self, images: torch.Tensor, batch_size: int = 256, tta: bool = False) -> torch.Tensor:
        """The logits as trained (no temperature), ``float32, V×N×classes`` on the CPU, in eval mode: V = 1,
        or with ``tta`` V = 8, one per symmetry of the square in the order of :func:`square_symmetries`.

        One forward pass serves every temperature (:func:`probabilities`). The batches stay on the
        model's device until the end: one copy to the host, not one a batch.
        """
        self.eval()
        device = self.normalize.mean.device
        views = square_symmetries if tta else (lambda batch: [batch])
        if len(images) == 0:
            return torch.empty((8 if tta else 1, 0, len(self.class_names)))
        batches = []
        for i in range(0, len(images), batch_size):
            batch = images[i : i + batch_size].to(device, non_blocking=True)
            batches.append(torch.stack([self(view) for view in views(batch)]))
        return torch.cat(batches, dim=1).cpu()


def probabilities(view_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``N×classes``: the mean over the views (the first dimension) of ``softmax(logits / temperature)``."""
    return (view_logits / temperature).softmax(dim=-1).mean(dim=0)


def square_symmetries(images: torch.Tensor) -> list[torch.Tensor]:
    """The 8 symmetries of the square (the dihedral group D4) of ``…×S×S`` images: identity, the three
    quarter turns, and the four reflections (flips across the two axes and the two diagonals).

    Every element is an optional transpose followed by optional flips of rows and of columns.
    """
    transposed = images.transpose(-1, -2)
    return [
        view.flip(dims) if dims else view
        for view in (images, transposed)
        for dims in ((), (-1,), (-2,), (-2, -1))
    ]


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
            raise ValueError(
                "There are no pretrained ResNet-9 weights: set training.pretrained=false for resnet9"
            )
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
