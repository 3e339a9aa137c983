"""The training loop: one-cycle schedule, Adam(W), gradient clipping, batch augmentation on the device,
optionally an exponential moving average of the weights.

The training images live on the device as one ``uint8`` tensor that a :class:`BatchLoader` shuffles,
slices and augments; the classifier normalizes inside. One or two stages: without pretrained weights
one stage trains every layer; with them, stage ``head`` trains the head of a frozen network and stage
``full`` unfreezes it with discriminative learning rates, as the fastai reference does.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from malaria_pipeline.ml.averaging import make_average, update_average
from malaria_pipeline.ml.checkpoint import CheckpointStore, random_states, restore_random_states
from malaria_pipeline.ml.config import TrainConfig
from malaria_pipeline.ml.device import pick_device, set_determinism, use_bf16
from malaria_pipeline.ml.loader import BatchLoader
from malaria_pipeline.ml.models import (
    CellClassifier,
    apply_frozen_mode,
    build_network,
    layer_groups,
    set_frozen,
)
from malaria_pipeline.ml.parallel import DataParallel

logger = logging.getLogger(__name__)

HISTORY_COLUMNS = ("epoch", "stage", "train_loss", "valid_loss", "accuracy", "lr", "seconds")


@dataclass
class Stage:
    """Epochs that share one optimizer and one one-cycle schedule."""

    name: str
    epochs: int
    max_lrs: list[float]  # one per parameter group
    frozen: bool


@dataclass(kw_only=True)
class TrainData:
    """The training and validation subsets: images ``uint8, N×3×S×S``, class indices ``int64, N``.

    ``mean`` and ``std`` (per channel, pixels in [0, 1]) are the training images' statistics, which the
    classifier's first layer normalizes with; ``class_names[i]`` is the label of class index i.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    valid_images: torch.Tensor
    valid_labels: torch.Tensor
    mean: list[float]
    std: list[float]
    class_names: list[str]


@dataclass
class TrainResult:
    classifier: CellClassifier
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0


def plan_stages(config: TrainConfig, n_groups: int) -> list[Stage]:
    """The stages of a run and the peak learning rate of each parameter group in each.

    A pretrained network gets two: ``head`` (when ``head_epochs`` > 0), then ``full``, in which the
    groups' rates rise geometrically from ``max_lr / lr_ratio`` (the first group) to ``max_lr`` (the head).
    """
    if not config.pretrained:
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


def build_classifier(config: TrainConfig, data: TrainData) -> CellClassifier:
    """The untrained classifier for ``data``: ``config``'s network (seeded by ``config.seed``) after a
    normalization layer with the training images' statistics."""
    torch.manual_seed(config.seed)
    image_size = data.train_images.shape[-1]
    network = build_network(
        config.architecture,
        num_classes=len(data.class_names),
        image_size=image_size,
        pretrained=config.pretrained,
        **config.network_args,
    )
    return CellClassifier(
        network=network, mean=data.mean, std=data.std, class_names=data.class_names, image_size=image_size
    )


def train_classifier(data: TrainData, config: TrainConfig, **fit_args: Any) -> TrainResult:
    """Builds the classifier with :func:`build_classifier` and trains it with :func:`fit`.

    A pretrained network is fine-tuned in two stages (head, then all layers); the others in one.
    """
    return fit(build_classifier(config, data), data, config, **fit_args)


@dataclass
class Progress:
    """What a run has done so far: what a checkpoint saves and a resumed run restores."""

    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(
        default_factory=lambda: {"valid_loss": math.inf, "epoch": 0, "state_dict": None}
    )


@dataclass(kw_only=True)
class _Run:
    """One call of :func:`fit`: the classifier, its data on the device and where the state is kept."""

    classifier: CellClassifier
    network: nn.Module  # the classifier, compiled or not
    groups: list[nn.Module]
    loader: BatchLoader
    valid: tuple[torch.Tensor, torch.Tensor]
    config: TrainConfig
    checkpoint: CheckpointStore | None
    fingerprint: dict[str, Any]
    on_epoch_end: Callable[[dict[str, Any]], None]
    progress: Progress
    average: AveragedModel | None  # the EMA of the classifier's weights (ema_decay), or None
    parallel: DataParallel | None = None  # this process's place in a data-parallel group, or None

    @property
    def is_main(self) -> bool:
        """Whether this process validates, checkpoints and reports (the only one, or rank 0)."""
        return self.parallel is None or self.parallel.is_main

    @property
    def kept(self) -> nn.Module:
        """The module that is validated and kept: the weight average when there is one, else the classifier."""
        return self.classifier if self.average is None else self.average.module


