"""batch_inference on Spark (this machine's Java): the registered champion scores a folder tree through
``mlflow.pyfunc.spark_udf`` with the answers of the ``inference`` pipeline; hostile files get error rows;
Spark's default Arrow batches (10,000 rows) pass; and a real standalone cluster (a master and a worker
started here on 127.0.0.1) runs the same pipeline. One JVM for the module (10 to 20 s to start)."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from tests.helpers import (
    bomb_png,
    free_port,
    image_bytes,
    log_rated_model,
    patients_folder,
    restored_mlflow_state,
    train_champion,
)

pytest.importorskip("pyspark")
if shutil.which("java") is None:
    pytest.skip("Spark needs Java: no java on the PATH", allow_module_level=True)

CHAMPION = "models:/malaria-cell-classifier@champion"
LOCAL = {
    "spark.master": "local[2]",
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
}


@pytest.fixture(scope="module")
def trained(module_kedro_project, tmp_path_factory):
    with restored_mlflow_state():
        train_champion(module_kedro_project, tmp_path_factory.mktemp("cells") / "cells")
        spark_settings(module_kedro_project, LOCAL)
        yield module_kedro_project
    from pyspark.sql import SparkSession

    if (active := SparkSession.getActiveSession()) is not None:
        active.stop()


def spark_settings(project, settings: dict) -> None:
    lines = [f'{key}: "{value}"' for key, value in settings.items()]
    (project.root / "conf" / "local" / "spark.yml").write_text("\n".join(lines) + "\n")


def new_cells(folder: Path) -> dict[str, bytes]:
    """Images in a tree of folders, any depth, PNG and JPEG with extensions in any case, beside files
    that are not images by name (skipped)."""
    files = {}
    for i in range(30):
        where = ["", "smear_a/", "smear_b/deeper/", "smear_c/"][i % 4]
        ext, fmt = [(".png", "PNG"), (".PNG", "PNG"), (".jpg", "JPEG"), (".Jpeg", "JPEG")][i % 4]
        name = f"{where}C{90 + i % 3}P9ThinF_IMG_2015_cell_{i}{ext}" if i % 5 else f"{where}plain_{i}{ext}"
        files[name] = image_bytes(30 + i % 20, 25 + i % 15, "L" if i % 3 else "RGB", fmt=fmt, seed=i)
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    (folder / "smear_a" / "notes.txt").write_text("not an image")
    (folder / "smear_a" / "scan.tif").write_bytes(b"II*\x00")
    return files


def batch_predictions(project, source: Path) -> pd.DataFrame:
    project.run("batch_inference", batch_inference={"source": str(source), "model_uri": CHAMPION})
    table = project.load("batch_predictions").toPandas()
    table["file"] = table["path"].str.split(f"{source.resolve().as_posix()}/", n=1).str[1]
    return table.set_index("file").sort_index()


def spark_workers_with_torch() -> tuple[int, int]:
    """Spark's Python workers (``pyspark.daemon`` and the workers it forks, kept for reuse), and how many
    of them have PyTorch's library loaded, read from ``/proc/<pid>/maps``."""
    workers = with_torch = 0
    for proc in Path("/proc").iterdir():
        try:
            if b"pyspark.daemon" not in (proc / "cmdline").read_bytes():
                continue
            workers += 1
            with_torch += "libtorch" in (proc / "maps").read_text()
        except (OSError, ValueError):
            continue
    return workers, with_torch


