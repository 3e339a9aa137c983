"""Augmentation of whole ``uint8`` batches with tensor ops, on the batch's device: no per-image Python.

Each transform only moves pixels or pads with zeros (black), so it works on the ``uint8`` images the
pipeline holds, before the network normalizes them; an intensity transform would go after these.
Cells have no orientation, so besides the reference's pad-and-crop and horizontal flip every batch
also gets vertical flips and quarter turns (together: all 8 symmetries of the square).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augmentation:
    """Pad-and-crop by up to ``pad`` pixels, then random flips (``flips``) and quarter turns (``rotations``)."""

    pad: int
    flips: bool
    rotations: bool

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The augmented copy of a batch ``N×C×S×S`` (any dtype), drawn from ``generator``."""
        return random_symmetries(random_crop(images, self.pad, generator), generator, self.flips, self.rotations)


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
