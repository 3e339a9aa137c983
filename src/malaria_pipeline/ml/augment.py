"""Augmentation of whole ``uint8`` batches with tensor ops, on the batch's device: no per-image Python.

The geometric transforms only move pixels or pad with zeros (black), so they work on the ``uint8``
images the pipeline holds, before the network normalizes them. Cells have no orientation, so besides
the reference's pad-and-crop and horizontal flip every batch also gets vertical flips and quarter turns
(together: all 8 symmetries of the square). Then :class:`ColorJitter` varies each image's brightness,
contrast and gamma (illumination) and its saturation and hue (stain colour), one factor per image.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF


@dataclass(frozen=True)
class Augmentation:
    """Pad-and-crop by up to ``pad`` pixels, random flips (``flips``) and quarter turns (``rotations``),
    then ``jitter`` (intensity and stain colour; none by default)."""

    pad: int
    flips: bool
    rotations: bool
    jitter: ColorJitter | None = None

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The augmented copy of a batch ``N×C×S×S`` (any dtype without jitter, ``uint8`` with), drawn from ``generator``."""
        moved = random_symmetries(
            random_crop(images, self.pad, generator), generator, self.flips, self.rotations
        )
        return moved if self.jitter is None else self.jitter(moved, generator)


def random_crop(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Pads ``N×C×S×S`` by ``pad`` pixels of 0 (black) and crops each image back to S at a random offset."""
    if pad <= 0:
        return images
    count, _, height, width = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    device = images.device
    top = torch.randint(0, 2 * pad + 1, (count, 1), device=device, generator=generator)
    left = torch.randint(0, 2 * pad + 1, (count, 1), device=device, generator=generator)
    rows = (top + torch.arange(height, device=device))[:, None, :, None]
    cols = (left + torch.arange(width, device=device))[:, None, None, :]
    batch = torch.arange(count, device=device)[:, None, None, None]
    channel = torch.arange(images.shape[1], device=device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def random_symmetries(
    images: torch.Tensor, generator: torch.Generator, flips: bool = True, rotations: bool = True
) -> torch.Tensor:
    """Flips each square image left-right and up-down with probability 1/2, then turns it k·90° (k uniform).

    As in airbench, the symmetry is applied as an optional transpose and two optional flips, each a
    ``torch.where`` over the batch. The draws (left-right, up-down, then k) are those of the loop of
    ``flip`` and ``rot90`` this replaces, so a seeded run augments exactly as before.
    """
    count, device = images.shape[0], images.device
    no = torch.zeros(count, dtype=torch.bool, device=device)
    left_right = torch.rand(count, device=device, generator=generator) < 0.5 if flips else no
    up_down = torch.rand(count, device=device, generator=generator) < 0.5 if flips else no
    turns = torch.randint(0, 4, (count,), device=device, generator=generator) if rotations else no.long()
    # k quarter turns (from the rows' axis towards the columns') after the flips equal a transpose
    # for odd k, then flips: the turn's own (k = 1, 2 flip the rows; k = 2, 3 the columns) on top of
    # the drawn ones, which the transpose swaps.
    transpose = turns % 2 == 1
    flip_rows = torch.where(transpose, left_right, up_down) ^ ((turns == 1) | (turns == 2))
    flip_columns = torch.where(transpose, up_down, left_right) ^ (turns >= 2)
    if rotations:
        images = torch.where(transpose[:, None, None, None], images.transpose(2, 3), images)
    if flips or rotations:
        images = torch.where(flip_rows[:, None, None, None], images.flip(2), images)
        images = torch.where(flip_columns[:, None, None, None], images.flip(3), images)
    return images


@dataclass(frozen=True, kw_only=True)
class ColorJitter:
    """torchvision's ``ColorJitter``, with one factor per image, for whole ``uint8, N×3×S×S`` batches.

    Each amount ``a`` > 0 draws one number per image from the generator, ``torch.rand``, made uniform
    in [1 - a, 1 + a] (the factors of brightness, contrast, saturation; the exponent of gamma) or in
    [-a, a] (hue: a turn of the hue circle), applied in that order: brightness, contrast, gamma,
    saturation, hue. An amount of 0 draws nothing and changes nothing, so a seeded run without jitter
    augments exactly as one before it existed. Saturation and hue leave grey pixels (R = G = B) alone,
    so a grayscale image stays what it was under them.
    """

    brightness: float = 0.0
    contrast: float = 0.0
    gamma: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The jittered copy of ``uint8, N×3×S×S`` images (the batch itself when every amount is 0)."""
        if not any(astuple(self)):
            return images
        jittered = TF.to_dtype(images, torch.float32, scale=True)  # in [0, 1]
        steps = (
            (self.brightness, 1, adjust_brightness),
            (self.contrast, 1, adjust_contrast),
            (self.gamma, 1, adjust_gamma),
            (self.saturation, 1, adjust_saturation),
            (self.hue, 0, adjust_hue),
        )
        for amount, centre, adjust in steps:
            if amount:
                draws = torch.rand(len(images), device=images.device, generator=generator)
                jittered = adjust(jittered, centre + amount * (2 * draws - 1))
        # Rounded, not truncated as torchvision's to_dtype does: truncation would darken by half a level.
        return jittered.mul_(255).round_().to(torch.uint8)


def _per_image(values: torch.Tensor) -> torch.Tensor:
    return values[:, None, None, None]


def _blend(images: torch.Tensor, other: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """``factors · images + (1 - factors) · other`` per image, clamped to [0, 1] (torchvision's blend)."""
    factors = _per_image(factors)
    return (images * factors).add_(other * (1 - factors)).clamp_(0, 1)


def adjust_brightness(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Each image of ``float32, N×3×S×S`` (in [0, 1]) times its factor (``N``), clamped to [0, 1]."""
    return images.mul(_per_image(factors)).clamp_(0, 1)


def adjust_contrast(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Each image blended with the mean of its luma by its factor: 0 gives a flat grey, 1 the image."""
    return _blend(images, TF.rgb_to_grayscale(images).mean(dim=(1, 2, 3), keepdim=True), factors)


def adjust_gamma(images: torch.Tensor, gammas: torch.Tensor) -> torch.Tensor:
    """Each image raised to its power: below 1 brightens the mid-tones, above 1 darkens them."""
    return images.pow(_per_image(gammas))


def adjust_saturation(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Each image blended with its luma by its factor: 0 gives grey, 1 the image, 2 doubles the colour."""
    return _blend(images, TF.rgb_to_grayscale(images), factors)


def adjust_hue(images: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Turns each image's hue by its shift (a fraction of the hue circle, ``N`` in [-0.5, 0.5]).

    The HSV round trip of torchvision's ``adjust_hue``, written per image: hue H' in sextants [0, 6)
    from the channel that is largest, then each channel back as V - C·clamp(min(k, 4 - k), 0, 1) with
    k = (n + H') mod 6 and n = 5, 3, 1 for R, G, B (C = V·S, the chroma). A grey pixel has C = 0 and
    keeps its value exactly.
    """
    value, _ = images.max(dim=1, keepdim=True)
    chroma = value - images.min(dim=1, keepdim=True).values
    red, green, blue = images[:, 0:1], images[:, 1:2], images[:, 2:3]
    is_red, is_green = value == red, value == green
    difference = torch.where(is_red, green - blue, torch.where(is_green, blue - red, red - green))
    sextant = difference.div_(torch.where(chroma > 0, chroma, torch.ones_like(chroma)))
    sextant += torch.where(is_red, 0.0, torch.where(is_green, 2.0, 4.0))
    sextant = (sextant + 6 * _per_image(shifts)).remainder_(6)
    offsets = torch.arange(5, 0, -2, device=images.device, dtype=images.dtype)[None, :, None, None]  # R, G, B
    k = (offsets + sextant).remainder_(6)
    return value - chroma * torch.minimum(k, 4 - k).clamp_(0, 1)
