"""Hardware profiles: which configuration ``kedro run`` trains on this machine.

``profile`` (``conf/base/parameters.yml``) is ``auto``, ``gpu`` or ``cpu``. The parameters that differ
between the profiles are written ``${by_profile:<gpu value>, <cpu value>}`` in ``conf/base``; the
resolver :func:`by_profile`, registered in ``settings.py``, gives the value of the profile that
:func:`choose_profile` picks, so the parameters that a node receives and MLflow logs are plain values.

``auto`` picks ``gpu`` where CUDA is available and ``cpu`` otherwise. Apple's MPS counts as no GPU:
no figure of this project has been measured on it, so the small CPU configuration is the safe choice
there (it still trains on MPS, as ``training.device: auto`` picks it).
"""

from __future__ import annotations

import functools
from typing import Any

PROFILES = ("gpu", "cpu")


class ProfileError(ValueError):
    """``profile`` names no profile."""


def choose_profile(requested: Any) -> tuple[str, str]:
    """The profile to train and why.

    Args:
        requested: ``auto``, ``gpu`` or ``cpu`` (the parameter ``profile``).

    Returns:
        ``(profile, reason)``, e.g. ``("cpu", "No CUDA device")``.

    Raises:
        ProfileError: ``requested`` is none of them.
    """
    if requested in PROFILES:
        return requested, f"profile={requested} was set"
    if requested != "auto":
        raise ProfileError(
            f"profile is {requested!r}: use auto (gpu where CUDA is available, else cpu), gpu or cpu, "
            'e.g. --params "profile=cpu"'
        )
    if _cuda_available():
        return "gpu", "A CUDA device is available"
    return "cpu", "No CUDA device"


def by_profile(gpu_value: Any, cpu_value: Any, *, _root_: Any) -> Any:
    """OmegaConf resolver ``${by_profile:<gpu value>, <cpu value>}``: the value of the chosen profile."""
    profile, _ = choose_profile(_root_.get("profile", "auto"))
    return gpu_value if profile == "gpu" else cpu_value


@functools.lru_cache(maxsize=1)
def _cuda_available() -> bool:
    import torch  # here, not at the top: settings.py imports this module for every kedro command

    return torch.cuda.is_available()
