"""`python -m malaria_pipeline.benchmark` on a tiny setting, so that the command cannot rot."""

import json
import subprocess
import sys

import mlflow
import pytest
from kedro.framework.cli.project import run

from malaria_pipeline.benchmark.params import parse_params
from malaria_pipeline.benchmark.report import flatten, markdown


def kedro_run_params(text: str) -> dict:
    """``--params text`` as Kedro's own ``kedro run`` command parses it (its click option and callback)."""
    return run.make_context("run", ["--params", text]).params["params"]


def test_params_are_read_as_kedro_run_reads_them():
    assert parse_params(
        "training.epochs=1, training.max_lr=3e-3,ingestion.image_size=16,training.device=cpu"
    ) == {"training": {"epochs": 1, "max_lr": 0.003, "device": "cpu"}, "ingestion": {"image_size": 16}}


@pytest.mark.parametrize(
    "text",
    [
        "training.epochs=1,ingestion.image_size=16",
        "training.max_lr=3e-3, training.min_lr=1.5e-5",
        "training.bf16=true,training.channels_last=False,inference.mlflow_run_id=null",
        "ingestion.source=/a/b.zip,profile=cpu",
        "ingestion.source=s3://bucket/cells.zip,training.seed=010",
        "a.b=1,a.b.c=2,note=x=y",
        "",
    ],
)
def test_params_parse_as_kedros_own_cli_parses_them(text):
    assert parse_params(text) == kedro_run_params(text)


def test_params_without_key_or_value_are_refused():
    for text in ("training.epochs", "=1", "a=1,b"):
        with pytest.raises(SystemExit, match="is not key=value"):
            parse_params(text)


@pytest.mark.slow
def test_the_benchmark_command_measures_everything_and_reports_it(kedro_project, cell_folder):
    command = [
        sys.executable,
        "-m",
        "malaria_pipeline.benchmark",
        "--source",
        str(cell_folder),
        "--params",
        "profile=cpu,ingestion.image_size=16,training.width=4,training.epochs=2,training.batch_size=8,"
        "preprocessing.split.strategy=stratified",
        "--steps",
        "2",
        "--resnet18-steps",
        "1",
        "--warmup",
        "1",
        "--rounds",
        "2",
        "--baseline-workers",
        "1",
        "--pyfunc-images",
        "20",
        "--request-size",
        "8",
        "--target-accuracy",
        "0.0",
    ]
    # The command itself, not KedroProject.run: what is tested is the benchmark's command line and report.
    done = subprocess.run(
        command, cwd=kedro_project.root, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-4000:]

    (json_file,) = (kedro_project.root / "data/08_reporting/benchmark.json").glob("*/benchmark.json")
    (md_file,) = (kedro_project.root / "data/08_reporting/benchmark.md").glob("*/benchmark.md")
    results = json.loads(json_file.read_text())
    assert results["ingestion"]["images"] == 42 and results["ingestion"]["images_per_second"] > 0
    for architecture in ("resnet9", "resnet18"):
        measured = results["training"][architecture]
        assert measured["ours_images_per_second"] > 0 and measured["baseline_images_per_second"] > 0
        assert (
            measured["ours_to_baseline_ratio"]
            == measured["ours_images_per_second"] / measured["baseline_images_per_second"]
        )
        assert len(measured["rounds"]["ours"]) == len(measured["rounds"]["baseline"]) == 2
    ratios = [key for key in flatten(results) if "ratio" in key]
    assert ratios == ["training.resnet9.ours_to_baseline_ratio", "training.resnet18.ours_to_baseline_ratio"]
    tta = results["time_to_accuracy"]
    assert tta["reached"] and tta["epoch"] == 1 and 0 < tta["seconds"] < tta["run_seconds"]
    assert all(
        results["inference"][runtime]["pipeline_images_per_second"] > 0
        and results["inference"][runtime]["pyfunc_images"] == 20
        for runtime in ("torch", "onnx", "onnx_int8")
    )
    assert results["peak_memory_gb"]["this_process"] > 0
    assert md_file.read_text() == markdown(results) and "ours / baseline" in md_file.read_text()

    mlflow.set_tracking_uri(f"sqlite:///{kedro_project.root / 'mlflow.db'}")
    (run,) = mlflow.search_runs(experiment_names=["malaria-pipeline-benchmark"], output_format="list")
    assert (
        run.data.metrics["training.resnet9.ours_to_baseline_ratio"]
        == results["training"]["resnet9"]["ours_to_baseline_ratio"]
    )
    assert {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)} == {
        "benchmark.json",
        "benchmark.md",
    }


def test_help_describes_the_command():
    done = subprocess.run(
        [sys.executable, "-m", "malaria_pipeline.benchmark", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0 and "--source" in done.stdout and "--target-accuracy" in done.stdout
