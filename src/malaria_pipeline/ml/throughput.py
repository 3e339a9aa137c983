"""Training throughput of two input pipelines feeding the same network: ours and the reference's.

Ours is what :func:`~malaria_pipeline.ml.train.fit` does each step: the images were decoded once into
one ``uint8`` tensor resident on the device, a batch is an index into it, and augmentation runs on
the whole batch on the device. The baseline is the reference notebooks' input pipeline: torchvision's
``ImageFolder`` over the PNG files, per-image PIL transforms, ``ToTensor`` and ``Normalize``, and a
``DataLoader`` with worker processes, so every image is decoded again every epoch. Its transforms
draw the same augmentations as ours (pad-and-crop, and the flips and quarter turns that the
configuration turns on), so that both do the same work, and end, as the notebooks do, in
``ToTensor`` and ``Normalize`` per image in the workers; their batches skip the classifier's own
normalization layer. Both end in the same :func:`~malaria_pipeline.ml.train.train_step`, with the same
network, optimizer, batch size, image size and speed switches: the ratio measures the input pipeline
alone.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from malaria_pipeline.ml.config import TrainConfig
from malaria_pipeline.ml.device import synchronize, use_bf16
from malaria_pipeline.ml.loader import BatchLoader
from malaria_pipeline.ml.models import CellClassifier
from malaria_pipeline.ml.train import train_step


@dataclass(kw_only=True)
class Throughput:
    """Images per second over ``steps`` timed steps of ``batch_size`` images, after ``warmup`` steps."""

    images_per_second: float
    seconds: float
    steps: int
    warmup: int
    batch_size: int


def baseline_loader(
    folder: Path,
    image_size: int,
    mean: list[float],
    std: list[float],
    config: TrainConfig,
    workers: int,
    pin_memory: bool = False,
) -> DataLoader:
    """The reference notebooks' input pipeline over ``folder/<class>/*.png``, with our augmentations."""
    augment = [
        transforms.Resize((image_size, image_size)),
        transforms.RandomCrop(image_size, padding=config.pad),
    ]
    if config.flips:
        augment += [transforms.RandomHorizontalFlip(), transforms.RandomVerticalFlip()]
    if config.rotations:  # exact quarter turns: PIL transposes for multiples of 90°
        augment.append(
            transforms.RandomChoice([transforms.RandomRotation((a, a)) for a in (0, 90, 180, 270)])
        )
    # The reference's normalization, per image: what the benchmark compares against.
    transform = transforms.Compose([*augment, transforms.ToTensor(), transforms.Normalize(mean, std)])
    return DataLoader(
        datasets.ImageFolder(str(folder), transform=transform),
        batch_size=config.batch_size,
        shuffle=True,
        num_workers=workers,
        pin_memory=pin_memory,
        drop_last=True,
    )


def measure_ours(
    classifier: CellClassifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig,
    device: torch.device,
    steps: int,
    warmup: int,
) -> Throughput:
    """Our input pipeline: ``images`` (``uint8, N×3×S×S``) moved to ``device`` once, batches indexed."""
    generator = torch.Generator(device=device).manual_seed(config.seed)
    loader = BatchLoader(
        images=images.to(device),
        labels=labels.to(device),
        batch_size=config.batch_size,
        generator=generator,
        augment=config.augmentation,
    )
    return _measure(classifier, loader.forever(), config, device, steps, warmup)


def measure_baseline(
    classifier: CellClassifier,
    loader: DataLoader,
    config: TrainConfig,
    device: torch.device,
    steps: int,
    warmup: int,
) -> Throughput:
    """The baseline: batches decoded, augmented and normalized by the loader's workers, then moved to ``device``.

    The loader's workers start during the warm-up steps and stop when the measurement ends, so that
    they take no CPU from a measurement that follows.
    """

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            for images, labels in loader:
                yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)

    return _measure(_NormalizedInputs(classifier), batches(), config, device, steps, warmup)


class _NormalizedInputs(torch.nn.Module):
    """The classifier without its normalization layer, for batches the loader normalized already."""

    def __init__(self, classifier: CellClassifier):
        super().__init__()
        self.classifier = classifier

    def set_speed(self, channels_last: bool, bf16: bool) -> _NormalizedInputs:
        self.classifier.set_speed(channels_last, bf16)
        return self

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.classifier.classify_normalized(inputs)


def _measure(
    classifier: CellClassifier,
    batches: Iterator,
    config: TrainConfig,
    device: torch.device,
    steps: int,
    warmup: int,
) -> Throughput:
    classifier = classifier.to(device).set_speed(config.channels_last, use_bf16(config.bf16, device)).train()
    optimizer = torch.optim.Adam(
        classifier.parameters(), lr=config.max_lr / config.div_factor, weight_decay=config.weight_decay
    )
    for images, labels in itertools.islice(batches, warmup):
        train_step(classifier, optimizer, images, labels, config)
    synchronize(device)
    started = time.perf_counter()
    for images, labels in itertools.islice(batches, steps):
        train_step(classifier, optimizer, images, labels, config)
    synchronize(device)
    seconds = time.perf_counter() - started
    if hasattr(batches, "close"):
        batches.close()
    return Throughput(
        images_per_second=steps * config.batch_size / seconds,
        seconds=seconds,
        steps=steps,
        warmup=warmup,
        batch_size=config.batch_size,
    )
