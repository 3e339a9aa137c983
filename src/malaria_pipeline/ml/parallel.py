"""What :func:`~malaria_pipeline.ml.train.fit` does differently in one process of a data-parallel group.

Every process holds the whole training set on its device and draws the same seeded permutation and
augmentation of each global batch (``training.batch_size`` images); process ``r`` of ``W`` trains on the
``r``-th of ``W`` equal slices of it, in PyTorch's ``DistributedDataParallel``, which averages the
gradients: the same gradient as one process on the global batch, except for batch norm, whose batch
statistics are those of the slice (``training.distributed.sync_batchnorm`` on GPUs makes them the global
batch's). Rank 0 validates, saves checkpoints and reports; the others follow its decisions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DataParallel:
    """This process's place in the group: ``rank`` of ``world_size``, and whether batch norm is synchronized."""

    rank: int
    world_size: int
    sync_batchnorm: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def local_batch_size(self, batch_size: int) -> int:
        if batch_size % self.world_size:
            raise ValueError(
                f"training.batch_size ({batch_size}) must be a multiple of the number of processes "
                f"({self.world_size}): each trains on an equal slice of every batch"
            )
        return batch_size // self.world_size

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This process's slice of a global batch (rows ``rank·b`` to ``(rank + 1)·b``)."""
        size = len(batch) // self.world_size
        return batch[self.rank * size : (self.rank + 1) * size]

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        """``module`` in ``DistributedDataParallel`` (after converting batch norm to ``SyncBatchNorm``)."""
        if self.sync_batchnorm:
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return nn.parallel.DistributedDataParallel(
            module, device_ids=[device] if device.type == "cuda" else None
        )

    def share(self, value: Any) -> Any:
        """Rank 0's ``value`` on every process (any picklable object)."""
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def mean(self, value: float, device: torch.device) -> float:
        """The mean of ``value`` over the processes."""
        tensor = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return float(tensor) / self.world_size

    def sync_buffers(self, module: nn.Module) -> None:
        """Rank 0's buffers (batch-norm running statistics) on every process: the model that rank 0
        validates and keeps is then the same everywhere."""
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)
