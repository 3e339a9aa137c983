"""The training loop: one-cycle schedule, Adam(W), gradient clipping, batch augmentation on the device.

The training images live on the device as one ``uint8`` tensor; each step indexes a batch, augments
and normalizes it with tensor ops, and runs the network. One or two stages: without pretrained
weights one stage trains every layer; with them, stage ``head`` trains the head of a frozen network
and stage ``full`` unfreezes it with discriminative learning rates, as the fastai reference does.
"""

from __future__ import annotations

import difflib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from malaria_pipeline.ml.augment import augment_batch
from malaria_pipeline.ml.checkpoint import CheckpointStore
from malaria_pipeline.ml.device import use_bf16
from malaria_pipeline.splitting import SplitError, subset_rows
from malaria_pipeline.ml.models import apply_frozen_mode, build_network, layer_groups, set_frozen

logger = logging.getLogger(__name__)

HISTORY_COLUMNS = ("epoch", "stage", "train_loss", "valid_loss", "accuracy", "lr", "seconds")


@dataclass
class TrainConfig:
    """Every knob of a training run; the names are those of ``parameters_training.yml``."""

    epochs: int = 10
    max_lr: float = 0.01
    head_epochs: int = 0
    head_max_lr: float = 0.01
    lr_ratio: float = 100.0
    batch_size: int = 256
    eval_batch_size: int = 1024
    optimizer: str = "adam"
    weight_decay: float = 1e-4
    grad_clip: float | None = 0.1
    label_smoothing: float = 0.0
    pct_start: float = 0.25
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    pad: int = 4
    flips: bool = True
    rotations: bool = True
    seed: int = 42
    keep: str = "best"
    bf16: bool | str = "auto"
    channels_last: bool = True
    compile: bool = False

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> TrainConfig:
        """The fields of this class taken from ``params`` (the ``training`` group).

        Raises:
            ValueError: ``params`` has a key that is neither a field nor one of :data:`RUN_KEYS`: a
                typo such as ``max_Lr`` must never train with the default; the message names the
                nearest known key.
        """
        check_known_keys(params, [f.name for f in fields(cls)] + list(RUN_KEYS), "training")
        return cls(**{f.name: params[f.name] for f in fields(cls) if f.name in params})

    def __post_init__(self) -> None:
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"training.optimizer is {self.optimizer!r}: use adam or adamw")
        if self.keep not in ("best", "last"):
            raise ValueError(f"training.keep is {self.keep!r}: use best (lowest validation loss) or last")
        if self.epochs < 1 or self.head_epochs < 0:
            raise ValueError(f"training.epochs must be >= 1 and head_epochs >= 0, got {self.epochs}, {self.head_epochs}")


# The keys of the ``training`` parameters that are not TrainConfig's: the network and where to train.
RUN_KEYS = ("architecture", "width", "small_input_stem", "pretrained", "device", "resume")


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


@dataclass
class Stage:
    """Epochs that share one optimizer and one one-cycle schedule."""

    name: str
    epochs: int
    max_lrs: list[float]  # one per parameter group
    frozen: bool