def test_batch_inference_gives_the_inference_pipelines_answers_and_a_summary_per_folder(trained, tmp_path):
    source = tmp_path / "cells"
    files = new_cells(source)
    # the torch path in the pipeline; Spark's workers on ONNX Runtime (inference.runtime: onnx, the default)
    trained.run("inference", inference={"source": str(source), "model_uri": CHAMPION, "runtime": "torch"})
    expected = trained.load("predictions").set_index("file").sort_index()
    assert trained.load("inference_summary")["runtime"] == "torch"
    batch = batch_predictions(trained, source)

    assert batch.index.tolist() == sorted(files) == expected.index.tolist()
    assert batch["error"].isna().all()
    assert batch["label"].tolist() == expected["label"].tolist()
    assert np.allclose(batch["p_parasitized"], expected["p_parasitized"], atol=1e-4, rtol=0)
    workers, with_torch = spark_workers_with_torch()
    assert workers >= 1 and with_torch == 0  # the workers answered without importing torch
    version = mlflow.MlflowClient().get_model_version_by_alias("malaria-cell-classifier", "champion")
    assert set(batch["model_name"]) == {"malaria-cell-classifier"} and set(batch["model_version"]) == {"1"}
    assert set(batch["model_run_id"]) == {version.run_id}
    # folders relative to the source, patients by the prefix before _IMG_
    folders = {name: name.rsplit("/", 1)[0] if "/" in name else "." for name in files}
    assert batch["folder"].to_dict() == folders
    patients = {
        name: name.rsplit("/", 1)[-1].split("_IMG_")[0] if "_IMG_" in name else None for name in files
    }
    assert batch["patient"].astype(object).where(batch["patient"].notna(), None).to_dict() == patients
    # Parquet partitioned by folder, one version per run
    # the version this run wrote: the latest (the module's other tests run the pipeline too)
    written = max((trained.root / "data" / "07_model_output" / "batch_predictions.parquet").iterdir())
    assert sorted(p.name for p in (written / "batch_predictions.parquet").glob("folder=*")) == [
        "folder=.",
        "folder=smear_a",
        "folder=smear_b%2Fdeeper",
        "folder=smear_c",
    ]
    summary = trained.load("batch_summary").set_index("folder")
    by_hand = expected.assign(folder=[folders[name] for name in expected.index]).groupby("folder")
    assert summary["cells"].to_dict() == by_hand.size().to_dict()
    assert (
        summary["parasitized"].to_dict()
        == by_hand["label"].agg(lambda s: int((s == "Parasitized").sum())).to_dict()
    )
    assert (summary["errors"] == 0).all()
    # the MLflow run of batch_inference lists both
    client = trained.mlflow_client()
    run = client.search_runs(
        [client.get_experiment_by_name("malaria-pipeline").experiment_id],
        "attributes.run_name = 'batch_inference'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )[0]
    assert Path(run.data.tags["batch_predictions"]) == written / "batch_predictions.parquet"
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == [
        "batch_patients.csv",
        "batch_summary.csv",
    ]


@pytest.mark.parametrize("group_by", ["prefix", "folder"])
def test_batch_patients_equal_the_inference_pipelines_patient_predictions(trained, tmp_path, group_by):
    # a model whose reference cells give a corrected fraction (the tiny champion's don't), cells of three
    # patients in two folders, one truncated file, and one file without a prefix at the top
    model = log_rated_model(trained, tmp_path)
    source = tmp_path / "patients"
    patients_folder(source)
    (source / "plain_1.png").write_bytes(image_bytes(16, 16, "L", seed=5))
    trained.run("inference", inference={"source": str(source), "mlflow_run_id": model, "group_by": group_by})
    expected = trained.load("patient_predictions")
    trained.run(
        "batch_inference",
        batch_inference={"source": str(source), "model_uri": f"runs:/{model}/model", "group_by": group_by},
    )
    batch = trained.load("batch_patients")
    names = {"prefix": ["(no prefix)", "PA", "PB", "PC"], "folder": [".", "Parasitized", "Uninfected"]}
    assert batch["patient"].tolist() == expected["patient"].tolist() == names[group_by]
    assert list(batch.columns) == list(expected.columns)
    assert batch["errors"].sum() == 1 and expected["fraction"].notna().sum() >= 3
    pd.testing.assert_frame_equal(batch, expected, check_exact=False, atol=1e-9, rtol=0)


def test_hostile_files_get_error_rows_and_the_other_files_their_answers(trained, tmp_path):
    source = tmp_path / "hostile"
    source.mkdir()
    good = {f"good_{i}.png": image_bytes(40, 40, "L", seed=i) for i in range(3)}
    hostile = {
        "empty.png": b"",
        "text.png": b"this is not an image\n",
        "truncated.png": image_bytes(50, 50)[:60],
        "bomb.png": bomb_png(),
    }
    for name, data in {**good, **hostile}.items():
        (source / name).write_bytes(data)
    batch = batch_predictions(trained, source)
    assert batch.loc[sorted(good), "error"].isna().all()
    assert batch.loc[sorted(good), "label"].isin(["Parasitized", "Uninfected"]).all()
    assert (
        batch.loc[sorted(hostile), "label"].isna().all()
        and batch.loc[sorted(hostile), "p_parasitized"].isna().all()
    )
    errors = batch["error"]
    assert errors["empty.png"] == "empty file (0 bytes)"
    assert errors["text.png"] == "not a PNG or JPEG image (the file starts with b'this is ')"
    assert errors["truncated.png"].startswith("truncated or corrupt image")
    assert errors["bomb.png"].startswith(
        "image of 20000 × 20000 pixels (400,000,000 pixels) is larger than inference.image_limits.max_pixels"
    )
    summary = trained.load("batch_summary")
    assert summary.to_dict("records") == [
        {"folder": ".", "cells": 7, "parasitized": int((batch["label"] == "Parasitized").sum()), "errors": 4}
    ]


def test_spark_udf_scores_more_rows_than_the_servers_max_rows_in_one_arrow_batch(trained):
    from malaria_pipeline.framework.spark import spark_session

    spark = spark_session(LOCAL)  # the module's session, or a new one when this test runs first
    images = [base64.b64encode(image_bytes(40, 40, "L", seed=i)).decode() for i in range(3)]
    rows = pd.DataFrame({"image": [images[i % 3] for i in range(5000)]})
    assert spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch") == "10000"
    predict = mlflow.pyfunc.spark_udf(
        spark, CHAMPION, env_manager="local", result_type="label string, p_parasitized double, error string"
    )
    answer = (
        spark.createDataFrame(rows).coalesce(1).select(predict("image").alias("a")).select("a.*").toPandas()
    )
    alone = mlflow.pyfunc.load_model(CHAMPION).predict(pd.DataFrame({"image": images}))
    assert len(answer) == 5000 and answer["error"].isna().all()
    assert np.allclose(
        answer["p_parasitized"], [alone["p_parasitized"][i % 3] for i in range(5000)], atol=1e-6
    )


@pytest.fixture
def standalone_cluster(tmp_path):
    """A Spark standalone master and one worker (1 core, 1 GB) on 127.0.0.1, stopped after the test."""
    from pyspark.find_spark_home import _find_spark_home

    spark_class = Path(_find_spark_home()) / "bin" / "spark-class"
    port = free_port()
    env = {
        **os.environ,
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_LOG_DIR": str(tmp_path),
        "SPARK_WORKER_DIR": str(tmp_path / "work"),
    }
    master_url = f"spark://127.0.0.1:{port}"
    processes = [
        subprocess.Popen(
            [
                str(spark_class),
                "org.apache.spark.deploy.master.Master",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--webui-port",
                str(free_port()),
            ],
            env=env,
            stdout=open(tmp_path / "master.log", "w"),
            stderr=subprocess.STDOUT,
        )
    ]
    try:
        _wait_for(tmp_path / "master.log", "I have been elected leader", processes[0])
        processes.append(
            subprocess.Popen(
                [
                    str(spark_class),
                    "org.apache.spark.deploy.worker.Worker",
                    master_url,
                    "--cores",
                    "1",
                    "--memory",
                    "1g",
                    "--webui-port",
                    str(free_port()),
                ],
                env=env,
                stdout=open(tmp_path / "worker.log", "w"),
                stderr=subprocess.STDOUT,
            )
        )
        _wait_for(tmp_path / "worker.log", "Successfully registered with master", processes[1])
        yield master_url, tmp_path
    finally:
        from pyspark.sql import SparkSession

        if (active := SparkSession.getActiveSession()) is not None:
            active.stop()
        for process in reversed(processes):
            process.terminate()
            process.wait(timeout=30)


def _wait_for(log: Path, line: str, process: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while line not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"Spark did not start ({line!r} not in {log}):\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def test_a_standalone_cluster_runs_the_same_pipeline(trained, standalone_cluster, tmp_path):
    master, logs = standalone_cluster
    source = tmp_path / "cells"
    files = new_cells(source)
    local = batch_predictions(trained, source)
    # the worker has 1 core: tasks of 1 core, whatever spark.yml asks
    spark_settings(
        trained, {**LOCAL, "spark.master": master, "spark.executor.memory": "512m", "spark.task.cpus": "1"}
    )
    try:
        remote = batch_predictions(trained, source)
    finally:
        spark_settings(trained, LOCAL)
    assert remote.index.tolist() == sorted(files)
    assert remote["label"].tolist() == local["label"].tolist()
    assert np.allclose(remote["p_parasitized"], local["p_parasitized"], atol=1e-5, rtol=0)
    # the worker ran the tasks: an executor of this application under its work folder
    assert list((logs / "work").glob("app-*/*/stderr")), "no executor ran on the worker"
