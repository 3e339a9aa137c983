"""The training loop's configuration: every knob that :mod:`malaria_pipeline.ml.train` reads, parsed
strictly from the ``training`` parameter group (``conf/base/parameters_training.yml`` says what each does
and holds the defaults; this module has none)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, fields
from typing import Any

from malaria_pipeline.ml.augment import Augmentation, ColorJitter


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Every knob of a training run: the ``training`` parameters (``conf/base/parameters_training.yml``
    says what each does and holds the defaults; this class has none)."""

    architecture: str
    width: int
    small_input_stem: bool | None
    pretrained: bool
    device: str
    seed: int
    epochs: int
    max_lr: float
    head_epochs: int
    head_max_lr: float
    lr_ratio: float
    pct_start: float
    div_factor: float
    final_div_factor: float
    optimizer: str
    weight_decay: float
    grad_clip: float | None
    label_smoothing: float
    batch_size: int
    eval_batch_size: int
    pad: int
    flips: bool
    rotations: bool
    brightness: float
    contrast: float
    gamma: float
    saturation: float
    hue: float
    ema_decay: float | None
    bf16: bool | str
    channels_last: bool
    compile: bool
    deterministic: bool
    keep: str
    resume: bool

    @classmethod
    def from_params(cls, params: dict[str, Any], read_elsewhere: tuple[str, ...] = ()) -> TrainConfig:
        """The ``training`` parameters as a config.

        Args:
            params: the ``training`` parameter group.
            read_elsewhere: keys of the group that the caller reads itself (the pipeline's switches):
                required, but not part of the config.

        Raises:
            ValueError: a key is unknown (a typo such as ``max_Lr`` must never train with the default:
                the message names the nearest known key) or missing, or a value is out of range.
        """
        return config_from_params(cls, params, "training", read_elsewhere)

    def __post_init__(self) -> None:
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"training.optimizer is {self.optimizer!r}: use adam or adamw")
        if self.keep not in ("best", "last"):
            raise ValueError(f"training.keep is {self.keep!r}: use best (lowest validation loss) or last")
        if self.epochs < 1 or self.head_epochs < 0:
            raise ValueError(
                f"training.epochs must be >= 1 and head_epochs >= 0, got {self.epochs}, {self.head_epochs}"
            )
        for name, top in (
            ("brightness", 1),
            ("contrast", 1),
            ("saturation", 1),
            ("gamma", 0.99),
            ("hue", 0.5),
        ):
            if not 0 <= getattr(self, name) <= top:
                raise ValueError(
                    f"training.{name} is {getattr(self, name)!r}: use a number from 0 (off) to {top}"
                )
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(
                f"training.ema_decay is {self.ema_decay!r}: use a number between 0 and 1, or null (off)"
            )

    @property
    def network_args(self) -> dict[str, Any]:
        """The arguments of :func:`~malaria_pipeline.ml.models.build_network` besides the architecture."""
        return {"width": self.width, "small_input_stem": self.small_input_stem}

    @property
    def augmentation(self) -> Augmentation:
        jitter = ColorJitter(
            brightness=self.brightness,
            contrast=self.contrast,
            gamma=self.gamma,
            saturation=self.saturation,
            hue=self.hue,
        )
        return Augmentation(self.pad, self.flips, self.rotations, jitter)


def config_from_params(cls, params: dict[str, Any], group: str, read_elsewhere: tuple[str, ...] = ()):
    """The dataclass ``cls`` from the parameters of ``group``, which must hold every field and each key of
    ``read_elsewhere``, and no other key."""
    fields_ = [f.name for f in fields(cls)]
    known = fields_ + list(read_elsewhere)
    check_known_keys(params, known, group)
    missing = [name for name in known if name not in params]
    if missing:
        raise ValueError(f"{group} is missing {', '.join(missing)}: see conf/base/parameters_training.yml")
    return cls(**{name: params[name] for name in fields_})


def check_known_keys(params: dict[str, Any], known: list[str], group: str) -> None:
    """Raises ValueError naming the first unknown key of ``params`` and the nearest known one."""
    for key in params:
        if key not in known:
            by_lower = {name.lower(): name for name in known}
            nearest = difflib.get_close_matches(key.lower(), list(by_lower), n=1, cutoff=0.6)
            hint = f"did you mean {group}.{by_lower[nearest[0]]}? " if nearest else ""
            raise ValueError(
                f"{group}.{key} is not a parameter of {group}: {hint}The known ones are {', '.join(sorted(known))}."
            )
