"""Per-channel mean and standard deviation of packed images."""

from __future__ import annotations

import torch

BATCH_IMAGES = 2048


def channel_mean_std(
    images: torch.Tensor, rows: torch.Tensor | None = None
) -> tuple[list[float], list[float]]:
    """Mean and (population) standard deviation of each channel, with pixels scaled to [0, 1].

    Args:
        images: ``uint8, N×C×H×W``.
        rows: the images to include (indices into N); None for all.

    Returns:
        Two lists of C floats, accumulated in float64 over batches so that the whole subset is never
        converted to floating point at once.
    """
    rows = torch.arange(len(images)) if rows is None else torch.as_tensor(rows)
    if len(rows) == 0:
        raise ValueError("No images to compute normalization statistics on: the subset is empty")
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, len(rows), BATCH_IMAGES):
        batch = images[rows[start : start + BATCH_IMAGES]].to(torch.float64).div_(255)
        total += batch.sum(dim=(0, 2, 3))
        total_sq += batch.square().sum(dim=(0, 2, 3))
    count = len(rows) * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt()
    return mean.tolist(), std.tolist()
