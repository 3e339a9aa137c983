"""Where a training run keeps its last epoch, so that an interrupted run can resume."""

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
