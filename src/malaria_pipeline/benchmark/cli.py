"""The command line of the benchmark, and :func:`main`, which takes the measurements in order."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from malaria_pipeline import benchmark
from malaria_pipeline.benchmark import measure, report
from malaria_pipeline.benchmark.params import merge, parse_params


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m malaria_pipeline.benchmark",
        description=benchmark.__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--source", required=True, help="zip or folder of cell_images/<class>/*.png (as ingestion.source)"
    )
    parser.add_argument("--project", default=".", help="the Kedro project's root")
    parser.add_argument(
        "--env", default=None, help="Kedro configuration environment; default: Kedro's (local)"
    )
    parser.add_argument(
        "--params",
        default="",
        help='overrides as for kedro run, e.g. "training.epochs=1,ingestion.image_size=32"',
    )
    parser.add_argument(
        "--steps", type=int, default=50, help="timed training steps per input pipeline, resnet9"
    )
    parser.add_argument(
        "--resnet18-steps", type=int, default=5, help="timed training steps per input pipeline, resnet18"
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before each measurement")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="measurements of each input pipeline, taken in turns (ours, baseline, ours...); the median counts",
    )
    parser.add_argument(
        "--baseline-workers",
        type=int,
        default=None,
        help="DataLoader workers of the baseline; default: all cores",
    )
    parser.add_argument(
        "--target-accuracy", type=float, default=0.94, help="validation accuracy of the time-to-accuracy run"
    )
    parser.add_argument("--pyfunc-images", type=int, default=1024, help="images sent to the pyfunc model")
    parser.add_argument("--request-size", type=int, default=256, help="images per pyfunc request")
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=("resnet18", "time_to_accuracy"),
        help="leave a measurement out (repeatable)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark as the command line ``argv`` asks; returns the results, also written and logged."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from malaria_pipeline.ml.device import pick_device

    source = str(Path(args.source).expanduser().resolve()) if "://" not in args.source else args.source
    project = measure.KedroProject(
        Path(args.project).resolve(),
        args.env,
        merge(parse_params(args.params), {"ingestion": {"source": source}}),
    )
    params, archive = measure.configuration(project)
    device = pick_device(params["device"])
    results: dict[str, Any] = {
        "machine": measure.machine(device),
        "settings": _settings(args, source, params, device),
    }
    index, images, results["ingestion"] = measure.ingestion(archive, params["ingestion"])
    results["training"] = measure.training_throughput(archive, index, images, params, device, args)
    run_id = None
    if "time_to_accuracy" not in args.skip:
        results["time_to_accuracy"] = measure.time_to_accuracy(project, args.target_accuracy)
        run_id = results["time_to_accuracy"]["mlflow_run_id"]
    results["inference"] = measure.inference(
        project, source, archive, index, run_id, args.pyfunc_images, args.request_size
    )
    results["peak_memory_gb"] = measure.peak_memory_gb()
    report.report(project.root, results)
    return results


def _settings(args: argparse.Namespace, source: str, params: dict[str, Any], device) -> dict[str, Any]:
    """The settings of the measurements, as the results (and the MLflow run's parameters) record them."""
    from malaria_pipeline.framework.profiles import choose_profile
    from malaria_pipeline.ml.device import use_bf16

    training = params["training"]
    return {
        "source": source,
        "env": args.env or "local",
        "profile": choose_profile(params.get("profile", "auto"))[0],
        "params": args.params,
        "device": str(device),
        "bf16": use_bf16(training["bf16"], device),
        "channels_last": training["channels_last"],
        "image_size": params["ingestion"]["image_size"],
        "batch_size": training["batch_size"],
        "resnet9_width": training["width"],
        "steps": args.steps,
        "resnet18_steps": args.resnet18_steps,
        "warmup": args.warmup,
        "rounds": args.rounds,
    }
