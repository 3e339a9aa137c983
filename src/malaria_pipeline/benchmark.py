"""Benchmark of the pipeline against the reference notebooks' input pipeline, in one process.

    python -m malaria_pipeline.benchmark --source ../shared/data/malaria_cells_50px.zip

On the same machine and images it measures, in order:

1. ingestion: the ingestion node (index, decode, pack) on ``--source``: seconds and images/s;
2. training images/s of ``resnet9`` and ``resnet18``, through our input pipeline and through the
   reference's (``ImageFolder`` over the extracted PNGs, per-image PIL transforms, ``DataLoader``
   workers), same network, batch size, image size and speed switches, and the ratio of the two;
3. time to accuracy: a full ``training`` run (ingestion included) in a KedroSession, and the wall
   time until the end of the first epoch whose validation accuracy reaches ``--target-accuracy``;
4. inference images/s of the ``inference`` pipeline on ``--source``, and of that run's MLflow pyfunc
   model on base64 files in requests of ``--request-size``;
5. peak resident memory of this process and of its child processes.

The configuration is the project's (the hardware profile that ``profile: auto`` picks: ``cpu`` on a
machine without CUDA), with ``--params`` on top, as ``kedro run`` would use it. The results go to ``data/08_reporting/benchmark.md``
and ``benchmark.json`` (versioned, as every dataset of the project) and to an MLflow run of the
experiment ``malaria-pipeline-benchmark``.
"""

from __future__ import annotations

import argparse
import base64
import logging
import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from kedro.framework.hooks import hook_impl

from malaria_pipeline import kedro_private

logger = logging.getLogger("malaria_pipeline.benchmark")

ARCHITECTURES = ("resnet9", "resnet18")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m malaria_pipeline.benchmark",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--source", required=True, help="zip or folder of cell_images/<class>/*.png (as ingestion.source)")
    parser.add_argument("--project", default=".", help="the Kedro project's root")
    parser.add_argument("--env", default=None, help="Kedro configuration environment; default: Kedro's (local)")
    parser.add_argument("--params", default="", help='overrides as for kedro run, e.g. "training.epochs=1,ingestion.image_size=32"')
    parser.add_argument("--steps", type=int, default=50, help="timed training steps per input pipeline, resnet9")
    parser.add_argument("--resnet18-steps", type=int, default=5, help="timed training steps per input pipeline, resnet18")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before each measurement")
    parser.add_argument("--rounds", type=int, default=3,
                        help="measurements of each input pipeline, taken in turns (ours, baseline, ours...); the median counts")
    parser.add_argument("--baseline-workers", type=int, default=None, help="DataLoader workers of the baseline; default: all cores")
    parser.add_argument("--target-accuracy", type=float, default=0.94, help="validation accuracy of the time-to-accuracy run")
    parser.add_argument("--pyfunc-images", type=int, default=1024, help="images sent to the pyfunc model")
    parser.add_argument("--request-size", type=int, default=256, help="images per pyfunc request")
    parser.add_argument("--skip", action="append", default=[], choices=("resnet18", "time_to_accuracy"),
                        help="leave a measurement out (repeatable)")
    return parser.parse_args(argv)


def parse_params(text: str) -> dict[str, Any]:
    """``a.b=1,c=x`` → ``{"a": {"b": 1}, "c": "x"}``: numbers as numbers, the rest as YAML (true, null...)."""
    params: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--params: {item!r} is not key=value")
        *parents, leaf = key.strip().split(".")
        node = params
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = _value(value.strip())
    return params


def _value(text: str) -> Any:
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return yaml.safe_load(text)


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = merge(merged.get(key, {}), value) if isinstance(value, dict) else value
    return merged


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    project = Path(args.project).resolve()
    bootstrap_project(project)
    env = args.env
    source = str(Path(args.source).expanduser().resolve()) if "://" not in args.source else args.source
    runtime_params = merge(parse_params(args.params), {"ingestion": {"source": source}})
    with KedroSession.create(project_path=project, env=env, runtime_params=runtime_params) as session:
        context = session.load_context()
        params, catalog = context.params, context.catalog
        archive = catalog.load("cell_images")

    from malaria_pipeline.ml.device import pick_device, use_bf16
    from malaria_pipeline.profiles import choose_profile

    device = pick_device(params["device"])
    results: dict[str, Any] = {
        "machine": _machine(device),
        "settings": {
            "source": source, "env": env or "local", "profile": choose_profile(params.get("profile", "auto"))[0],
            "params": args.params, "device": str(device),
            "bf16": use_bf16(params["training"]["bf16"], device),
            "channels_last": params["training"]["channels_last"], "image_size": params["ingestion"]["image_size"],
            "batch_size": params["training"]["batch_size"], "resnet9_width": params["training"]["width"],
            "steps": args.steps, "resnet18_steps": args.resnet18_steps, "warmup": args.warmup, "rounds": args.rounds,
        },
    }
    index, images = _ingestion(archive, params, results)
    _training_throughput(archive, index, images, params, device, args, results)
    run_id = None
    if "time_to_accuracy" not in args.skip:
        run_id = _time_to_accuracy(project, env, runtime_params, args.target_accuracy, results)
    _inference(project, env, runtime_params, archive, index, run_id, args, results)
    results["peak_memory_gb"] = {
        "this_process": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "child_processes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20,
    }
    _report(project, results)
    return results


