"""Training on several processes and machines: PyTorch's DistributedDataParallel, started by the elastic
launcher that ``torchrun`` uses (``torch.distributed.launcher.api.elastic_launch``).

The process that calls :func:`launch_training` (the Kedro training node) is node 0: it starts
``nproc_per_node`` workers, and the workers of the other ``nnodes - 1`` machines join the same static
rendezvous at ``rdzv_endpoint`` with::

    python -m malaria_pipeline.ml.distributed --nnodes 2 --node-rank 1 --nproc-per-node 8 \\
        --rdzv-endpoint <node 0's address>:29400

Rank 0 (node 0's first worker) broadcasts the configuration, the packed images and, on resume, the
checkpoint over the process group, so the other machines need neither the data nor the project's
``data/`` folder: only this package installed. Rank 0 alone reports each epoch, saves checkpoints and
returns the trained weights; a worker that fails ends every worker, and :func:`launch_training` raises
with that worker's error.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, record
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from malaria_pipeline.ml.checkpoint import CheckpointStore
from malaria_pipeline.ml.config import TrainConfig, config_from_params
from malaria_pipeline.ml.device import pick_device
from malaria_pipeline.ml.parallel import DataParallel
from malaria_pipeline.ml.train import TrainData, TrainResult, build_classifier, fit

logger = logging.getLogger(__name__)

# The rendezvous id that node 0 and the joining machines share.
RUN_ID = "malaria-pipeline"
TENSORS = ("train_images", "train_labels", "valid_images", "valid_labels")


@dataclass(frozen=True, kw_only=True)
class DistributedConfig:
    """``training.distributed`` (``conf/base/parameters_training.yml`` says what each knob does)."""

    nproc_per_node: int
    nnodes: int
    rdzv_endpoint: str
    backend: str
    sync_batchnorm: bool

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> DistributedConfig:
        return config_from_params(cls, params, "training.distributed")

    def __post_init__(self) -> None:
        if self.nproc_per_node < 1 or self.nnodes < 1:
            raise ValueError(
                f"training.distributed.nproc_per_node and nnodes must be >= 1, got {self.nproc_per_node} "
                f"and {self.nnodes}"
            )
        if self.backend not in ("auto", "gloo", "nccl"):
            raise ValueError(
                f"training.distributed.backend is {self.backend!r}: use auto (NCCL on CUDA, Gloo on "
                "the CPU), gloo or nccl"
            )

    @property
    def enabled(self) -> bool:
        """More than one process: otherwise training runs in the calling process, with no process group."""
        return self.nproc_per_node > 1 or self.nnodes > 1

    def backend_for(self, device: torch.device) -> str:
        return ("nccl" if device.type == "cuda" else "gloo") if self.backend == "auto" else self.backend

    def launch_config(self, node_rank: int) -> LaunchConfig:
        return LaunchConfig(
            min_nodes=self.nnodes,
            max_nodes=self.nnodes,
            nproc_per_node=self.nproc_per_node,
            run_id=RUN_ID,
            rdzv_backend="static",
            rdzv_endpoint=self.rdzv_endpoint,
            rdzv_configs={"rank": node_rank},
            max_restarts=0,
            monitor_interval=0.5,
            start_method="spawn",
        )


def launch_training(
    data: TrainData,
    config: TrainConfig,
    distributed: DistributedConfig,
    *,
    checkpoint: CheckpointStore | None = None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Trains as :func:`~malaria_pipeline.ml.train.train_classifier` does, in ``distributed``'s processes.

    ``on_epoch_end`` runs in rank 0's process: it must be picklable (a module-level function or a
    ``functools.partial`` of one).

    Raises:
        ValueError: ``sync_batchnorm`` without CUDA (PyTorch's SyncBatchNorm runs on GPUs only), or a
            batch size that the processes can't share evenly (with the same number of processes on every
            machine).
        DistributedTrainingError: a worker failed; the message is that worker's error.
    """
    device = pick_device(config.device)
    DataParallel(0, distributed.nproc_per_node * distributed.nnodes).local_batch_size(config.batch_size)
    if distributed.sync_batchnorm and device.type != "cuda":
        raise ValueError(
            "training.distributed.sync_batchnorm needs CUDA GPUs (PyTorch's SyncBatchNorm runs on GPUs "
            f"only) and this run trains on {device}: set it to false"
        )
    results = run_workers(data, config, distributed, checkpoint=checkpoint, on_epoch_end=on_epoch_end)
    state = results[0]
    if len({result["sha256"] for result in results.values()}) != 1:  # DDP keeps them equal: a bug if not
        digests = {rank: result["sha256"][:12] for rank, result in results.items()}
        raise DistributedTrainingError(
            f"The training processes ended with different weights (SHA-256 by rank: {digests})"
        )
    classifier = build_classifier(config, data)
    classifier.load_state_dict(state["state_dict"])
    return TrainResult(classifier=classifier, history=state["history"], best_epoch=state["best_epoch"])


