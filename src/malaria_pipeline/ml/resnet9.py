"""ResNet-9, the network of the reference notebook (after David Page's CIFAR-10 ResNet-9).

prep → layer1 (+ residual) → layer2 → layer3 (+ residual) → global max-pool → linear head, with
channel widths w, 2w, 4w, 8w and a 2×2 max-pool after each of layer1..layer3. The reference uses w = 64.
"""

from __future__ import annotations

from torch import nn


def conv_bn(channels_in: int, channels_out: int, pool: bool = False) -> nn.Sequential:
    """3×3 convolution, batch norm, ReLU, and an optional 2×2 max-pool."""
    layers = [
        nn.Conv2d(channels_in, channels_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(channels_out),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class Residual(nn.Module):
    """``x + block(x)`` with a block of two ``conv_bn`` of constant width."""

    def __init__(self, channels: int):
        super().__init__()
        self.block = nn.Sequential(conv_bn(channels, channels), conv_bn(channels, channels))

    def forward(self, x):
        return x + self.block(x)


class GlobalMaxPool(nn.Module):
    """The maximum of each channel, ``N×C×H×W`` → ``N×C×1×1``.

    ``amax`` rather than ``AdaptiveMaxPool2d(1)``: its backward is deterministic on CUDA (it splits
    the gradient among tied maxima instead of scattering it to one index).
    """

    def forward(self, x):
        return x.amax(dim=(2, 3), keepdim=True)


class ResNet9(nn.Module):
    """ResNet-9 for ``N×3×S×S`` inputs (S a multiple of 8); returns ``N×num_classes`` logits."""

    def __init__(self, num_classes: int = 2, width: int = 64, in_channels: int = 3, dropout: float = 0.2):
        super().__init__()
        self.prep = conv_bn(in_channels, width)
        self.layer1 = nn.Sequential(conv_bn(width, 2 * width, pool=True), Residual(2 * width))
        self.layer2 = conv_bn(2 * width, 4 * width, pool=True)
        self.layer3 = nn.Sequential(conv_bn(4 * width, 8 * width, pool=True), Residual(8 * width))
        self.head = nn.Sequential(
            GlobalMaxPool(), nn.Flatten(), nn.Dropout(dropout), nn.Linear(8 * width, num_classes)
        )

    def forward(self, x):
        return self.head(self.layer3(self.layer2(self.layer1(self.prep(x)))))