def _machine(device) -> dict[str, Any]:
    import torch

    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")] if cpuinfo.exists() else []
    cpu = names[0] if names else platform.processor() or platform.machine()
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu, "cpu": cpu,
            "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()}


def _ingestion(archive, params, results):
    from malaria_pipeline.pipelines.ingestion.nodes import index_images

    started = time.perf_counter()
    index, images, report = index_images(archive, params["ingestion"])
    seconds = time.perf_counter() - started
    results["ingestion"] = {"images": len(index), "files": report["files"], "skipped": len(report["skipped"]),
                            "seconds": seconds, "images_per_second": len(index) / seconds}
    logger.info("Ingestion: %d images in %.1f s, %.0f images/s", len(index), seconds, len(index) / seconds)
    return index, images


def _training_throughput(archive, index, images, params, device, args, results) -> None:
    import torch

    from malaria_pipeline.ml.models import CellClassifier, build_network
    from malaria_pipeline.ml.normalization import channel_mean_std
    from malaria_pipeline.ml.throughput import baseline_loader, measure_baseline, measure_ours
    from malaria_pipeline.ml.train import TrainConfig
    from malaria_pipeline.tensors import class_codes, class_names_of

    config = TrainConfig.from_params(params["training"])
    size = params["ingestion"]["image_size"]
    class_names = class_names_of(index)
    labels = class_codes(index["label"], class_names)
    mean, std = channel_mean_std(images)
    workers = args.baseline_workers if args.baseline_workers is not None else os.cpu_count()

    with tempfile.TemporaryDirectory(prefix="malaria-benchmark-") as folder:
        archive_files = _extract(archive, index, Path(folder))
        loader = baseline_loader(archive_files, size, config, workers, pin_memory=device.type == "cuda")
        results["training"] = {"baseline": {"input_pipeline": "ImageFolder + PIL transforms + DataLoader",
                                            "workers": workers, "augmentation": _augmentation(config)}}
        for architecture in ARCHITECTURES:
            if architecture in args.skip:
                continue
            steps = args.steps if architecture == "resnet9" else args.resnet18_steps
            measured = {"ours": [], "baseline": []}
            for _ in range(args.rounds):  # in turns, so that a slower or faster spell of the machine hits both
                for name, rates in measured.items():
                    torch.manual_seed(config.seed)
                    network = build_network(architecture, num_classes=len(class_names), image_size=size,
                                            **config.network_args)
                    classifier = CellClassifier(network, mean, std, class_names, size)
                    if name == "ours":
                        result = measure_ours(classifier, images, labels, config, device, steps, args.warmup)
                    else:
                        result = measure_baseline(classifier, loader, config, device, steps, args.warmup)
                    rates.append(result.images_per_second)
                    logger.info("%s, %s input pipeline: %.0f training images/s", architecture, name,
                                result.images_per_second)
            ours, baseline = statistics.median(measured["ours"]), statistics.median(measured["baseline"])
            results["training"][architecture] = {
                "ours_images_per_second": ours,
                "baseline_images_per_second": baseline,
                "ours_to_baseline_ratio": ours / baseline,
                "steps": steps,
                "rounds": {name: rates for name, rates in measured.items()},
            }
            logger.info("%s: ours / baseline = %.2f (medians of %d rounds)", architecture, ours / baseline, args.rounds)
        del loader


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


def _time_to_accuracy(project, env, runtime_params, target, results) -> str | None:
    import mlflow
    from kedro.framework.session import KedroSession

    timer = _NodeTimer()
    started = time.perf_counter()
    with KedroSession.create(project_path=project, env=env, runtime_params=runtime_params) as session:
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
    results["time_to_accuracy"] = entry
    logger.info("Time to %.0f%% validation accuracy: %s (full run %.1f s)", 100 * target,
                f"{entry['seconds']:.1f} s, epoch {entry['epoch']}" if entry["reached"] else "not reached", wall)
    return entry["mlflow_run_id"]


def _inference(project, env, runtime_params, archive, index, run_id, args, results) -> None:
    import mlflow
    import pandas as pd
    from kedro.framework.session import KedroSession

    source = results["settings"]["source"]
    params = merge(runtime_params, {"inference": {"source": source}})
    results["inference"] = {}
    if run_id is not None:  # the model of the time-to-accuracy run; otherwise the latest in the catalog
        params = merge(params, {"inference": {"mlflow_run_id": run_id}})
    started = time.perf_counter()
    with KedroSession.create(project_path=project, env=env, runtime_params=params) as session:
        session.run(pipeline_names=["inference"])
    seconds = time.perf_counter() - started
    results["inference"]["pipeline_images_per_second"] = len(index) / seconds
    results["inference"]["pipeline_seconds"] = seconds
    logger.info("inference pipeline: %d images in %.1f s", len(index), seconds)
    if run_id is None:
        return
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    paths = index["path"].tolist()[: args.pyfunc_images]
    encoded = [base64.b64encode(archive.read(path)).decode("ascii") for path in paths]
    model.predict(pd.DataFrame({"image": encoded[: args.request_size]}))  # warm-up
    started = time.perf_counter()
    for start in range(0, len(encoded), args.request_size):
        model.predict(pd.DataFrame({"image": encoded[start : start + args.request_size]}))
    seconds = time.perf_counter() - started
    results["inference"].update({"pyfunc_images_per_second": len(encoded) / seconds, "pyfunc_images": len(encoded),
                                 "pyfunc_request_size": args.request_size})
    logger.info("pyfunc model: %d images in %.2f s", len(encoded), seconds)