def fit(
    classifier: CellClassifier,
    data: TrainData,
    config: TrainConfig,
    *,
    checkpoint: CheckpointStore | None = None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    parallel: DataParallel | None = None,
) -> TrainResult:
    """Trains ``classifier`` and returns it with the best (or last) epoch's weights and the history.

    Args:
        classifier: the classifier to train (on the CPU or ``config.device``).
        data: training and validation images and labels.
        config: the knobs; ``config.pretrained`` trains in two stages (head, then all layers with
            discriminative learning rates), ``config.resume`` continues from ``checkpoint``.
        checkpoint: where to keep the state after each epoch; None keeps none.
        on_epoch_end: called with each history row as it becomes known: on resume first with each
            row restored from the checkpoint, then after each epoch (once its checkpoint is saved).
        parallel: this process's place in a data-parallel group (:mod:`malaria_pipeline.ml.parallel`,
            started by :mod:`malaria_pipeline.ml.distributed`); rank 0 alone checkpoints and calls
            ``on_epoch_end``.
    """
    device = pick_device(config.device)
    set_determinism(config.deterministic)
    torch.manual_seed(config.seed)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    classifier = classifier.to(device).set_speed(config.channels_last, use_bf16(config.bf16, device))
    groups = layer_groups(classifier.network, config.architecture)
    stages = plan_stages(config, len(groups))
    if parallel is not None:
        parallel.local_batch_size(config.batch_size)  # checks that the batch divides evenly
    loader = BatchLoader(
        images=data.train_images.to(device),
        labels=data.train_labels.to(device),
        batch_size=config.batch_size,
        generator=generator,
        augment=config.augmentation,
        shard=parallel.shard if parallel else None,
    )
    network = torch.compile(classifier) if config.compile else classifier
    run = _Run(
        classifier=classifier,
        network=parallel.wrap(network, device) if parallel else network,
        groups=groups,
        loader=loader,
        valid=(data.valid_images.to(device), data.valid_labels.to(device)),
        config=config,
        checkpoint=checkpoint,
        fingerprint=_fingerprint(config, data, stages),
        on_epoch_end=on_epoch_end or (lambda row: None),
        progress=Progress(),
        average=None if config.ema_decay is None else make_average(classifier, config.ema_decay),
        parallel=parallel,
    )
    saved = _restore(run, generator)
    _log_start(run, device, stages)
    first_epoch = 0
    for stage in stages:
        if run.progress.epoch < first_epoch + stage.epochs:
            _train_stage(
                run, stage, first_epoch, saved if run.progress.epoch > first_epoch else None, generator
            )
        first_epoch += stage.epochs
    return _finish(run)


def _train_stage(
    run: _Run, stage: Stage, first_epoch: int, saved: dict[str, Any] | None, generator: torch.Generator
) -> None:
    """The epochs of ``stage`` not done yet; ``saved``: the checkpoint of an epoch inside this stage."""
    set_frozen(run.groups, stage.frozen)
    optimizer = make_optimizer(run.config, stage, run.groups)
    scheduler = make_scheduler(run.config, stage, optimizer, len(run.loader))
    if saved is not None:
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
    for epoch in range(max(run.progress.epoch, first_epoch), first_epoch + stage.epochs):
        started = time.perf_counter()
        train_loss, last_lr = run_epoch(run, optimizer, scheduler, f"epoch {epoch + 1}")
        valid_loss, accuracy = _validate(run)
        if run.parallel is not None:
            train_loss = run.parallel.mean(train_loss, run.loader.images.device)
        row = {
            "epoch": epoch + 1,
            "stage": stage.name,
            "train_loss": train_loss,
            "valid_loss": valid_loss,
            "accuracy": accuracy,
            "lr": last_lr,
            "seconds": time.perf_counter() - started,
        }
        run.progress.epoch = epoch + 1
        run.progress.history.append(row)
        logger.info("%s", _table_row(row))
        _keep_best(run, row)
        if run.is_main:
            _snapshot(run, optimizer, scheduler, generator)
            run.on_epoch_end(row)


