"""The MLflow model of a training run: loaded in a fresh process, and served over HTTP."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from malaria_pipeline.pipelines.inference.nodes import predict_encoded_images
from tests.helpers import (
    TINY,
    bomb_png,
    free_port,
    image_bytes,
    log_rated_model,
    patients_folder,
    restored_mlflow_state,
    train_champion,
)


@pytest.fixture(scope="module")
def trained(module_kedro_project, tmp_path_factory):
    with restored_mlflow_state():
        yield from _trained(module_kedro_project, tmp_path_factory)


def _trained(module_kedro_project, tmp_path_factory):
    cells = tmp_path_factory.mktemp("cells") / "cells"
    train_champion(module_kedro_project, cells)
    (run,) = mlflow.search_runs(
        experiment_names=["malaria-pipeline"], filter_string="run_name = 'training'", output_format="list"
    )
    module_kedro_project.run_id = run.info.run_id
    module_kedro_project.cells = cells
    yield module_kedro_project


def new_cells(folder: Path, count: int) -> list[Path]:
    """Images the model never saw: any size, grayscale or RGB, PNG or JPEG."""
    folder.mkdir(parents=True)
    paths = []
    for i in range(count):
        fmt = "JPEG" if i % 4 == 1 else "PNG"
        path = folder / f"new_{i:03d}.{'jpg' if fmt == 'JPEG' else 'png'}"
        path.write_bytes(
            image_bytes(35 + i % 30, 28 + i % 25, "L" if i % 3 == 0 else "RGB", fmt=fmt, seed=100 + i)
        )
        paths.append(path)
    return paths


def encoded(paths: list[Path]) -> list[str]:
    return [base64.b64encode(path.read_bytes()).decode("ascii") for path in paths]


def test_the_run_logs_a_model_with_its_signature_and_code(trained):
    info = mlflow.models.get_model_info(f"runs:/{trained.run_id}/model")
    assert info.signature.inputs.input_names() == ["image", "patient"]
    assert info.signature.params.to_dict() == [
        {"name": "per", "type": "string", "default": "cell", "shape": None},
        {"name": "batch_size", "type": "long", "default": 256, "shape": None},
    ]
    assert info.signature.outputs.input_names() == ["label", "p_parasitized", "error"]
    local = Path(mlflow.artifacts.download_artifacts(f"runs:/{trained.run_id}/model"))
    assert (local / "code" / "malaria_pipeline" / "pipelines" / "inference" / "nodes.py").exists()
    # one model bundle, the run's own version, not the folder of every version
    assert [p.name for p in (local / "artifacts").iterdir() if p.suffix == ".pt"] == ["model.pt"]
    assert (local / "artifacts" / "model.pt").is_file()


FRESH_PROCESS = """
import base64, json, sys
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
import malaria_pipeline
images = json.loads(sys.stdin.read())
answer = model.predict(pd.DataFrame({"image": images}))
print(json.dumps({"module": malaria_pipeline.__file__, "answer": answer.to_dict(orient="list")}))
"""


@pytest.mark.parametrize("where", ["a downloaded copy", "the registry's champion"])
def test_the_pyfunc_model_in_a_fresh_process_matches_the_inference_pipeline(trained, tmp_path, where):
    paths = new_cells(tmp_path / "new", 24)
    trained.run("inference", inference={"source": str(tmp_path / "new")})
    pipeline = trained.load("predictions").set_index("file").loc[[p.name for p in paths]]

    # a copy of the MLflow model outside the project, or models:/…@champion read from the project's
    # store, loaded from another working directory
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    if where == "a downloaded copy":
        model = mlflow.artifacts.download_artifacts(
            f"runs:/{trained.run_id}/model", dst_path=str(tmp_path / "download")
        )
    else:
        model, env["MLFLOW_TRACKING_URI"] = (
            "models:/malaria-cell-classifier@champion",
            f"sqlite:///{trained.root / 'mlflow.db'}",
        )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, model],
        input=json.dumps(encoded(paths)),
        capture_output=True,
        text=True,
        cwd=elsewhere,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert not result["module"].startswith(
        str(Path(__file__).parents[3] / "src")
    )  # the model's own copy of the code
    if where == "a downloaded copy":
        assert result["module"].startswith(str(tmp_path / "download"))
    answer = pd.DataFrame(result["answer"])
    assert answer["error"].isna().all()
    assert np.allclose(answer["p_parasitized"], pipeline["p_parasitized"], atol=1e-5, rtol=0)
    assert answer["label"].tolist() == pipeline["label"].tolist()


ON_A_RUNTIME = """
import json, sys
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1], model_config={"runtime": sys.argv[2]})
answer = model.predict(pd.DataFrame({"image": json.loads(sys.stdin.read())}))
torch = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision"))
print(json.dumps({"torch": torch[:3], "answer": answer.to_dict(orient="list")}))
"""


def test_on_onnx_runtime_the_served_model_answers_as_on_torch_without_importing_torch(trained, tmp_path):
    """The training run exported the model; the same MLflow model on each runtime, in a fresh process,
    and the inference pipeline on torch: the same labels, probabilities within 1e-4."""
    paths = new_cells(tmp_path / "new", 24)
    trained.run("inference", inference={"source": str(tmp_path / "new"), "runtime": "torch"})
    on_torch = trained.load("predictions").set_index("file").loc[[p.name for p in paths]]
    assert trained.load("inference_summary")["runtime"] == "torch"
    trained.run("inference", inference={"source": str(tmp_path / "new")})
    on_onnx = trained.load("predictions").set_index("file").loc[[p.name for p in paths]]
    assert trained.load("inference_summary")["runtime"] == "onnx"
    assert on_onnx["label"].tolist() == on_torch["label"].tolist()
    assert np.abs(on_onnx["p_parasitized"] - on_torch["p_parasitized"]).max() <= 1e-4

    local = mlflow.artifacts.download_artifacts(f"runs:/{trained.run_id}/model", dst_path=str(tmp_path / "m"))
    answers = {}
    for runtime in ("onnx", "torch"):
        done = subprocess.run(
            [sys.executable, "-c", ON_A_RUNTIME, local, runtime],
            input=json.dumps(encoded(paths)),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        answers[runtime] = json.loads(done.stdout.strip().splitlines()[-1])
    assert answers["onnx"]["torch"] == []  # ONNX Runtime alone: no torch module was imported
    assert answers["torch"]["torch"] != []  # (the check sees torch where it is imported)
    for runtime, result in answers.items():
        answer = pd.DataFrame(result["answer"])
        assert answer["label"].tolist() == on_torch["label"].tolist(), runtime
        assert np.abs(answer["p_parasitized"].to_numpy() - on_torch["p_parasitized"].to_numpy()).max() <= 1e-4


def loaded_libraries(pid: int) -> str:
    """The shared libraries mapped by a process and its children (the scoring server's workers)."""
    maps = []
    for proc in [Path(f"/proc/{pid}"), *Path(f"/proc/{pid}/task").glob("*/children")]:
        if proc.name == "children":
            for child in proc.read_text().split():
                maps.append(loaded_libraries(int(child)))
        else:
            maps.append((proc / "maps").read_text())
    return "\n".join(maps)


BOMB_SIZE = "row 0: image of 20000 × 20000 pixels (400,000,000 pixels) is larger than inference.image_limits.max_pixels"


def test_the_pyfunc_model_answers_the_good_row_beside_a_bomb(trained):
    model = mlflow.pyfunc.load_model(f"runs:/{trained.run_id}/model")
    bomb, good = (base64.b64encode(data).decode() for data in (bomb_png(), image_bytes(50, 50, "L")))
    answer = model.predict(pd.DataFrame({"image": [bomb, good]}))
    assert answer.loc[0, "error"].startswith(BOMB_SIZE) and answer.loc[0, "label"] is None
    assert answer.loc[1, "error"] is None and answer.loc[1, "label"] in ("Parasitized", "Uninfected")
    assert 0 <= answer.loc[1, "p_parasitized"] <= 1


def test_the_pyfunc_model_answers_more_rows_than_the_servers_max_rows_from_python(trained):
    # 5,000 rows (inference.max_rows is 4,096): three images over and over, and one broken row
    model = mlflow.pyfunc.load_model(f"runs:/{trained.run_id}/model")
    images = [base64.b64encode(image_bytes(40, 40, "L", seed=i)).decode() for i in range(3)]
    rows = [images[i % 3] for i in range(5000)]
    rows[4321] = "not base64!"
    answer = model.predict(pd.DataFrame({"image": rows}))
    alone = model.predict(pd.DataFrame({"image": images}))["p_parasitized"].astype(float).tolist()
    assert len(answer) == 5000 and answer["error"].notna().tolist() == [i == 4321 for i in range(5000)]
    good = answer.drop(index=4321)
    assert np.allclose(
        good["p_parasitized"].astype(float), [alone[i % 3] for i in good.index], atol=1e-6, rtol=0
    )


def test_each_training_run_registers_its_model_as_challenger_with_its_card_and_promote_says_why(trained):
    client = trained.mlflow_client()
    (found,) = client.search_model_versions("name = 'malaria-cell-classifier'")
    version = client.get_model_version("malaria-cell-classifier", found.version)  # search leaves aliases out
    assert version.run_id == trained.run_id and set(version.aliases) == {"challenger", "champion"}
    card = trained.load("model_card")
    assert version.description == card and card.startswith("# Model card: malaria-cell-classifier")
    assert "model_card.md" in {a.path for a in client.list_artifacts(trained.run_id)}
    report = trained.load("promotion_report")
    assert (
        report["promoted"]
        and report["champion"] == 1
        and report["reason"] == "no version held the champion alias"
    )
    assert report["challenger"]["source"] == f"the test subset of run {trained.run_id}"
    assert (
        report["challenger"]["scores"]["roc_auc"]
        == client.get_run(trained.run_id).data.metrics["test.roc_auc"]
    )


def test_inference_reads_the_model_of_an_mlflow_run_a_registered_version_or_a_given_version(
    trained, tmp_path
):
    new_cells(tmp_path / "new", 5)
    trained.run("inference", inference={"source": str(tmp_path / "new"), "mlflow_run_id": trained.run_id})
    summary = trained.load("inference_summary")
    assert summary["model"]["source"].startswith(f"runs:/{trained.run_id}/model/")
    assert summary["images"] == 5
    by_run = trained.load("predictions")

    trained.run(
        "inference",
        inference={"source": str(tmp_path / "new"), "model_uri": "models:/malaria-cell-classifier@champion"},
    )
    summary = trained.load("inference_summary")
    assert summary["model"]["source"].startswith("models:/malaria-cell-classifier@champion/")
    assert summary["model"]["registered_version"] == {
        "name": "malaria-cell-classifier",
        "version": 1,
        "run_id": trained.run_id,
    }
    pd.testing.assert_frame_equal(trained.load("predictions"), by_run)
    with pytest.raises(
        Exception,
        match=r"inference.model_uri: cannot read the model bundle of "
        r"models:/malaria-cell-classifier@nobody",
    ):
        trained.run(
            "inference",
            inference={
                "source": str(tmp_path / "new"),
                "model_uri": "models:/malaria-cell-classifier@nobody",
            },
        )

    (version,) = [p.name for p in (trained.root / "data/06_models/model.pt").iterdir()]
    trained.run("inference", inference={"source": str(tmp_path / "new"), "model_version": version})
    assert f"/{version}/" in trained.load("inference_summary")["model"]["source"]
    with pytest.raises(
        Exception, match=rf"Found no version '2000-01-01T00.00.00.000Z' of the model.*{version}"
    ):
        trained.run(
            "inference",
            inference={"source": str(tmp_path / "new"), "model_version": "2000-01-01T00.00.00.000Z"},
        )


def post(port: int, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


# The process of each server that serving() started, by port.
SERVER_PIDS: dict[int, int] = {}


@contextlib.contextmanager
def serving(model_uri: str, root: Path, tmp_path: Path):
    """``mlflow models serve`` of ``model_uri`` (from the store of the project at ``root``) on a free port
    of 127.0.0.1, answering ``/ping``; stopped on leaving."""
    port = free_port()
    # mlflow starts `uvicorn` from PATH: the one of this environment, as in an activated virtualenv
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    log_path = tmp_path / f"server-{port}.log"
    log = log_path.open("w")
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "models",
            "serve",
            "-m",
            model_uri,
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, log_path.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the server did not answer /ping in 180 s"
            time.sleep(0.5)
        SERVER_PIDS[port] = process.pid
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@pytest.fixture
def server(trained, tmp_path):
    with serving("models:/malaria-cell-classifier@champion", trained.root, tmp_path) as port:
        yield port


def test_the_served_model_answers_and_names_an_undecodable_row(server, trained, tmp_path):
    paths = new_cells(tmp_path / "new", 8)
    status, body = post(
        server, {"dataframe_split": {"columns": ["image"], "data": [[b] for b in encoded(paths)]}}
    )
    assert status == 200, body
    answers = body["predictions"]
    assert len(answers) == 8
    assert all(
        a["label"] in ("Parasitized", "Uninfected") and 0 <= a["p_parasitized"] <= 1 and a["error"] is None
        for a in answers
    )

    # one request of 256 cells of 50×50, answered on ONNX Runtime (the default) as the node answers them
    # with the run's model on torch (how fast is the benchmark's business: python -m malaria_pipeline.benchmark)
    cells = [base64.b64encode(image_bytes(50, 50, "L", seed=i)).decode() for i in range(256)]
    status, body = post(server, {"dataframe_split": {"columns": ["image"], "data": [[c] for c in cells]}})
    assert status == 200 and len(body["predictions"]) == 256
    served = pd.DataFrame(body["predictions"])
    expected = predict_encoded_images(
        pd.DataFrame({"image": cells}), trained.load("model"), trained.context().params["inference"]
    )
    assert served["error"].isna().all()
    assert np.allclose(served["p_parasitized"], expected["p_parasitized"].astype(float), atol=1e-4, rtol=0)
    assert served["label"].tolist() == expected["label"].tolist()
    libraries = loaded_libraries(SERVER_PIDS[server])
    assert "onnxruntime" in libraries and "libtorch" not in libraries  # the server never imported torch

    # an undecodable image: its row says why, the others are answered
    truncated = base64.b64encode(image_bytes(50, 50)[:60]).decode()
    rows = [[cells[0]], [truncated], [cells[1]], ["not base64!"]]
    status, body = post(server, {"dataframe_split": {"columns": ["image"], "data": rows}})
    assert status == 200, body
    first, broken, third, garbage = body["predictions"]
    assert broken["label"] is None and broken["p_parasitized"] is None
    assert broken["error"].startswith("row 1: truncated or corrupt image")
    assert garbage["error"].startswith("row 3: not base64-encoded")
    assert (
        first["error"] is None and third["error"] is None and third["label"] in ("Parasitized", "Uninfected")
    )

    # and it keeps serving
    status, body = post(server, {"dataframe_split": {"columns": ["image"], "data": [[cells[2]]]}})
    assert status == 200 and body["predictions"][0]["error"] is None


def test_the_served_model_answers_a_bomb_row_and_refuses_too_many_rows_without_a_stack_trace(server):
    bomb, good = (base64.b64encode(data).decode() for data in (bomb_png(), image_bytes(50, 50, "L")))
    status, body = post(server, {"dataframe_split": {"columns": ["image"], "data": [[bomb], [good]]}})
    assert status == 200, body
    first, second = body["predictions"]
    assert first["error"].startswith(BOMB_SIZE) and first["label"] is None and first["p_parasitized"] is None
    assert second["error"] is None and second["label"] in ("Parasitized", "Uninfected")

    status, body = post(server, {"dataframe_split": {"columns": ["image"], "data": [[good]] * 4097}})
    assert status == 400
    assert "The request has 4097 rows, more than inference.max_rows (4096)" in body["message"]
    assert "stack_trace" not in body and "Traceback" not in json.dumps(body)


@pytest.fixture
def rated_run(trained, tmp_path):
    return log_rated_model(trained, tmp_path)


def test_the_served_model_answers_per_patient_as_the_inference_pipeline_and_per_cell_without_params(
    rated_run, trained, tmp_path
):
    paths = patients_folder(tmp_path / "patients")
    trained.run("inference", inference={"source": str(tmp_path / "patients"), "mlflow_run_id": rated_run})
    expected = trained.load("patient_predictions").set_index("patient")
    assert sorted(expected.index) == ["PA", "PB", "PC"] and expected.loc["PB", "errors"] == 1
    assert expected["fraction"].notna().all() and expected["rates_from"].str.startswith("hand-made").all()
    rows = [[image, path.name.split("_IMG_")[0]] for image, path in zip(encoded(paths), paths)]
    split = {"columns": ["image", "patient"], "data": rows}
    with serving(f"runs:/{rated_run}/model", trained.root, tmp_path) as server:
        answer_per_patient_and_per_cell(server, split, expected)


def answer_per_patient_and_per_cell(server: int, split: dict, expected: pd.DataFrame) -> None:
    rows = split["data"]

    status, body = post(server, {"dataframe_split": split, "params": {"per": "patient"}})
    assert status == 200, body
    served = pd.DataFrame(body["predictions"]).set_index("patient")
    assert list(served.columns) == list(expected.columns)
    for column in ("cells", "parasitized", "errors", "call", "rates_from", "method"):
        assert served[column].tolist() == expected[column].tolist(), column
    for column in ("fraction", "fraction_low", "fraction_high", "healthy_chance", "observed"):
        assert np.allclose(served[column].astype(float), expected[column], atol=1e-9, rtol=0), column

    # without params: per cell, as before (one row per image, the truncated one with its error)
    status, body = post(server, {"dataframe_split": split})
    assert status == 200 and len(body["predictions"]) == len(rows)
    cells = pd.DataFrame(body["predictions"])
    assert list(cells.columns) == ["label", "p_parasitized", "error"]
    assert cells["error"].notna().sum() == 1

    # without a patient column, every row is one patient
    status, body = post(
        server,
        {
            "dataframe_split": {"columns": ["image"], "data": [[r[0]] for r in rows]},
            "params": {"per": "patient"},
        },
    )
    assert status == 200, body
    (one,) = body["predictions"]
    assert one["patient"] == "(all rows)" and one["cells"] == expected["cells"].sum() and one["errors"] == 1

    status, body = post(server, {"dataframe_split": split, "params": {"per": "smear"}})
    assert status == 400
    assert "params per is 'smear': give one of cell, patient" in body["message"]

    # another batch size gives the same answers (Spark's workers ask for 64); 0 rows at once is refused
    status, body = post(server, {"dataframe_split": split, "params": {"batch_size": 7}})
    assert status == 200
    in_sevens = pd.DataFrame(body["predictions"])
    assert in_sevens["label"].tolist() == cells["label"].tolist()
    assert np.allclose(
        in_sevens["p_parasitized"].astype(float),
        cells["p_parasitized"].astype(float),
        atol=1e-6,
        equal_nan=True,
    )
    status, body = post(server, {"dataframe_split": split, "params": {"batch_size": 0}})
    assert status == 400 and "params batch_size is 0: give a number of rows" in body["message"]


@pytest.mark.slow
def test_a_second_run_is_the_new_challenger_and_promote_refuses_it_when_worse(kedro_project, cell_folder):
    # A project of its own: its second run and promotions would change what the module's other tests read.
    # Its store is the registry too: the module's `trained` fixture may have pointed MLflow's registry at
    # the module's project (the autouse fixture puts it back after this test).
    trained = kedro_project
    store = f"sqlite:///{kedro_project.root / 'mlflow.db'}"
    mlflow.set_tracking_uri(store)
    mlflow.set_registry_uri(store)
    trained.run("training", ingestion={"source": str(cell_folder), "image_size": 16}, **TINY)
    trained.run("promote")
    trained.run(
        "training",
        ingestion={"source": str(cell_folder), "image_size": 16},
        **{**TINY, "training": {**TINY["training"], "seed": 7}},
    )
    client = trained.mlflow_client()
    assert int(client.get_model_version_by_alias("malaria-cell-classifier", "challenger").version) == 2
    # a margin of -1 asks the challenger to beat the champion by 1 on each metric: it cannot
    trained.run("promote", promote={"margins": {"sensitivity": -1.0, "roc_auc": -1.0}})
    report = trained.load("promotion_report")
    assert not report["promoted"] and report["champion"] == 1
    assert report["reason"].startswith(
        "the challenger is worse than the champion beyond the margin on sensitivity, roc_auc"
    )
    assert int(client.get_model_version_by_alias("malaria-cell-classifier", "champion").version) == 1
    trained.run("promote")  # with the default margins: either way, the report says which and why
    report = trained.load("promotion_report")
    assert report["champion"] == (2 if report["promoted"] else 1)
    assert (
        int(client.get_model_version_by_alias("malaria-cell-classifier", "champion").version)
        == report["champion"]
    )
