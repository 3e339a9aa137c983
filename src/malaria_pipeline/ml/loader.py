"""Batches of a tensor resident on the device, in a seeded random order (airbench's loader).

The training loop, the LR finder and the throughput benchmark all iterate one :class:`BatchLoader`:
it owns the images, the permutation of each pass and the slicing, and augments each batch on the
device, so no step re-indexes by hand.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import torch

Batch = tuple[torch.Tensor, torch.Tensor]


class BatchLoader:
    """Shuffled batches of ``images`` (``uint8, N×3×S×S``) and ``labels`` (``int64, N``), on their device.

    Each pass draws a permutation from ``generator`` and yields :func:`len` batches of ``batch_size``
    rows; the last partial batch is dropped (a batch of one breaks batch norm), and a set smaller than
    one batch makes one batch of all of it. ``augment`` (e.g. an
    :class:`~malaria_pipeline.ml.augment.Augmentation`) transforms each batch with the same generator.
    ``shard`` (data-parallel training) then keeps this process's slice of the augmented batch and of
    its labels: every process draws the same permutation and augmentation.
    """

    def __init__(
        self,
        *,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        generator: torch.Generator,
        augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
        shard: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        if len(images) != len(labels) or len(images) == 0:
            raise ValueError(
                f"BatchLoader needs as many labels as images, and some: got {len(images)} and {len(labels)}"
            )
        self.images, self.labels, self.generator, self.augment = images, labels, generator, augment
        self.shard = shard
        self.batch_size = min(batch_size, len(images))

    def __len__(self) -> int:
        return len(self.images) // self.batch_size

    def __iter__(self) -> Iterator[Batch]:
        order = torch.randperm(len(self.images), device=self.images.device, generator=self.generator)
        for step in range(len(self)):
            rows = order[step * self.batch_size : (step + 1) * self.batch_size]
            images = self.images[rows]
            images, labels = (
                (self.augment(images, self.generator) if self.augment else images),
                self.labels[rows],
            )
            yield (self.shard(images), self.shard(labels)) if self.shard else (images, labels)

    def forever(self) -> Iterator[Batch]:
        """Pass after pass, each in a new order."""
        return itertools.chain.from_iterable(itertools.repeat(self))