def run_workers(
    data: TrainData,
    config: TrainConfig,
    distributed: DistributedConfig,
    *,
    checkpoint: CheckpointStore | None = None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
) -> dict[int, dict[str, Any]]:
    """Starts this machine's training processes and waits for the group to finish.

    Returns:
        By local rank: the SHA-256 of its kept weights (``sha256``), and for rank 0 the weights
        (``state_dict``), ``history`` and ``best_epoch``.
    """
    device = pick_device(config.device)
    with tempfile.TemporaryDirectory(prefix="malaria-ddp-") as folder:
        # rank 0 reads the images from this file (memory-mapped) and broadcasts them to the others
        images, failures = Path(folder) / "train_data.pt", Path(folder) / "failures"
        torch.save({name: getattr(data, name) for name in TENSORS}, images)
        payload = {
            "images": str(images),
            "data": replace(data, **dict.fromkeys(TENSORS, None)),
            "config": config,
            "checkpoint": checkpoint,
            "on_epoch_end": on_epoch_end,
            "sync_batchnorm": distributed.sync_batchnorm,
            "failures": str(failures),
        }
        logger.info(
            "Starting %d training processes on this machine (%d machines, %s, rendezvous %s)",
            distributed.nproc_per_node,
            distributed.nnodes,
            distributed.backend_for(device),
            distributed.rdzv_endpoint,
        )
        try:
            return elastic_launch(distributed.launch_config(node_rank=0), _worker)(payload, distributed)
        except ChildFailedError as error:
            raise DistributedTrainingError(_failure_message(error, failures)) from error


class DistributedTrainingError(RuntimeError):
    """A worker of a data-parallel training run failed; the message is its error."""


def _failure_message(error: ChildFailedError, failures: Path | None = None) -> str:
    """The error of the process that failed first.

    When one process raises, the others fail in their next collective ("Connection closed by peer"),
    and which exit the launcher sees first is a race. So each of this machine's processes notes when it
    raised (:func:`_note_failure`), and the earliest note names the cause. Without a note (a process
    killed, or one on another machine) the message is the launcher's first failure.
    """
    notes = (
        [json.loads(path.read_text()) for path in sorted(failures.glob("rank-*.json"))] if failures else []
    )
    if notes:
        first = min(notes, key=lambda note: note["time"])
        return f"Training process of rank {first['rank']} failed: {first['message']}"
    rank, failure = error.get_first_failure()
    message = (
        failure.message if isinstance(failure.message, str) else failure.message.get("message", str(failure))
    )
    return f"Training process of rank {rank} failed (exit code {failure.exitcode}): {message}"


def _note_failure(failures: Path, rank: int, error: BaseException) -> None:
    """Writes when and with what this process raised, before it leaves the process group (which is what
    makes its peers fail): a peer's note is always the later one."""
    failures.mkdir(parents=True, exist_ok=True)
    note = {"rank": rank, "time": time.time(), "message": f"{type(error).__name__}: {error}"}
    partial = failures / f".rank-{rank}.json"
    partial.write_text(json.dumps(note))
    partial.replace(failures / f"rank-{rank}.json")


