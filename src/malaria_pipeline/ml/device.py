"""Choose the device to train on (CUDA when present, else Apple MPS, else the CPU), and whether bf16 pays."""

from __future__ import annotations

import os

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


def use_bf16(setting: bool | str, device: torch.device) -> bool:
    """Whether to autocast to bfloat16 on ``device`` for ``training.bf16`` (``auto``, true or false).

    ``auto`` turns it on where the hardware computes in bf16 natively: CUDA GPUs of compute capability
    8.0 or more (the chosen device's), and CPUs with AMX or AVX-512 BF16 (oneDNN), where it trains
    about twice as fast (docs/benchmarks.md). A CPU without them would emulate bf16 and run slower,
    so there ``auto`` leaves it off.
    """
    if setting != "auto":
        if not isinstance(setting, bool):
            raise ValueError(f"training.bf16 is {setting!r}: use auto, true or false")
        return setting and device.type in ("cuda", "cpu")
    if device.type == "cuda":
        # Compute capability 8.0 (Ampere) and later compute in bf16 natively. Not
        # torch.cuda.is_bf16_supported(): it also counts emulation, and asks about the current
        # device rather than the chosen one.
        return torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":
        return any(
            getattr(torch.cpu, check, lambda: False)()
            for check in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        )
    return False


def set_determinism(deterministic: bool) -> None:
    """``training.deterministic``: the same results on every run of a CUDA device, or its fastest kernels.

    True: cuDNN's deterministic algorithms, ``torch.use_deterministic_algorithms`` (warning, not
    failing, where an op has no deterministic version) and cuBLAS's fixed workspace. False: cuDNN
    benchmarks the convolution algorithms of each shape and keeps the fastest, which may differ
    between runs. The CPU is deterministic either way.
    """
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    if deterministic:
        # Read when cuBLAS first starts in the process: set before any CUDA work.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def synchronize(device: torch.device) -> None:
    """Waits until ``device`` has run everything queued on it (a no-op on the CPU), before reading a clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
