"""The benchmark's measurements, each returning its entry of the results: ingestion, training
throughput of our input pipeline and of the reference's, time to accuracy and inference (these two
in Kedro sessions of the project), peak memory."""

from __future__ import annotations

import base64
import logging
import os
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl

from malaria_pipeline.benchmark.params import merge
from malaria_pipeline.framework import kedro_private

logger = logging.getLogger("malaria_pipeline.benchmark")

ARCHITECTURES = ("resnet9", "resnet18")


@dataclass(frozen=True)
class KedroProject:
    """The project, configuration environment and runtime parameters of each Kedro session."""

    root: Path
    env: str | None
    runtime_params: dict[str, Any]

    def session(self, extra_params: dict[str, Any] | None = None):
        """A ``KedroSession`` of the project, with ``extra_params`` on top of the runtime parameters."""
        from kedro.framework.session import KedroSession

        params = merge(self.runtime_params, extra_params) if extra_params else self.runtime_params
        return KedroSession.create(project_path=self.root, env=self.env, runtime_params=params)


def configuration(project: KedroProject) -> tuple[dict[str, Any], Any]:
    """The parameters as ``kedro run`` would see them, and the ``cell_images`` archive of the catalog."""
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project.root)
    with project.session() as session:
        context = session.load_context()
        return context.params, context.catalog.load("cell_images")


