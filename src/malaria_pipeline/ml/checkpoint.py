"""Where a training run keeps its last epoch, and the states of the random generators it draws from, so that
an interrupted run can resume."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckpointStore:
    """One checkpoint file, ``<folder>/last.pt``, replaced atomically after each epoch.

    Attributes:
        folder: where the file lives.
        metadata: strings saved with every checkpoint under ``"metadata"`` (the MLflow run that wrote
            it, say), so that a resumed run can name the run it continues.
    """

    folder: Path
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return Path(self.folder) / "last.pt"

    def save(self, state: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".pt.partial")
        torch.save({**state, "metadata": dict(self.metadata)}, partial)
        os.replace(partial, self.path)  # a crash while saving never leaves half a checkpoint

    def clear(self) -> bool:
        """Removes the checkpoint; returns whether there was one."""
        if not self.path.exists():
            return False
        self.path.unlink()
        return True

    def load(self) -> dict[str, Any] | None:
        """The last checkpoint, or None when there is none."""
        if not self.path.exists():
            return None
        return torch.load(self.path, weights_only=True, map_location="cpu")


def random_states(generator: torch.Generator) -> dict[str, Any]:
    """The states of every random generator the training draws from, with the device type they belong to.

    The batch generator lives on the training device; dropout draws from the CPU's or the CUDA
    device's global generator.
    """
    states = {
        "generator": generator.get_state(),
        "generator_device": generator.device.type,
        "torch_rng": torch.get_rng_state(),
    }
    if generator.device.type == "cuda":
        states["cuda_rng"] = torch.cuda.get_rng_state(generator.device)
    return states


def restore_random_states(saved: dict[str, Any], generator: torch.Generator, seed: int) -> None:
    """Restores :func:`random_states`; a checkpoint of another device type re-seeds, with a warning."""
    torch.set_rng_state(saved["torch_rng"])
    same_device = saved.get("generator_device", "cpu") == generator.device.type
    if same_device and saved["generator"].numel() == generator.get_state().numel():
        generator.set_state(saved["generator"])
        if "cuda_rng" in saved:
            torch.cuda.set_rng_state(saved["cuda_rng"], generator.device)
        return
    generator.manual_seed(seed + saved["epoch"])
    if generator.device.type == "cuda":
        torch.cuda.manual_seed(seed + saved["epoch"])
    logger.warning(
        "The checkpoint's random states belong to a %s device and this run is on %s: the batches and augmentations "
        "of the remaining epochs are drawn afresh (seed %d), so they differ from an uninterrupted run's",
        saved.get("generator_device", "cpu"),
        generator.device.type,
        seed + saved["epoch"],
    )