def markdown(results: dict[str, Any]) -> str:
    """The results as a Markdown table."""
    s, t = results["settings"], results.get("training", {})
    rows = [("device", results["machine"]["device"]),
            ("configuration", f"profile {s['profile']} (env {s['env']}), {s['image_size']} px, batch {s['batch_size']}, ResNet-9 width "
                              f"{s['resnet9_width']}, bf16 {s['bf16']}, channels_last {s['channels_last']}")]
    if "baseline" in t:
        rows.append(("baseline input pipeline", f"{t['baseline']['input_pipeline']}, {t['baseline']['workers']} "
                                                f"workers; both augment: {t['baseline']['augmentation']}"))
    ingestion = results["ingestion"]
    rows.append(("ingestion (index + decode + pack)",
                 f"{ingestion['images']:,} images in {ingestion['seconds']:.1f} s: {ingestion['images_per_second']:,.0f} images/s"))
    for architecture in ARCHITECTURES:
        if architecture in t:
            a = t[architecture]
            each = ", ".join(f"{o:,.0f} / {b:,.0f}" for o, b in zip(a["rounds"]["ours"], a["rounds"]["baseline"]))
            rows.append((f"{architecture} training, ours / baseline (medians of {len(a['rounds']['ours'])} rounds "
                         f"of {a['steps']} steps)",
                         f"{a['ours_images_per_second']:,.0f} / {a['baseline_images_per_second']:,.0f} images/s: "
                         f"**{a['ours_to_baseline_ratio']:.2f}×** (rounds: {each})"))
    if "time_to_accuracy" in results:
        tta = results["time_to_accuracy"]
        reached = (f"{tta['seconds']:.1f} s (epoch {tta['epoch']})" if tta["reached"]
                   else f"not reached (best {tta['best_accuracy']:.4f})")
        rows.append((f"time to {tta['target_accuracy']:.0%} validation accuracy, full training run",
                     f"{reached}; the whole run {tta['run_seconds']:.1f} s"))
    inference = results.get("inference", {})
    if "pipeline_images_per_second" in inference:
        rows.append(("inference pipeline", f"{inference['pipeline_images_per_second']:,.0f} images/s"))
    if "pyfunc_images_per_second" in inference:
        rows.append((f"pyfunc model, requests of {inference['pyfunc_request_size']}",
                     f"{inference['pyfunc_images_per_second']:,.0f} images/s"))
    memory = results["peak_memory_gb"]
    rows.append(("peak resident memory", f"{memory['this_process']:.2f} GB (child processes: {memory['child_processes']:.2f} GB)"))
    return "\n".join(["| measurement | result |", "| --- | --- |", *(f"| {a} | {b} |" for a, b in rows)]) + "\n"


def flatten(results: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of ``results`` as ``a.b.c`` MLflow metrics."""
    metrics = {}
    for key, value in results.items():
        if isinstance(value, dict):
            metrics.update(flatten(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics[f"{prefix}{key}"] = float(value)
    return metrics


def _report(project: Path, results: dict[str, Any]) -> None:
    import mlflow
    from kedro.io.core import Version
    from kedro_datasets.json import JSONDataset
    from kedro_datasets.text import TextDataset

    version = Version(None, None)
    json_dataset = JSONDataset(filepath=str(project / "data/08_reporting/benchmark.json"), version=version,
                               save_args={"indent": 2})
    text_dataset = TextDataset(filepath=str(project / "data/08_reporting/benchmark.md"), version=version)
    table = markdown(results)
    json_dataset.save(results)
    text_dataset.save(table)
    json_path, md_path = kedro_private.load_path(json_dataset), kedro_private.load_path(text_dataset)

    mlflow.set_experiment("malaria-pipeline-benchmark")
    with mlflow.start_run(run_name="benchmark"):
        settings = results["settings"]
        mlflow.log_params({key: value for key, value in settings.items() if value not in ("", None)})
        mlflow.log_metrics(flatten({k: v for k, v in results.items() if k not in ("settings", "machine")}))
        mlflow.set_tags({f"machine.{key}": value for key, value in results["machine"].items()})
        mlflow.log_artifact(str(json_path))
        mlflow.log_artifact(str(md_path))
    print(table)
    print(f"Written {json_path} and {md_path}; logged to MLflow ({mlflow.get_tracking_uri()}, experiment "
          "malaria-pipeline-benchmark)")


if __name__ == "__main__":  # the guard matters: ingestion's decoding workers are spawned
    main()