@record
def _worker(payload: dict[str, Any] | None, distributed: DistributedConfig) -> dict[str, Any]:
    """One training process: joins the group, receives rank 0's configuration and data, trains in
    DistributedDataParallel. Returns the SHA-256 of its kept weights and, on rank 0, the weights (on the
    CPU), the history and the kept epoch."""
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    _configure_logging(rank)
    local = _local_device(payload["config"] if payload else None)
    if local.type == "cuda":
        torch.cuda.set_device(local)  # NCCL's collectives (broadcast_object_list too) use the current device
    dist.init_process_group(
        distributed.backend_for(local), **({"device_id": local} if local.type == "cuda" else {})
    )
    try:
        parallel = DataParallel(rank, world_size)
        data, config, checkpoint, sync_batchnorm = _receive(
            payload if parallel.is_main else None, parallel, local
        )
        parallel = replace(parallel, sync_batchnorm=sync_batchnorm)
        config = replace(config, device=str(local))
        result = fit(
            build_classifier(config, data),
            data,
            config,
            checkpoint=checkpoint,
            on_epoch_end=payload["on_epoch_end"] if parallel.is_main else None,
            parallel=parallel,
        )
        state = {k: v.detach().cpu() for k, v in result.classifier.state_dict().items()}
        if not parallel.is_main:
            return {"sha256": weights_digest(state)}
        return {
            "sha256": weights_digest(state),
            "state_dict": state,
            "history": result.history,
            "best_epoch": result.best_epoch,
        }
    except BaseException as error:
        if payload is not None:
            _note_failure(Path(payload["failures"]), rank, error)
        raise
    finally:
        dist.destroy_process_group()


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's names and bytes: equal digests, bit-identical weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _local_device(config: TrainConfig | None) -> torch.device:
    """This worker's device: CUDA device ``LOCAL_RANK`` where there is CUDA, else the CPU."""
    if torch.cuda.is_available() and (config is None or pick_device(config.device).type == "cuda"):
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device("cpu")


def _receive(payload: dict[str, Any] | None, parallel: DataParallel, device: torch.device):
    """Rank 0's training data, configuration, checkpoint store and ``sync_batchnorm``, on every rank: the
    small things as one pickled object, the images as tensors broadcast on ``device``."""
    if parallel.is_main:
        tensors = torch.load(payload["images"], weights_only=True, mmap=True)
        header = {
            "data": payload["data"],
            "config": payload["config"],
            "checkpoint": payload["checkpoint"],
            "sync_batchnorm": payload["sync_batchnorm"],
            "shapes": {name: (tuple(t.shape), t.dtype) for name, t in tensors.items()},
        }
    header = parallel.share(header if parallel.is_main else None)
    received = {}
    for name in TENSORS:
        shape, dtype = header["shapes"][name]
        tensor = (
            tensors[name].to(device) if parallel.is_main else torch.empty(shape, dtype=dtype, device=device)
        )
        dist.broadcast(tensor, src=0)
        received[name] = tensor
    return (
        replace(header["data"], **received),
        header["config"],
        header["checkpoint"],
        header["sync_batchnorm"],
    )


def _configure_logging(rank: int) -> None:
    """Rank 0 logs as the calling process does (one plain line per record); the others warnings only.

    Under the ``kedro`` command a spawned process re-imports it, which applies the project's logging
    configuration (``malaria_pipeline`` at INFO) again: the levels are set here after it.
    """
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout, force=True
    )
    logging.getLogger("malaria_pipeline").setLevel(level)


def main(argv: list[str] | None = None) -> None:
    """Joins another machine's training run: ``python -m malaria_pipeline.ml.distributed --help``."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nnodes", type=int, required=True, help="training.distributed.nnodes of the run")
    parser.add_argument("--node-rank", type=int, required=True, help="this machine's rank, 1 to nnodes - 1")
    parser.add_argument(
        "--nproc-per-node", type=int, default=1, help="processes on this machine (one per GPU)"
    )
    parser.add_argument(
        "--rdzv-endpoint", required=True, help="training.distributed.rdzv_endpoint: node 0's host:port"
    )
    parser.add_argument("--backend", default="auto", choices=("auto", "gloo", "nccl"))
    args = parser.parse_args(argv)
    if not 1 <= args.node_rank < args.nnodes:
        parser.error(
            f"--node-rank must be from 1 to {args.nnodes - 1}: node 0 is the machine that runs kedro run"
        )
    # sync_batchnorm is node 0's (training.distributed.sync_batchnorm), received with the configuration
    distributed = DistributedConfig(
        nproc_per_node=args.nproc_per_node,
        nnodes=args.nnodes,
        rdzv_endpoint=args.rdzv_endpoint,
        backend=args.backend,
        sync_batchnorm=False,
    )
    _configure_logging(0)
    logger.info(
        "Joining the training run at %s as machine %d of %d", args.rdzv_endpoint, args.node_rank, args.nnodes
    )
    try:
        elastic_launch(distributed.launch_config(node_rank=args.node_rank), _worker)(None, distributed)
    except ChildFailedError as error:
        raise SystemExit(_failure_message(error)) from error


if __name__ == "__main__":
    main()
