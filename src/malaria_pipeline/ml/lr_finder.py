"""The learning-rate range test (Leslie Smith's, as fastai's ``lr_find``): pick the one-cycle max LR.

Training starts at a tiny learning rate that grows geometrically every batch; the loss first falls,
then explodes. The steepest fall of the smoothed loss suggests the max LR of the one-cycle schedule.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from malaria_pipeline.ml.config import TrainConfig
from malaria_pipeline.ml.device import pick_device, use_bf16
from malaria_pipeline.ml.loader import BatchLoader
from malaria_pipeline.ml.train import Stage, TrainData, make_optimizer, train_step

logger = logging.getLogger(__name__)


@dataclass
class LRSweep:
    """Learning rates tried, one per batch, with the smoothed training loss after each."""

    lrs: list[float]
    losses: list[float]
    suggested_lr: float
    min_loss_lr: float


def lr_range_test(
    classifier: nn.Module,
    data: TrainData,
    config: TrainConfig,
    *,
    start_lr: float = 1e-6,
    end_lr: float = 1.0,
    num_batches: int = 200,
    diverge: float = 4.0,
    smoothing: float = 0.98,
) -> LRSweep:
    """Sweeps the learning rate from ``start_lr`` to ``end_lr`` over ``num_batches`` training batches.

    Uses the device, numeric mode (bf16, channels_last), training step, optimizer, weight decay,
    augmentation and batch size of ``config``, so that the LR it suggests is one for that training;
    stops early once the smoothed loss exceeds ``diverge`` times its minimum. The classifier's weights
    are changed.
    """
    device = pick_device(config.device)
    torch.manual_seed(config.seed)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    classifier = classifier.to(device).set_speed(config.channels_last, use_bf16(config.bf16, device)).train()
    optimizer = make_optimizer(config, Stage("sweep", 1, [start_lr], frozen=False), [classifier])
    loader = BatchLoader(
        images=data.train_images.to(device),
        labels=data.train_labels.to(device),
        batch_size=config.batch_size,
        generator=generator,
        augment=config.augmentation,
    )
    factor = (end_lr / start_lr) ** (1 / max(1, num_batches - 1))

    lrs, losses, average, best = [], [], 0.0, math.inf
    batches = tqdm(loader.forever(), desc="LR sweep", unit="batch", total=num_batches, disable=None)
    for step, (images, labels) in zip(range(num_batches), batches):
        lr = start_lr * factor**step
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = train_step(classifier, optimizer, images, labels, config)
        average = smoothing * average + (1 - smoothing) * float(loss)
        smoothed = average / (1 - smoothing ** (step + 1))
        lrs.append(lr)
        losses.append(smoothed)
        best = min(best, smoothed)
        if not math.isfinite(smoothed) or smoothed > diverge * best:
            logger.info("Loss diverged at LR %.2e after %d batches: sweep stopped", lr, step + 1)
            break
    batches.close()
    suggested, min_loss = suggest_lr(lrs, losses)
    logger.info(
        "LR range test: steepest descent at %.2e, lowest loss at %.2e; suggested max LR %.2e",
        suggested,
        min_loss,
        suggested,
    )
    return LRSweep(lrs=lrs, losses=losses, suggested_lr=suggested, min_loss_lr=min_loss)


def suggest_lr(
    lrs: list[float], losses: list[float], skip_start: float = 0.1, window: int = 5
) -> tuple[float, float]:
    """The LR where the smoothed loss falls fastest (per log-LR), and the LR of the lowest loss.

    The slope at each point is measured between the points ``window`` before and after it, and only
    between the first ``skip_start`` of the sweep (where the running average is still noisy) and the
    lowest loss.
    """
    if len(lrs) < 3:
        raise ValueError(f"The LR sweep has {len(lrs)} points: too few to suggest a learning rate")
    log_lrs, values = np.log(np.asarray(lrs)), np.asarray(losses)
    lowest = int(np.argmin(values))
    first = int(skip_start * len(lrs))
    half = min(window, max(1, (lowest - first) // 4))
    centres = np.arange(first + half, lowest - half + 1)
    if len(centres) == 0:  # the loss bottoms out at once: fall back to neighbouring points
        centres, half = np.arange(1, max(2, lowest)), 1
    slopes = (values[centres + half] - values[centres - half]) / (
        log_lrs[centres + half] - log_lrs[centres - half]
    )
    return float(lrs[int(centres[np.argmin(slopes)])]), float(lrs[lowest])
