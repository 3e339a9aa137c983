"""Augmentation of whole batches with tensor ops, on the batch's device: no per-image Python.

Cells have no orientation, so besides the reference's pad-and-crop and horizontal flip every batch
also gets vertical flips and 90° rotations (together: all 8 symmetries of the square).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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


def random_flips_and_rotations(
    images: torch.Tensor, generator: torch.Generator, flips: bool = True, rotations: bool = True
) -> torch.Tensor:
    """Flips each square image left-right and up-down with probability 1/2 and rotates it by k·90°."""
    count = images.shape[0]
    device = images.device
    if flips:
        for dim in (3, 2):
            chosen = torch.rand(count, device=device, generator=generator) < 0.5
            images = torch.where(chosen[:, None, None, None], images.flip(dim), images)
    if rotations:
        turns = torch.randint(0, 4, (count,), device=device, generator=generator)
        rotated = images.clone()
        for k in (1, 2, 3):
            chosen = turns == k
            rotated[chosen] = images[chosen].rot90(k, dims=(2, 3))
        images = rotated
    return images


def augment_batch(
    images: torch.Tensor, generator: torch.Generator, pad: int = 4, flips: bool = True, rotations: bool = True
) -> torch.Tensor:
    """Pad-and-crop, then flips and rotations, of a float batch ``N×C×S×S`` (before normalization)."""
    return random_flips_and_rotations(random_crop(images, pad, generator), generator, flips, rotations)