@dataclass
class TrainData:
    """Images ``uint8, N×3×S×S`` and class indices ``int64, N`` of the training and validation subsets."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    valid_images: torch.Tensor
    valid_labels: torch.Tensor
    mean: list[float]
    std: list[float]
    class_names: list[str] = field(default_factory=list)

    @classmethod
    def from_split(cls, images: torch.Tensor, image_index, data_split, normalization: dict[str, Any]) -> TrainData:
        """The ``train`` and ``validation`` subsets of packed images; class indices follow sorted names.

        Args:
            images: ``uint8, N×3×S×S`` in the order of ``image_index``.
            image_index: a DataFrame with ``path`` and ``label`` per image.
            data_split: a DataFrame with ``path`` and ``subset`` per image, in index order.
            normalization: ``mean`` and ``std`` per channel.
        """
        class_names = sorted(image_index["label"].unique())
        codes = torch.tensor(image_index["label"].map({n: i for i, n in enumerate(class_names)}).to_numpy(dtype="int64"))
        train = torch.from_numpy(subset_rows(image_index, data_split, "train", n_images=len(images)))
        valid = torch.from_numpy(subset_rows(image_index, data_split, "validation"))
        if len(valid) == 0:
            raise SplitError(
                "The split has no validation images, which training needs to choose its best epoch: give "
                "preprocessing.split.fractions.validation a value above 0."
            )
        return cls(images[train], codes[train], images[valid], codes[valid],
                   list(normalization["mean"]), list(normalization["std"]), class_names)


@dataclass
class TrainResult:
    network: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0


def plan_stages(config: TrainConfig, n_groups: int, two_stage: bool) -> list[Stage]:
    """The stages of a run and the peak learning rate of each parameter group in each.

    In stage ``full`` of a two-stage run the groups' rates rise geometrically from
    ``max_lr / lr_ratio`` (the first group) to ``max_lr`` (the head).
    """
    if not two_stage:
        return [Stage("full", config.epochs, [config.max_lr], frozen=False)]
    spread = [config.max_lr / config.lr_ratio ** (1 - i / (n_groups - 1)) for i in range(n_groups)]
    stages = [Stage("full", config.epochs, spread, frozen=False)]
    if config.head_epochs > 0:
        stages.insert(0, Stage("head", config.head_epochs, [config.head_max_lr], frozen=True))
    return stages


def make_optimizer(config: TrainConfig, stage: Stage, groups: list[nn.Module]) -> torch.optim.Optimizer:
    if stage.frozen:
        param_groups = [{"params": list(groups[-1].parameters())}]
    elif len(stage.max_lrs) == 1:
        param_groups = [{"params": [p for g in groups for p in g.parameters()]}]
    else:
        param_groups = [{"params": list(group.parameters())} for group in groups]
    optimizer_class = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return optimizer_class(param_groups, lr=stage.max_lrs[-1], weight_decay=config.weight_decay)


def make_scheduler(config: TrainConfig, stage: Stage, optimizer, steps_per_epoch: int):
    """One-cycle: warms up to each group's max LR over ``pct_start`` of the steps, then anneals (cosine)."""
    total = stage.epochs * steps_per_epoch
    # OneCycleLR divides by zero when a phase gets less than one step (runs of a few batches): keep
    # the warm-up between 1.5 steps and all but half a step.
    pct_start = min(max(config.pct_start, 1.5 / total), 1 - 0.5 / total) if total > 1 else 0.5
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=stage.max_lrs if len(stage.max_lrs) > 1 else stage.max_lrs[0],
        total_steps=total,
        pct_start=pct_start,
        div_factor=config.div_factor,
        final_div_factor=config.final_div_factor,
    )


