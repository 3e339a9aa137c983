"""The project as a user runs it: a KedroSession over conf/, in a fresh folder."""

from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
import yaml

from malaria_pipeline.ml import load_model
from malaria_pipeline.ml.checkpoint import CheckpointStore
from tests.helpers import PROJECT_ROOT


def test_every_dataset_the_pipelines_write_is_versioned():
    from malaria_pipeline.pipeline_registry import register_pipelines

    catalog = yaml.safe_load((PROJECT_ROOT / "conf" / "base" / "catalog.yml").read_text())
    outputs = set().union(*(pipeline.all_outputs() for pipeline in register_pipelines().values()))
    # a file that a pipeline writes (a "{name}" entry is a factory of outputs such as confusion_matrix_plot)
    written = {
        name: entry
        for name, entry in catalog.items()
        if "filepath" in entry and (name in outputs or "{" in name)
    }
    assert {
        "image_index",
        "image_tensors",
        "ingestion_report",
        "data_split",
        "normalization_stats",
        "model",
        "training_history",
        "lr_finder_result",
        "evaluation_predictions",
        "evaluation_metrics",
        "evaluation_patients",
        "patient_predictions",
        "cv_patients",
        "{name}_plot",
        "model_card",
        "promotion_report",
        "explanation_overlays",
    } <= written.keys()
    assert [name for name, entry in written.items() if entry.get("versioned") is not True] == []


def test_telemetry_consent_is_off():
    assert yaml.safe_load((PROJECT_ROOT / ".telemetry").read_text()) == {"consent": False}


