"""The benchmark's results as a Markdown table and MLflow metrics; written as versioned
``data/08_reporting/benchmark.json`` and ``benchmark.md``, and logged to an MLflow run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from malaria_pipeline.benchmark.measure import ARCHITECTURES
from malaria_pipeline.framework import kedro_private

EXPERIMENT = "malaria-pipeline-benchmark"

Rows = list[tuple[str, str]]


def markdown(results: dict[str, Any]) -> str:
    """The results as a Markdown table."""
    rows = [*_setting_rows(results), *_training_rows(results.get("training", {})), *_run_rows(results)]
    return (
        "\n".join(["| measurement | result |", "| --- | --- |", *(f"| {a} | {b} |" for a, b in rows)]) + "\n"
    )


def _setting_rows(results: dict[str, Any]) -> Rows:
    s, t = results["settings"], results.get("training", {})
    rows = [
        ("device", results["machine"]["device"]),
        (
            "configuration",
            f"profile {s['profile']} (env {s['env']}), {s['image_size']} px, batch {s['batch_size']}, ResNet-9 width "
            f"{s['resnet9_width']}, bf16 {s['bf16']}, channels_last {s['channels_last']}",
        ),
    ]
    if "baseline" in t:
        rows.append(
            (
                "baseline input pipeline",
                f"{t['baseline']['input_pipeline']}, {t['baseline']['workers']} "
                f"workers; both augment: {t['baseline']['augmentation']}",
            )
        )
    ingestion = results["ingestion"]
    rows.append(
        (
            "ingestion (index + decode + pack)",
            f"{ingestion['images']:,} images in {ingestion['seconds']:.1f} s: {ingestion['images_per_second']:,.0f} images/s",
        )
    )
    return rows


def _training_rows(training: dict[str, Any]) -> Rows:
    rows = []
    for architecture in ARCHITECTURES:
        if architecture in training:
            a = training[architecture]
            each = ", ".join(
                f"{o:,.0f} / {b:,.0f}" for o, b in zip(a["rounds"]["ours"], a["rounds"]["baseline"])
            )
            rows.append(
                (
                    f"{architecture} training, ours / baseline (medians of {len(a['rounds']['ours'])} rounds "
                    f"of {a['steps']} steps)",
                    f"{a['ours_images_per_second']:,.0f} / {a['baseline_images_per_second']:,.0f} images/s: "
                    f"**{a['ours_to_baseline_ratio']:.2f}×** (rounds: {each})",
                )
            )
    return rows


def _run_rows(results: dict[str, Any]) -> Rows:
    rows = []
    if "time_to_accuracy" in results:
        tta = results["time_to_accuracy"]
        reached = (
            f"{tta['seconds']:.1f} s (epoch {tta['epoch']})"
            if tta["reached"]
            else f"not reached (best {tta['best_accuracy']:.4f})"
        )
        rows.append(
            (
                f"time to {tta['target_accuracy']:.0%} validation accuracy, full training run",
                f"{reached}; the whole run {tta['run_seconds']:.1f} s",
            )
        )
    inference = results.get("inference", {})
    runtimes = [name for name in inference if "pipeline_images_per_second" in inference[name]]
    if runtimes:
        rows.append(
            (
                f"inference pipeline, {' / '.join(runtimes)}",
                " / ".join(f"{inference[r]['pipeline_images_per_second']:,.0f}" for r in runtimes)
                + " images/s",
            )
        )
    if runtimes and "pyfunc_images_per_second" in inference[runtimes[0]]:
        rows.append(
            (
                f"pyfunc model, requests of {inference[runtimes[0]]['pyfunc_request_size']}, {' / '.join(runtimes)}",
                " / ".join(f"{inference[r]['pyfunc_images_per_second']:,.0f}" for r in runtimes)
                + " images/s",
            )
        )
    memory = results["peak_memory_gb"]
    rows.append(
        (
            "peak resident memory",
            f"{memory['this_process']:.2f} GB (child processes: {memory['child_processes']:.2f} GB)",
        )
    )
    return rows


def flatten(results: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of ``results`` as ``a.b.c`` MLflow metrics."""
    metrics = {}
    for key, value in results.items():
        if isinstance(value, dict):
            metrics.update(flatten(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics[f"{prefix}{key}"] = float(value)
    return metrics


def write(project: Path, results: dict[str, Any], table: str) -> tuple[Path, Path]:
    """Saves ``results`` as a new version of ``data/08_reporting/benchmark.json`` and ``table`` as one
    of ``benchmark.md``; returns the two files written."""
    from kedro.io.core import Version
    from kedro_datasets.json import JSONDataset
    from kedro_datasets.text import TextDataset

    version = Version(None, None)
    json_dataset = JSONDataset(
        filepath=str(project / "data/08_reporting/benchmark.json"), version=version, save_args={"indent": 2}
    )
    text_dataset = TextDataset(filepath=str(project / "data/08_reporting/benchmark.md"), version=version)
    json_dataset.save(results)
    text_dataset.save(table)
    return Path(kedro_private.load_path(json_dataset)), Path(kedro_private.load_path(text_dataset))


def log_to_mlflow(results: dict[str, Any], files: list[Path]) -> None:
    """A run of the experiment ``malaria-pipeline-benchmark``: the settings as parameters, the numbers
    of the measurements as metrics, the machine as tags, ``files`` as artifacts."""
    import mlflow

    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run(run_name="benchmark"):
        settings = results["settings"]
        mlflow.log_params({key: value for key, value in settings.items() if value not in ("", None)})
        mlflow.log_metrics(flatten({k: v for k, v in results.items() if k not in ("settings", "machine")}))
        mlflow.set_tags({f"machine.{key}": value for key, value in results["machine"].items()})
        for path in files:
            mlflow.log_artifact(str(path))


def report(project: Path, results: dict[str, Any]) -> None:
    """Writes the results (:func:`write`), logs them (:func:`log_to_mlflow`) and prints the table."""
    import mlflow

    table = markdown(results)
    json_path, md_path = write(project, results, table)
    log_to_mlflow(results, [json_path, md_path])
    print(table)
    print(
        f"Written {json_path} and {md_path}; logged to MLflow ({mlflow.get_tracking_uri()}, experiment "
        f"{EXPERIMENT})"
    )
