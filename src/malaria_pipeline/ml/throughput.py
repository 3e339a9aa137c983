"""Training throughput of two input pipelines feeding the same network: ours and the reference's.

Ours is what :func:`~malaria_pipeline.ml.train.fit` does each step: the images were decoded once into
one ``uint8`` tensor resident on the device, a batch is an index into it, and augmentation runs on
the whole batch on the device. The baseline is the reference notebooks' input pipeline: torchvision's
``ImageFolder`` over the PNG files, per-image PIL transforms, ``ToTensor`` and ``Normalize``, and a
``DataLoader`` with worker processes, so every image is decoded again every epoch. Its transforms
draw the same augmentations as ours (pad-and-crop, and the flips and quarter turns that the
configuration turns on), so that both do the same work. Both end in the same :func:`~malaria_pipeline.ml.train.optimizer_step`, with the same network,
optimizer, batch size, image size and speed switches: the ratio measures the input pipeline alone.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from malaria_pipeline.ml.device import use_bf16
from malaria_pipeline.ml.train import TrainConfig, optimizer_step, train_step


@dataclass
class Throughput:
    """Images per second over ``steps`` timed steps of ``batch_size`` images, after ``warmup`` steps."""

    images_per_second: float
    seconds: float
    steps: int
    warmup: int
    batch_size: int


def baseline_loader(folder: Path, image_size: int, mean: list[float], std: list[float], config: TrainConfig,
                    workers: int, pin_memory: bool = False) -> DataLoader:
    """The reference notebooks' input pipeline over ``folder/<class>/*.png``, with our augmentations."""
    augment = [transforms.Resize((image_size, image_size)), transforms.RandomCrop(image_size, padding=config.pad)]
    if config.flips:
        augment += [transforms.RandomHorizontalFlip(), transforms.RandomVerticalFlip()]
    if config.rotations:  # exact quarter turns: PIL transposes for multiples of 90°
        augment.append(transforms.RandomChoice([transforms.RandomRotation((a, a)) for a in (0, 90, 180, 270)]))
    transform = transforms.Compose([*augment, transforms.ToTensor(), transforms.Normalize(mean, std)])
    return DataLoader(datasets.ImageFolder(str(folder), transform=transform), batch_size=config.batch_size,
                      shuffle=True, num_workers=workers, pin_memory=pin_memory, drop_last=True)


def measure_ours(network: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, mean: list[float],
                 std: list[float], config: TrainConfig, device: torch.device, steps: int, warmup: int) -> Throughput:
    """Our input pipeline: ``images`` (``uint8, N×3×S×S``) moved to ``device`` once, batches indexed."""
    images, labels = images.to(device), labels.to(device)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    mean_t = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, -1, 1, 1)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            order = torch.randperm(len(images), device=device, generator=generator)
            for start in range(0, len(images) - config.batch_size + 1, config.batch_size):
                rows = order[start : start + config.batch_size]
                yield images[rows], labels[rows]

    def step(network, optimizer, batch, memory_format, autocast):
        return train_step(network, optimizer, batch[0], batch[1], mean_t, std_t, generator, config, memory_format, autocast)

    return _measure(network, batches(), step, config, device, steps, warmup)


def measure_baseline(network: torch.nn.Module, loader: DataLoader, config: TrainConfig, device: torch.device,
                     steps: int, warmup: int) -> Throughput:
    """The baseline: float batches, already augmented and normalized by the loader's workers.

    The loader's workers start during the warm-up steps and stop when the measurement ends, so that
    they take no CPU from a measurement that follows.
    """

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield from loader

    def step(network, optimizer, batch, memory_format, autocast):
        images, labels = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        return optimizer_step(network, optimizer, images, labels, config, memory_format, autocast)

    return _measure(network, batches(), step, config, device, steps, warmup)


def _measure(network: torch.nn.Module, batches: Generator, step: Callable, config: TrainConfig,
             device: torch.device, steps: int, warmup: int) -> Throughput:
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    network = network.to(device).to(memory_format=memory_format).train()
    optimizer = torch.optim.Adam(network.parameters(), lr=config.max_lr / config.div_factor,
                                 weight_decay=config.weight_decay)
    autocast = use_bf16(config.bf16, device)
    for batch in itertools.islice(batches, warmup):
        step(network, optimizer, batch, memory_format, autocast)
    _synchronize(device)
    started = time.perf_counter()
    for batch in itertools.islice(batches, steps):
        loss = step(network, optimizer, batch, memory_format, autocast)
    float(loss)  # waits for the device
    seconds = time.perf_counter() - started
    batches.close()
    return Throughput(steps * config.batch_size / seconds, seconds, steps, warmup, config.batch_size)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