@pytest.mark.slow
def test_two_runs_leave_two_versions_of_every_dataset(kedro_project, cell_folder):
    params = {
        "ingestion": {"source": str(cell_folder), "image_size": 16},
        "preprocessing": {
            "split": {"folds": 6, "fractions": {"train": 4 / 6, "validation": 1 / 6, "test": 1 / 6}}
        },
        "training": {"width": 4, "epochs": 1, "batch_size": 8},
    }
    kedro_project.run("training", **params)
    kedro_project.run("training", **params)
    data = kedro_project.root / "data"
    for path in (
        "02_intermediate/image_index.parquet",
        "02_intermediate/image_tensors.pt",
        "08_reporting/ingestion_report.json",
        "05_model_input/data_split.parquet",
        "05_model_input/normalization_stats.json",
        "06_models/model.pt",
        "08_reporting/training_history.csv",
        "07_model_output/evaluation_predictions.parquet",
        "08_reporting/evaluation_metrics.json",
        "08_reporting/confusion_matrix.png",
        "08_reporting/roc_curve.png",
        "08_reporting/training_curves.png",
        "08_reporting/top_losses.png",
        "08_reporting/sample_images.png",
        "08_reporting/explanations.png",
        "08_reporting/model_card.md",
        "08_reporting/evaluation_patients.csv",
    ):
        versions = sorted(p.name for p in (data / path).iterdir())
        assert len(versions) == 2, (path, versions)
    mlflow.set_tracking_uri(f"sqlite:///{kedro_project.root / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["malaria-pipeline"], output_format="list")
    assert [run.info.status for run in runs] == ["FINISHED", "FINISHED"]
    report = kedro_project.load("ingestion_report")
    assert report["source"] == str(cell_folder.resolve()) and report["images"] == 42


def test_each_run_is_one_finished_mlflow_run_and_none_stays_open(kedro_project, cell_folder):
    params = {"ingestion": {"source": str(cell_folder), "image_size": 16}}
    kedro_project.run("ingestion", **params)
    kedro_project.run("ingestion", **params)  # a second session in the same process, as in a notebook
    assert mlflow.active_run() is None
    mlflow.set_tracking_uri(f"sqlite:///{kedro_project.root / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["malaria-pipeline"], output_format="list")
    assert [run.info.status for run in runs] == ["FINISHED", "FINISHED"]
    assert {run.data.params["ingestion.source"] for run in runs} == {str(cell_folder)}


def test_an_interrupted_training_run_resumes_with_training_resume(kedro_project, cell_folder, monkeypatch):
    params = {
        "ingestion": {"source": str(cell_folder), "image_size": 16},
        "preprocessing": {
            "split": {"folds": 6, "fractions": {"train": 4 / 6, "validation": 1 / 6, "test": 1 / 6}}
        },
        "training": {"width": 4, "epochs": 3, "batch_size": 8},
    }
    save = CheckpointStore.save

    def save_then_interrupt(store, state):  # Ctrl-C right after epoch 1 is checkpointed
        save(store, state)
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(CheckpointStore, "save", save_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            kedro_project.run("training", **params)
    assert not (kedro_project.root / "data" / "08_reporting" / "training_history.csv").exists()

    params["training"]["resume"] = True
    kedro_project.run("model_training", **params)
    history = kedro_project.load("training_history")
    assert history["epoch"].tolist() == [1, 2, 3]
    # The interrupted session's MLflow run was ended (KILLED), not reused by the resumed one.
    mlflow.set_tracking_uri(f"sqlite:///{kedro_project.root / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["malaria-pipeline"], output_format="list")
    assert sorted(run.info.status for run in runs) == ["FINISHED", "KILLED"]
    assert mlflow.active_run() is None
    # The resumed run names the run it continues, and holds the whole history: epoch 1 from the checkpoint.
    (resumed,) = [run for run in runs if run.info.status == "FINISHED"]
    (killed,) = [run for run in runs if run.info.status == "KILLED"]
    assert resumed.data.tags["resumed_from_run_id"] == killed.info.run_id
    client = mlflow.MlflowClient()
    assert [m.step for m in client.get_metric_history(resumed.info.run_id, "valid_loss")] == [1, 2, 3]


def test_a_training_run_is_tracked_in_mlflow_with_history_metrics_figures_and_model(
    kedro_project, cell_folder
):
    # stratified: both classes in every subset, so that every metric is defined
    params = {
        "ingestion": {"source": str(cell_folder), "image_size": 16},
        "preprocessing": {
            "split": {"strategy": "stratified", "fractions": {"train": 0.5, "validation": 0.25, "test": 0.25}}
        },
        "training": {"width": 4, "epochs": 3, "batch_size": 8},
    }
    kedro_project.run("training", **params)
    mlflow.set_tracking_uri(f"sqlite:///{kedro_project.root / 'mlflow.db'}")
    (run,) = mlflow.search_runs(experiment_names=["malaria-pipeline"], output_format="list")
    client = mlflow.MlflowClient()
    assert run.info.status == "FINISHED"
    assert run.data.params["training.architecture"] == "resnet9" and run.data.params["training.epochs"] == "3"
    assert run.data.params["preprocessing.split.strategy"] == "stratified"
    for name in ("train_loss", "valid_loss", "accuracy"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, name)] == [1, 2, 3], name
    for subset in ("validation", "test"):
        for metric in (
            "accuracy",
            "sensitivity",
            "specificity",
            "precision",
            "f1",
            "roc_auc",
            "average_precision",
        ):
            assert 0 <= run.data.metrics[f"{subset}.{metric}"] <= 1
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    figures = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert {
        "evaluation_metrics.json",
        "evaluation_patients.csv",
        "model_card.md",
        "training_history.csv",
        "figures",
    } <= artifacts  # the model is an MLflow 3 LoggedModel
    # the test subset's patient table, in the run and in its model card
    patients = pd.read_csv(client.download_artifacts(run.info.run_id, "evaluation_patients.csv"))
    test_patients = patients[patients["subset"] == "test"]
    assert len(test_patients) and set(test_patients["call"]) <= {"positive", "negative", "review"}
    card = Path(client.download_artifacts(run.info.run_id, "model_card.md")).read_text()
    for patient in test_patients["patient"]:
        assert f"| {patient} | " in card.split("## Patients")[1]
    assert "test.patients.review_share" in run.data.metrics
    assert figures == {
        f"figures/{f}.png"
        for f in (
            "confusion_matrix",
            "roc_curve",
            "training_curves",
            "top_losses",
            "sample_images",
            "reliability_diagram",
            "explanations",
            "evaluation_patients",
        )
    }
    for subset in ("validation", "test"):
        assert (
            0 <= run.data.metrics[f"{subset}.ece"] <= 1
            and 0 <= run.data.metrics[f"{subset}.ece_uncalibrated"] <= 1
        )
    assert run.data.metrics["training.temperature"] == kedro_project.load("model")["temperature"]

    model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/classifier")
    images = kedro_project.load("image_tensors")[:6]
    with torch.no_grad():
        logits = model(images)
    assert logits.shape == (6, 2)
    # the logits as trained; the module carries the temperature that every prediction divides them by
    expected = load_model(kedro_project.load("model")).predict_proba(images)
    assert torch.allclose((logits / model.temperature).softmax(dim=1), expected, atol=1e-5)
    assert torch.allclose(model.predict_proba(images), expected, atol=1e-5)


@pytest.mark.slow  # kedro viz build of the whole project (about 12 s)
def test_kedro_viz_build_works_offline_and_shows_every_training_node_in_the_group_of_its_stage(kedro_project):
    import json
    import subprocess
    import sys

    from malaria_pipeline.pipeline_registry import register_pipelines

    subprocess.run(
        [sys.executable, "-m", "kedro", "viz", "build"],
        cwd=kedro_project.root,
        check=True,
        capture_output=True,
        timeout=300,
    )
    main = json.loads((kedro_project.root / "build" / "api" / "main").read_text())
    # {"ingestion.index_images_node": ["ingestion"], ...}: each node inside the group of its namespace
    shown = {node["full_name"]: node["modular_pipelines"] for node in main["nodes"] if node["type"] == "task"}
    assert {
        node.name: [node.namespace] for node in register_pipelines()["training"].nodes
    }.items() <= shown.items()
    assert {"ingestion", "preprocessing", "model_training", "evaluation"} <= main["modular_pipelines"].keys()
    # cross_validation: a group per fold, holding the training stages' groups
    cv = json.loads((kedro_project.root / "build" / "api" / "pipelines" / "cross_validation").read_text())
    folds = {f"cv_fold_{k}" for k in range(1, 6)}
    assert (
        folds | {"cv_folds", "cross_validation", "cv_fold_3.model_training"} <= cv["modular_pipelines"].keys()
    )
    shown = {node["full_name"]: node["modular_pipelines"] for node in cv["nodes"] if node["type"] == "task"}
    assert shown["cv_fold_3.model_training.train_model_node"] == ["cv_fold_3.model_training"]


def test_a_typo_in_a_training_parameter_stops_the_session_before_any_run(kedro_project, cell_folder):
    with pytest.raises(
        ValueError, match=r"training\.max_Lr is not a parameter of training: did you mean training\.max_lr\?"
    ):
        kedro_project.run("training", ingestion={"source": str(cell_folder)}, training={"max_Lr": 0.1})
    mlflow.set_tracking_uri(f"sqlite:///{kedro_project.root / 'mlflow.db'}")
    assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []
    assert not (kedro_project.root / "data" / "02_intermediate" / "image_index.parquet").exists()


def _long_functions(source: str, limit: int) -> list[tuple[str, int]]:
    """``(name, lines)`` of each function whose lines, its docstring aside, are more than ``limit``
    (as ruff formats them: one argument a line where a call does not fit)."""
    import ast

    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                lines -= first.end_lineno - first.lineno + 1
            if lines > limit:
                found.append((node.name, lines))
    return found


def test_no_function_in_src_is_over_60_lines_besides_its_docstring():
    assert _long_functions("def short():\n" + "    x = 1\n" * 59, 60) == []
    assert _long_functions("def long():\n" + "    x = 1\n" * 60, 60) == [("long", 61)]
    documented = 'def documented():\n    """One.\n\n    Two.\n    """\n' + "    x = 1\n" * 59
    assert _long_functions(documented, 60) == [] and _long_functions(documented + "    x = 1\n", 60) == [
        ("documented", 61)
    ]
    too_long = {
        f"{path.relative_to(PROJECT_ROOT)}::{name}": lines
        for path in sorted((PROJECT_ROOT / "src").rglob("*.py"))
        for name, lines in _long_functions(path.read_text(), 60)
    }
    assert too_long == {}


def test_no_test_module_imports_from_another_test_module():
    import ast

    shared = {"tests.helpers", "tests.conftest"}  # what tests share: plain helpers, and fixtures
    found = []
    for path in sorted((PROJECT_ROOT / "tests").rglob("test_*.py")):
        package = ".".join(path.relative_to(PROJECT_ROOT).parent.parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package.rsplit(".", node.level - 1)[0] if node.level else ""
                module = ".".join(part for part in (base, node.module) if part)
                # `from tests import helpers` and `from . import helpers` import the module tests.helpers
                packages = node.module is None or module == "tests"
                modules = [f"{module}.{alias.name}" for alias in node.names] if packages else [module]
            else:
                continue
            found += [
                f"{path.relative_to(PROJECT_ROOT)}:{node.lineno}: {module}"
                for module in modules
                if (module == "tests" or module.startswith("tests.")) and module not in shared
            ]
    assert found == [], (
        "Test modules import from other test modules; move what they share into tests/helpers.py "
        "(plain functions and constants) or tests/conftest.py (fixtures):\n  " + "\n  ".join(found)
    )


PLAIN_INTERPOLATION = r"\$\{([\w.]+)\}"  # ${other.parameter}; a resolver (${by_profile:…}) has a colon


def _interpolated(node, prefix=""):
    """``(dotted key, target)`` of each value that is the plain interpolation ``${target}`` of another parameter."""
    import re

    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _interpolated(value, f"{name}.")
        elif isinstance(value, str) and (found := re.fullmatch(PLAIN_INTERPOLATION, value.strip())):
            yield name, found.group(1)


def test_a_parameter_interpolates_at_most_one_other_and_never_a_chain():
    # A chain (a → b → c) hides where a value comes from: a parameter names the one it follows, and that
    # one holds a value (or a resolver of the profile or of the globals).
    import re

    raw = {}
    for path in sorted((PROJECT_ROOT / "conf" / "base").glob("parameters*.yml")):
        raw.update(yaml.safe_load(path.read_text()))

    def lookup(dotted):
        node = raw
        for part in dotted.split("."):
            node = node[part]
        return node

    pairs = list(_interpolated(raw))
    assert ("evaluation.tta", "inference.tta") in pairs  # the check sees the interpolations
    chains = [
        f"{name} → {target} → {lookup(target)}"
        for name, target in pairs
        if isinstance(lookup(target), str) and re.fullmatch(PLAIN_INTERPOLATION, lookup(target).strip())
    ]
    assert chains == []


def test_every_node_of_every_pipeline_is_written_with_keywords():
    import ast

    positional = [
        f"{path.relative_to(PROJECT_ROOT)}:{node.lineno}"
        for path in sorted((PROJECT_ROOT / "src").rglob("pipeline*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call) and ast.unparse(node.func) in ("Node", "node") and node.args
    ]
    assert positional == []