def machine(device) -> dict[str, Any]:
    import torch

    cpuinfo = Path("/proc/cpuinfo")
    names = (
        [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        if cpuinfo.exists()
        else []
    )
    cpu = names[0] if names else platform.processor() or platform.machine()
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def ingestion(archive, ingestion_params: dict[str, Any]):
    """The ingestion node on ``archive``: its index and images, and the entry of the results."""
    from malaria_pipeline.pipelines.ingestion.nodes import index_images

    started = time.perf_counter()
    index, images, report = index_images(archive, ingestion_params)
    seconds = time.perf_counter() - started
    entry = {
        "images": len(index),
        "files": report["files"],
        "skipped": len(report["skipped"]),
        "seconds": seconds,
        "images_per_second": len(index) / seconds,
    }
    logger.info("Ingestion: %d images in %.1f s, %.0f images/s", len(index), seconds, len(index) / seconds)
    return index, images, entry


def training_throughput(archive, index, images, params, device, args) -> dict[str, Any]:
    """Training images/s of each architecture not in ``args.skip``, through our input pipeline and the
    reference's. Reads ``args.steps``, ``resnet18_steps``, ``warmup``, ``rounds`` and ``baseline_workers``."""
    import torch

    from malaria_pipeline.cells.tensors import class_codes, class_names_of
    from malaria_pipeline.framework.parameters import training_config
    from malaria_pipeline.ml.models import CellClassifier, build_network
    from malaria_pipeline.ml.normalization import channel_mean_std
    from malaria_pipeline.ml.throughput import baseline_loader, measure_baseline, measure_ours

    config = training_config(params["training"])
    size = params["ingestion"]["image_size"]
    class_names = class_names_of(index)
    labels = class_codes(index["label"], class_names)
    mean, std = channel_mean_std(images)
    workers = args.baseline_workers if args.baseline_workers is not None else os.cpu_count()

    baseline = {}  # its DataLoader, over the images extracted to a temporary folder below

    def images_per_second(pipeline: str, architecture: str, steps: int) -> float:
        """One timed run of a fresh ``architecture`` network through the ``pipeline`` input pipeline."""
        torch.manual_seed(config.seed)
        network = build_network(
            architecture, num_classes=len(class_names), image_size=size, **config.network_args
        )
        classifier = CellClassifier(
            network=network, mean=mean, std=std, class_names=class_names, image_size=size
        )
        if pipeline == "ours":
            return measure_ours(
                classifier, images, labels, config, device, steps, args.warmup
            ).images_per_second
        return measure_baseline(
            classifier, baseline["loader"], config, device, steps, args.warmup
        ).images_per_second

    with tempfile.TemporaryDirectory(prefix="malaria-benchmark-") as folder:
        baseline["loader"] = baseline_loader(
            _extract(archive, index, Path(folder)),
            size,
            mean,
            std,
            config,
            workers,
            pin_memory=device.type == "cuda",
        )
        training: dict[str, Any] = {
            "baseline": {
                "input_pipeline": "ImageFolder + PIL transforms + DataLoader",
                "workers": workers,
                "augmentation": _augmentation(config),
            }
        }
        for architecture in ARCHITECTURES:
            if architecture not in args.skip:
                steps = args.steps if architecture == "resnet9" else args.resnet18_steps
                training[architecture] = _compare(images_per_second, architecture, steps, args.rounds)
        del baseline["loader"]  # nothing keeps the DataLoader past its folder
    return training


def _compare(
    images_per_second: Callable[[str, str, int], float], architecture: str, steps: int, rounds: int
) -> dict[str, Any]:
    """``rounds`` measurements of each input pipeline, taken in turns, and the ratio of their medians."""
    measured: dict[str, list[float]] = {"ours": [], "baseline": []}
    for _ in range(rounds):  # in turns, so that a slower or faster spell of the machine hits both
        for pipeline, rates in measured.items():
            rates.append(images_per_second(pipeline, architecture, steps))
            logger.info("%s, %s input pipeline: %.0f training images/s", architecture, pipeline, rates[-1])
    ours, baseline = statistics.median(measured["ours"]), statistics.median(measured["baseline"])
    logger.info("%s: ours / baseline = %.2f (medians of %d rounds)", architecture, ours / baseline, rounds)
    return {
        "ours_images_per_second": ours,
        "baseline_images_per_second": baseline,
        "ours_to_baseline_ratio": ours / baseline,
        "steps": steps,
        "rounds": {pipeline: rates for pipeline, rates in measured.items()},
    }


def _augmentation(config) -> str:
    parts = [f"pad {config.pad} and crop"] + ["flips"] * config.flips + ["quarter turns"] * config.rotations
    return ", ".join(parts)


def _extract(archive, index, folder: Path) -> Path:
    """The indexed images of ``archive`` as ``folder/<label>/<file>`` PNGs, for ImageFolder."""
    for path, label in zip(index["path"], index["label"]):
        target = folder / label / path.replace("/", "__")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(archive.read(path))
    return folder


class _NodeTimer:
    """A Kedro hook that notes when each node starts."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}

    @hook_impl
    def before_node_run(self, node) -> None:
        self.started[node.name] = time.perf_counter()


def time_to_accuracy(project: KedroProject, target: float) -> dict[str, Any]:
    """A full ``training`` run, and the wall time until the end of its first epoch whose validation
    accuracy reaches ``target`` (``seconds``; ``None`` if none does)."""
    import mlflow

    timer = _NodeTimer()
    started = time.perf_counter()
    with project.session() as session:
        kedro_private.register_session_hook(session, timer)  # no public way to add a hook to one session
        session.run(pipeline_names=["training"])
        history = session.load_context().catalog.load("training_history")
    wall = time.perf_counter() - started
    run = mlflow.last_active_run()
    before_training = timer.started["model_training.train_model_node"] - started
    elapsed = before_training + history["seconds"].cumsum()
    reached = history.index[history["accuracy"] >= target]
    entry = {
        "target_accuracy": target,
        "reached": bool(len(reached)),
        "seconds": float(elapsed[reached[0]]) if len(reached) else None,
        "epoch": int(history.loc[reached[0], "epoch"]) if len(reached) else None,
        "seconds_before_training": before_training,
        "best_accuracy": float(history["accuracy"].max()),
        "epochs": len(history),
        "run_seconds": wall,
        "mlflow_run_id": run.info.run_id if run else None,
    }
    logger.info(
        "Time to %.0f%% validation accuracy: %s (full run %.1f s)",
        100 * target,
        f"{entry['seconds']:.1f} s, epoch {entry['epoch']}" if entry["reached"] else "not reached",
        wall,
    )
    return entry


# inference.runtime, each measured in turn on the same images: PyTorch, the ONNX graph, its int8 graph
# (where the training run kept none, onnx_int8 answers with float32: the log says so).
RUNTIMES = ("torch", "onnx", "onnx_int8")


def inference(
    project: KedroProject, source: str, archive, index, run_id: str | None, images: int, request_size: int
) -> dict[str, Any]:
    """Images/s of the ``inference`` pipeline on ``source`` on each of :data:`RUNTIMES`, with the model of
    the MLflow run ``run_id`` (the latest in the catalog if ``None``), and of that run's pyfunc model on
    ``images`` images on each: ``{runtime: {...}}``."""
    entry: dict[str, Any] = {}
    for runtime in RUNTIMES:
        extra = {"inference": {"source": source, "runtime": runtime}}
        if run_id is not None:  # the model of the time-to-accuracy run; otherwise the latest in the catalog
            extra["inference"]["mlflow_run_id"] = run_id
        started = time.perf_counter()
        with project.session(extra) as session:
            session.run(pipeline_names=["inference"])
        seconds = time.perf_counter() - started
        entry[runtime] = {"pipeline_images_per_second": len(index) / seconds, "pipeline_seconds": seconds}
        logger.info("inference pipeline on %s: %d images in %.1f s", runtime, len(index), seconds)
        if run_id is not None:
            paths = index["path"].tolist()[:images]
            entry[runtime].update(_pyfunc(run_id, archive, paths, request_size, runtime))
    return entry


def _pyfunc(run_id: str, archive, paths: list[str], request_size: int, runtime: str) -> dict[str, Any]:
    """Images/s of the MLflow pyfunc model of ``run_id`` on ``runtime`` on the base64 files ``paths``, in requests."""
    import mlflow
    import pandas as pd

    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model", model_config={"runtime": runtime})
    encoded = [base64.b64encode(archive.read(path)).decode("ascii") for path in paths]
    model.predict(pd.DataFrame({"image": encoded[:request_size]}))  # warm-up
    started = time.perf_counter()
    for start in range(0, len(encoded), request_size):
        model.predict(pd.DataFrame({"image": encoded[start : start + request_size]}))
    seconds = time.perf_counter() - started
    logger.info("pyfunc model on %s: %d images in %.2f s", runtime, len(encoded), seconds)
    return {
        "pyfunc_images_per_second": len(encoded) / seconds,
        "pyfunc_images": len(encoded),
        "pyfunc_request_size": request_size,
    }


def peak_memory_gb() -> dict[str, float]:
    """Peak resident memory of this process and of its (waited for) child processes, in GiB."""
    return {
        "this_process": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "child_processes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20,
    }