def steps_per_epoch(n_images: int, batch_size: int) -> int:
    # The last partial batch is dropped (a batch of one breaks batch norm); a set smaller than one
    # batch is one batch.
    return max(1, n_images // batch_size)


def train_classifier(
    architecture: str,
    network_args: dict[str, Any],
    data: TrainData,
    config: TrainConfig,
    device: torch.device,
    *,
    num_classes: int,
    pretrained: bool = False,
    **fit_args: Any,
) -> TrainResult:
    """Builds the network (seeded by ``config.seed``) and trains it with :func:`fit`.

    A pretrained network is fine-tuned in two stages (head, then all layers); the others in one.
    """
    torch.manual_seed(config.seed)
    network = build_network(
        architecture, num_classes=num_classes, image_size=data.train_images.shape[-1], pretrained=pretrained,
        **network_args,
    )
    return fit(network, architecture, data, config, device, two_stage=pretrained, **fit_args)


def fit(
    network: nn.Module,
    architecture: str,
    data: TrainData,
    config: TrainConfig,
    device: torch.device,
    *,
    two_stage: bool = False,
    checkpoint: CheckpointStore | None = None,
    resume: bool = False,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Trains ``network`` and returns it with the best (or last) epoch's weights and the history.

    Args:
        network: the network to train (on the CPU or ``device``).
        architecture: its name, for the layer groups of discriminative learning rates.
        data: training and validation images and labels, and the normalization statistics.
        config: the knobs.
        device: where to train; the images are moved there once.
        two_stage: head-only stage (``config.head_epochs``), then all layers with discriminative
            learning rates; for pretrained networks.
        checkpoint: where to keep the state after each epoch; None keeps none.
        resume: continue from ``checkpoint``'s last epoch instead of starting afresh.
        on_epoch_end: called with each history row as it becomes known: on resume first with each
            row restored from the checkpoint, then after each epoch (once its checkpoint is saved).
    """
    torch.manual_seed(config.seed)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    network = network.to(device)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    network = network.to(memory_format=memory_format)
    groups = layer_groups(network, architecture)
    stages = plan_stages(config, len(groups), two_stage)
    fingerprint = _fingerprint(config, architecture, data, stages)
    run_network = torch.compile(network) if config.compile else network
    autocast = use_bf16(config.bf16, device)

    train_images, train_labels = data.train_images.to(device), data.train_labels.to(device)
    valid_images, valid_labels = data.valid_images.to(device), data.valid_labels.to(device)
    mean = torch.tensor(data.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(data.std, device=device).view(1, -1, 1, 1)
    steps = steps_per_epoch(len(train_images), config.batch_size)
    batch = min(config.batch_size, len(train_images))

    result = TrainResult(network=network)
    best = {"valid_loss": math.inf, "epoch": 0, "state_dict": None}
    done, saved = 0, _resume_state(checkpoint, resume, fingerprint)
    if saved is not None:
        network.load_state_dict(saved["model"])
        result.history, best, done = saved["history"], saved["best"], saved["epoch"]
        generator.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
        logger.info("Resuming from epoch %d of %d (%s)", done, sum(s.epochs for s in stages), checkpoint.path)

    logger.info(
        "Training %s on %s%s: %d training and %d validation images of %s, %d steps of %d per epoch, stages %s",
        architecture, device, " in bf16" if autocast else "", len(train_images), len(valid_images), tuple(train_images.shape[1:]), steps, batch,
        ", ".join(f"{s.name} ({s.epochs} epochs, max LR {_lrs(s.max_lrs)})" for s in stages),
    )
    logger.info("%s", _table_row(HISTORY_COLUMNS))
    for row in result.history:
        logger.info("%s", _table_row(row))
        if on_epoch_end is not None:
            on_epoch_end(row)

    first_epoch = 0
    for stage in stages:
        last_epoch = first_epoch + stage.epochs
        if done >= last_epoch:
            first_epoch = last_epoch
            continue
        set_frozen(groups, stage.frozen)
        optimizer = make_optimizer(config, stage, groups)
        scheduler = make_scheduler(config, stage, optimizer, steps)
        if saved is not None and done > first_epoch:
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
        for epoch in range(max(done, first_epoch), last_epoch):
            started = time.perf_counter()
            network.train()
            apply_frozen_mode(groups)
            order = torch.randperm(len(train_images), device=device, generator=generator)
            loss_sum = torch.zeros((), device=device)
            for step in tqdm(range(steps), desc=f"epoch {epoch + 1}", unit="batch", leave=False, disable=None):
                rows = order[step * batch : (step + 1) * batch]
                loss = train_step(run_network, optimizer, train_images[rows], train_labels[rows], mean, std,
                                  generator, config, memory_format, autocast)
                last_lr = optimizer.param_groups[-1]["lr"]  # before the step readies the next batch's
                scheduler.step()
                loss_sum += loss
            valid_loss, accuracy = evaluate(
                run_network, valid_images, valid_labels, mean, std, config.eval_batch_size, memory_format, autocast
            )
            row = {
                "epoch": epoch + 1,
                "stage": stage.name,
                "train_loss": float(loss_sum) / steps,
                "valid_loss": valid_loss,
                "accuracy": accuracy,
                "lr": last_lr,
                "seconds": time.perf_counter() - started,
            }
            result.history.append(row)
            logger.info("%s", _table_row(row))
            if valid_loss < best["valid_loss"]:
                best = {"valid_loss": valid_loss, "epoch": epoch + 1, "state_dict": _cpu_state(network)}
            if checkpoint is not None:
                checkpoint.save({
                    "epoch": epoch + 1, "fingerprint": fingerprint, "history": result.history, "best": best,
                    "model": _cpu_state(network), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "generator": generator.get_state(),
                    "torch_rng": torch.get_rng_state(),
                })
            if on_epoch_end is not None:
                on_epoch_end(row)
        first_epoch = last_epoch
        done = last_epoch

    set_frozen(groups, False)
    if config.keep == "best" and best["state_dict"] is not None:
        network.load_state_dict(best["state_dict"])
        result.best_epoch = best["epoch"]
    else:
        result.best_epoch = len(result.history)
    logger.info("Kept the weights of epoch %d (%s)", result.best_epoch, config.keep)
    network.to(memory_format=torch.contiguous_format)
    return result


def train_step(
    network: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    generator: torch.Generator,
    config: TrainConfig,
    memory_format: torch.memory_format = torch.contiguous_format,
    autocast: bool = False,
) -> torch.Tensor:
    """One optimizer step on a ``uint8`` batch: augment, normalize, forward, backward, clip, step.

    Returns:
        The batch's loss (a float32 scalar on the device, detached).
    """
    batch = augment_batch(images.float().div_(255), generator, config.pad, config.flips, config.rotations)
    batch = (batch - mean) / std
    return optimizer_step(network, optimizer, batch, labels, config, memory_format, autocast)


def optimizer_step(
    network: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig,
    memory_format: torch.memory_format = torch.contiguous_format,
    autocast: bool = False,
) -> torch.Tensor:
    """Forward, backward, clip and step on a normalized float batch; returns the detached loss."""
    batch = batch.contiguous(memory_format=memory_format)
    with torch.autocast(batch.device.type, dtype=torch.bfloat16, enabled=autocast):
        loss = F.cross_entropy(network(batch), labels, label_smoothing=config.label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.grad_clip:
        nn.utils.clip_grad_value_(network.parameters(), config.grad_clip)
    optimizer.step()
    return loss.detach().float()


@torch.no_grad()
def evaluate(network, images, labels, mean, std, batch_size, memory_format=torch.contiguous_format, autocast=False):
    """Mean cross-entropy and accuracy of ``network`` (eval mode) on ``uint8`` images, in batches."""
    if len(images) == 0:
        return math.nan, math.nan
    network.eval()
    loss_sum, correct = torch.zeros((), device=images.device), torch.zeros((), device=images.device)
    for start in range(0, len(images), batch_size):
        batch = ((images[start : start + batch_size].float() / 255 - mean) / std).contiguous(memory_format=memory_format)
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = network(batch).float()
        target = labels[start : start + batch_size]
        loss_sum += F.cross_entropy(logits, target, reduction="sum")
        correct += (logits.argmax(dim=1) == target).sum()
    return float(loss_sum) / len(images), float(correct) / len(images)


def _resume_state(checkpoint: CheckpointStore | None, resume: bool, fingerprint: dict[str, Any]):
    if not resume:
        return None
    if checkpoint is None:
        raise ValueError("training.resume is true but no checkpoint store was given")
    saved = checkpoint.load()
    if saved is None:
        logger.warning("training.resume is true but %s holds no checkpoint: starting afresh", checkpoint.path)
        return None
    if saved["fingerprint"] != fingerprint:
        changed = sorted(k for k in fingerprint if saved["fingerprint"].get(k) != fingerprint[k])
        raise ValueError(
            f"The checkpoint {checkpoint.path} belongs to another run (it differs in {changed}). Resume with the "
            "parameters and data of the interrupted run, or set training.resume=false to start afresh."
        )
    return saved


def _fingerprint(config: TrainConfig, architecture: str, data: TrainData, stages: list[Stage]) -> dict[str, Any]:
    # What must match for a checkpoint to belong to this run (the device and speed switches need not).
    knobs = {k: v for k, v in asdict(config).items() if k not in ("bf16", "channels_last", "compile", "eval_batch_size", "keep")}
    return {
        **knobs,
        "architecture": architecture,
        "stages": [asdict(s) for s in stages],
        "train_images": list(data.train_images.shape),
        "valid_images": list(data.valid_images.shape),
    }


def _cpu_state(network: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().to("cpu", copy=True) for name, tensor in network.state_dict().items()}


def _lrs(values: list[float]) -> str:
    return "/".join(f"{v:.2g}" for v in values)


def _table_row(row) -> str:
    if not isinstance(row, dict):
        return "{:>5} {:>5} {:>10} {:>10} {:>8} {:>9} {:>7}".format(*row)
    return "{epoch:>5} {stage:>5} {train_loss:>10.4f} {valid_loss:>10.4f} {accuracy:>8.4f} {lr:>9.2e} {seconds:>7.1f}".format(**row)