def _validate(run: _Run) -> tuple[float, float]:
    """Validation loss and accuracy of the module that is kept; in a data-parallel group, rank 0's
    (after its batch-norm statistics are given to every process), shared with the others."""
    validated = run.classifier if run.parallel is not None else run.network
    validated = validated if run.average is None else run.average.module
    if run.parallel is None:
        return evaluate(validated, *run.valid, run.config.eval_batch_size)
    run.parallel.sync_buffers(run.classifier)
    if run.average is not None:
        run.parallel.sync_buffers(run.average)
    return run.parallel.share(
        evaluate(validated, *run.valid, run.config.eval_batch_size) if run.is_main else None
    )


def run_epoch(
    run: _Run, optimizer: torch.optim.Optimizer, scheduler, description: str
) -> tuple[float, float]:
    """One pass over the training batches; returns the mean training loss and the last batch's LR."""
    run.network.train()
    apply_frozen_mode(run.groups)
    loss_sum = torch.zeros((), device=run.loader.images.device)
    for images, labels in tqdm(run.loader, desc=description, unit="batch", leave=False, disable=None):
        loss_sum += train_step(run.network, optimizer, images, labels, run.config)
        if run.average is not None:
            update_average(run.average, run.classifier)
        last_lr = optimizer.param_groups[-1]["lr"]  # before the step readies the next batch's
        scheduler.step()
    return float(loss_sum) / len(run.loader), last_lr


