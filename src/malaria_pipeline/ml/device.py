"""Choose the device to train on: CUDA when present, else Apple MPS, else the CPU."""

from __future__ import annotations

import torch


def pick_device(requested: str | None = "auto") -> torch.device:
    """The device named by ``requested`` (``auto``, ``cuda``, ``cuda:1``, ``mps`` or ``cpu``).

    Raises:
        ValueError: the requested device is not on this machine.
    """
    if requested in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(requested)
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count(),
        "mps": torch.backends.mps.is_available(),
    }.get(device.type, False)
    if not available:
        raise ValueError(
            f"training.device is {requested!r}, but this machine has no such device. Use training.device=auto "
            "(CUDA, else MPS, else CPU) or cpu."
        )
    return device