def train_step(
    classifier: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig,
) -> torch.Tensor:
    """One optimizer step on a batch of ``uint8`` images: forward, backward, clip, step.

    Returns:
        The batch's loss (a float32 scalar on the device, detached).
    """
    loss = F.cross_entropy(classifier(images), labels, label_smoothing=config.label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.grad_clip:
        nn.utils.clip_grad_value_(classifier.parameters(), config.grad_clip)
    optimizer.step()
    return loss.detach()


@torch.no_grad()
def evaluate(
    classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``classifier`` (eval mode) on ``uint8`` images, in batches."""
    if len(images) == 0:
        return math.nan, math.nan
    classifier.eval()
    loss_sum, correct = torch.zeros((), device=images.device), torch.zeros((), device=images.device)
    for start in range(0, len(images), batch_size):
        logits = classifier(images[start : start + batch_size])
        target = labels[start : start + batch_size]
        loss_sum += F.cross_entropy(logits, target, reduction="sum")
        correct += (logits.argmax(dim=1) == target).sum()
    return float(loss_sum) / len(images), float(correct) / len(images)


def _keep_best(run: _Run, row: dict[str, Any]) -> None:
    if row["valid_loss"] < run.progress.best["valid_loss"]:
        run.progress.best = {
            "valid_loss": row["valid_loss"],
            "epoch": row["epoch"],
            "state_dict": _cpu_state(run.kept),
        }


def _finish(run: _Run) -> TrainResult:
    """Loads the kept epoch's weights (best or last; the weight average's when there is one) and puts the
    classifier back to plain float32 NCHW."""
    set_frozen(run.groups, False)
    best = run.progress.best
    kept = (
        best["epoch"]
        if run.config.keep == "best" and best["state_dict"] is not None
        else len(run.progress.history)
    )
    if kept != len(run.progress.history):
        run.classifier.load_state_dict(best["state_dict"])
    elif run.average is not None:
        run.classifier.load_state_dict(run.average.module.state_dict())
    logger.info("Kept the weights of epoch %d (%s)", kept, run.config.keep)
    classifier = run.classifier.set_speed(channels_last=False, bf16=False)
    return TrainResult(classifier=classifier, history=run.progress.history, best_epoch=kept)


def _snapshot(run: _Run, optimizer, scheduler, generator: torch.Generator) -> None:
    """Saves the state after an epoch, for :func:`_restore`."""
    if run.checkpoint is None:
        return
    progress = run.progress
    run.checkpoint.save(
        {
            "epoch": progress.epoch,
            "fingerprint": run.fingerprint,
            "history": progress.history,
            "best": progress.best,
            "model": _cpu_state(run.classifier),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            **random_states(generator),
            "average": None if run.average is None else _cpu_state(run.average),
        }
    )


def _restore(run: _Run, generator: torch.Generator) -> dict[str, Any] | None:
    """With ``config.resume``: the checkpoint's weights, progress and random states, and the checkpoint."""
    if not run.config.resume:
        return None
    if run.checkpoint is None:
        raise ValueError("training.resume is true but no checkpoint store was given")
    saved = run.checkpoint.load() if run.is_main else None
    if run.parallel is not None:
        saved = run.parallel.share(saved)  # the other processes (other machines too) need no copy of the file
    if saved is None:
        # not a warning: a resumed cross-validation's folds that had not started have none, as they should
        logger.info(
            "training.resume is true but %s holds no checkpoint: starting afresh", run.checkpoint.path
        )
        return None
    if saved["fingerprint"] != run.fingerprint:
        changed = sorted(k for k in run.fingerprint if saved["fingerprint"].get(k) != run.fingerprint[k])
        raise ValueError(
            f"The checkpoint {run.checkpoint.path} belongs to another run (it differs in {changed}). Resume with "
            "the parameters and data of the interrupted run, or set training.resume=false to start afresh."
        )
    run.classifier.load_state_dict(saved["model"])
    if run.average is not None:
        run.average.load_state_dict(saved["average"])
    run.progress = Progress(saved["epoch"], saved["history"], saved["best"])
    restore_random_states(saved, generator, run.config.seed)
    total = sum(row["epochs"] for row in run.fingerprint["stages"])
    logger.info("Resuming from epoch %d of %d (%s)", saved["epoch"], total, run.checkpoint.path)
    return saved


def _log_start(run: _Run, device: torch.device, stages: list[Stage]) -> None:
    images = run.loader.images
    logger.info(
        "Training %s on %s%s: %d training and %d validation images of %s, %d steps of %d per epoch, stages %s",
        run.config.architecture,
        device,
        " in bf16" if run.classifier.bf16 else "",
        len(images),
        len(run.valid[0]),
        tuple(images.shape[1:]),
        len(run.loader),
        run.loader.batch_size,
        ", ".join(f"{s.name} ({s.epochs} epochs, max LR {_lrs(s.max_lrs)})" for s in stages),
    )
    if run.parallel is not None:
        logger.info(
            "Data-parallel in %d processes: each trains on %d of the %d images of every step; rank 0 "
            "validates, checkpoints and reports",
            run.parallel.world_size,
            run.parallel.local_batch_size(run.loader.batch_size),
            run.loader.batch_size,
        )
    if run.average is not None:
        logger.info(
            "Validating and keeping the moving average of the weights (decay %g), updated every step",
            run.config.ema_decay,
        )
    logger.info("%s", _table_row(HISTORY_COLUMNS))
    for row in run.progress.history:
        logger.info("%s", _table_row(row))
        if run.is_main:
            run.on_epoch_end(row)


def _fingerprint(config: TrainConfig, data: TrainData, stages: list[Stage]) -> dict[str, Any]:
    # What must match for a checkpoint to belong to this run (the device and speed switches need not).
    ignored = (
        "device",
        "bf16",
        "channels_last",
        "compile",
        "deterministic",
        "eval_batch_size",
        "keep",
        "resume",
    )
    return {
        **{k: v for k, v in asdict(config).items() if k not in ignored},
        "stages": [asdict(s) for s in stages],
        "train_images": list(data.train_images.shape),
        "valid_images": list(data.valid_images.shape),
    }


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().to("cpu", copy=True) for name, tensor in module.state_dict().items()}


def _lrs(values: list[float]) -> str:
    return "/".join(f"{v:.2g}" for v in values)


def _table_row(row) -> str:
    if not isinstance(row, dict):
        return "{:>5} {:>5} {:>10} {:>10} {:>8} {:>9} {:>7}".format(*row)
    return "{epoch:>5} {stage:>5} {train_loss:>10.4f} {valid_loss:>10.4f} {accuracy:>8.4f} {lr:>9.2e} {seconds:>7.1f}".format(
        **row
    )
