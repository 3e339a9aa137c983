"""The `cross_validation` pipeline run end to end over the project's catalog, in a KedroProject in tmp_path:
six patients of real PNG files, 3 folds, a ResNet-9 of width 4 for one epoch."""

import numpy as np
import pytest

TINY_CV = {
    "ingestion": {"image_size": 16},
    "cross_validation": {"folds": 3, "validation_folds": 2},
    "training": {"width": 4, "epochs": 2, "batch_size": 8, "pad": 2},
}


@pytest.fixture(scope="module")
def cv_run(module_kedro_project, tmp_path_factory):
    from tests.helpers import SMALL_PATIENTS, write_cells

    folder = tmp_path_factory.mktemp("cells")
    write_cells(folder, SMALL_PATIENTS)
    module_kedro_project.run(
        "cross_validation", **{**TINY_CV, "ingestion": {**TINY_CV["ingestion"], "source": str(folder)}}
    )
    return module_kedro_project


def test_every_image_gets_one_out_of_fold_prediction_and_no_patient_is_in_two_folds(cv_run):
    catalog = cv_run.context().catalog
    index, folds, predictions = (
        catalog.load("image_index"),
        catalog.load("cv_folds"),
        catalog.load("cv_predictions"),
    )
    assert sorted(predictions["path"]) == sorted(index["path"]) and predictions["path"].is_unique
    assert folds.groupby("patient_id")["fold"].nunique().max() == 1
    assert sorted(folds["fold"].unique()) == [1, 2, 3]
    by_path = folds.set_index("path")["fold"]
    assert (predictions["fold"].to_numpy() == by_path[predictions["path"]].to_numpy()).all()
    assert predictions["p_parasitized"].between(0, 1).all()


def test_the_metrics_are_those_of_the_predictions_fold_by_fold(cv_run):
    from sklearn.metrics import accuracy_score, roc_auc_score

    catalog = cv_run.context().catalog
    predictions, metrics = catalog.load("cv_predictions"), catalog.load("cv_metrics")
    accuracies = []
    for fold, cells in predictions.groupby("fold"):
        truth = cells["label"] == "Parasitized"
        accuracies.append(accuracy_score(truth, cells["p_parasitized"] >= 0.5))
        reported = next(row for row in metrics["per_fold"] if row["fold"] == fold)
        assert reported["accuracy"] == pytest.approx(accuracies[-1])
        if truth.nunique() == 2:
            assert reported["roc_auc"] == pytest.approx(roc_auc_score(truth, cells["p_parasitized"]))
    assert metrics["mean_std"]["accuracy"]["mean"] == pytest.approx(np.mean(accuracies))
    assert metrics["mean_std"]["accuracy"]["std"] == pytest.approx(np.std(accuracies, ddof=1))
    assert metrics["images"] == len(predictions) and metrics["folds"] == 3


def test_the_mlflow_run_has_one_finished_child_run_per_fold(cv_run):
    client = cv_run.mlflow_client()
    runs = client.search_runs([client.get_experiment_by_name("malaria-pipeline").experiment_id])
    # the other tests of this module add training runs of their own to the experiment
    parents = [r for r in runs if r.data.tags.get("mlflow.runName") == "cross_validation"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["fold"] for r in children) == ["1", "2", "3"]
    assert all(r.info.status == "FINISHED" for r in children)
    for child in children:
        history = client.get_metric_history(child.info.run_id, "valid_loss")
        assert [m.step for m in history] == [1, 2]
        assert "test.accuracy" in child.data.metrics and child.data.params["training.epochs"] == "2"
    assert {"cv.accuracy.mean", "cv.accuracy.std", "cv.pooled.roc_auc"} <= parent.data.metrics.keys()
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "figures")}
    assert {
        "figures/cv_roc_curves.png",
        "figures/cv_per_patient.png",
        "figures/label_issues.png",
    } <= artifacts
    assert {"label_issues.csv", "cv_metrics.json"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id)
    }


def test_the_model_on_every_patient_trains_its_epochs_on_all_images_and_claims_the_cross_validation(
    cv_run, tmp_path_factory
):
    from tests.helpers import SMALL_PATIENTS, write_cells

    client = cv_run.mlflow_client()
    experiment = client.get_experiment_by_name("malaria-pipeline").experiment_id
    (cv_parent,) = client.search_runs(
        [experiment], filter_string="tags.`mlflow.runName` = 'cross_validation'"
    )
    folder = tmp_path_factory.mktemp("cells_all")
    write_cells(folder, SMALL_PATIENTS)
    cv_run.run(
        "training",
        env="all_patients",
        ingestion={"source": str(folder), "image_size": 16},
        preprocessing={"split": {"folds": 2}},
        training={"width": 4, "epochs": 2, "batch_size": 8, "pad": 2},
        evaluation={"without_validation": {"temperature": 1.5, "operating_threshold": 0.25}},
    )

    catalog = cv_run.context().catalog
    assert set(catalog.load("data_split")["subset"]) == {"train"}
    history, bundle = catalog.load("training_history"), catalog.load("model")
    assert history["epoch"].tolist() == [1, 2] and history["valid_loss"].isna().all()
    assert bundle["best_epoch"] == 2
    assert bundle["temperature"] == 1.5 and bundle["operating_point"]["threshold"] == 0.25
    assert not {"validation", "test"} & catalog.load("evaluation_metrics").keys()
    (training,) = client.search_runs(
        [experiment], filter_string="tags.`mlflow.runName` = 'training' and attributes.status = 'FINISHED'"
    )
    assert training.info.status == "FINISHED"
    assert training.data.tags["cross_validation_run_id"] == cv_parent.info.run_id
    mean, std = cv_parent.data.metrics["cv.accuracy.mean"], cv_parent.data.metrics["cv.accuracy.std"]
    assert training.data.tags["accuracy_claim"] == f"cross-validation accuracy {mean:.4f} ± {std:.4f}"


def test_a_claimed_run_that_is_not_a_cross_validation_fails_the_training_run_at_once(cv_run):
    client = cv_run.mlflow_client()
    experiment = client.get_experiment_by_name("malaria-pipeline").experiment_id
    fold = client.search_runs([experiment], filter_string="tags.fold = '1'")[0]
    with pytest.raises(
        ValueError, match=f"MLflow run {fold.info.run_id} .* is not a finished cross-validation run"
    ):
        cv_run.run("training", env="all_patients", cross_validation_run_id=fold.info.run_id)
    (failed,) = client.search_runs([experiment], filter_string="attributes.status = 'FAILED'")
    assert failed.data.tags["mlflow.runName"] == "training"


# Training that learns the separable cells below in a few epochs (the tiny runs above learn nothing of
# random pixels, and a model that tells no class apart gives no corrected fraction).
LEARNS = {"width": 4, "epochs": 4, "batch_size": 8, "pad": 2, "max_lr": 0.05}


@pytest.mark.slow
def test_the_model_on_every_patient_calls_patients_with_the_pooled_rates_of_its_cross_validation_run(
    kedro_project, tmp_path
):
    from tests.helpers import SMALL_PATIENTS, write_cells

    write_cells(tmp_path / "cells", SMALL_PATIENTS, separable=True)
    source = {"source": str(tmp_path / "cells"), "image_size": 16}
    # patients of 5 to 8 cells: the rule it recommends must not review them for that; chosen without a
    # reviewer (max_review), which decides some of them, where a reviewer's budget of cells (the default)
    # affords the review of all six
    kedro_project.run(
        "cross_validation",
        ingestion=source,
        cross_validation={"folds": 3, "validation_folds": 2},
        training=LEARNS,
        evaluation={"patients": {"call": {"min_cells": 1}, "budget": "patients"}},
    )
    # all_patients replaces conf/local, whose mlflow.yml names this project's store: without it the
    # relative sqlite:///mlflow.db would be the store MLflow cached first in this process, another test's
    conf = kedro_project.root / "conf"
    (conf / "all_patients" / "mlflow.yml").write_text((conf / "local" / "mlflow.yml").read_text())
    kedro_project.run(
        "training",
        env="all_patients",  # cross_validation_run_id: latest
        ingestion=source,
        preprocessing={"split": {"folds": 2}},
        training=LEARNS,
        evaluation={"without_validation": {"temperature": 1.0, "operating_threshold": 0.5}},
    )
    write_cells(tmp_path / "new_cells", SMALL_PATIENTS, prefix="", separable=True)
    kedro_project.run("inference", inference={"source": str(tmp_path / "new_cells"), "threshold": 0.5})

    client = kedro_project.mlflow_client()
    experiment = client.get_experiment_by_name("malaria-pipeline").experiment_id
    (cv,) = client.search_runs([experiment], filter_string="tags.`mlflow.runName` = 'cross_validation'")
    cv_id = cv.info.run_id
    assert "cv_patient_settings.json" in {a.path for a in client.list_artifacts(cv_id)}
    catalog = kedro_project.context().catalog
    bundle, card, table = (
        catalog.load("model"),
        catalog.load("model_card"),
        catalog.load("patient_predictions"),
    )
    predictions, metrics = catalog.load("cv_predictions"), catalog.load("cv_metrics")
    assert bundle["patient_settings_from"] == cv_id
    assert bundle["patient_call"] == metrics["patients"]["recommended_call"]
    # the rates of every out-of-fold cell pooled, counted at 0.5 (patients.count_at), worked out with numpy
    truth = (predictions["label"] == "Parasitized").to_numpy()
    called = predictions["p_parasitized"].to_numpy() >= 0.5
    se, sp = (called & truth).sum() / truth.sum(), (~called & ~truth).sum() / (~truth).sum()
    assert se + sp > 1
    reference = bundle["reference_cells"]  # every fold's cells, not one fold's
    assert (reference["positives"], reference["negatives"]) == (truth.sum(), (~truth).sum())
    assert sorted(table["patient"]) == sorted(SMALL_PATIENTS) and (table["count_threshold"] == 0.5).all()
    assert table["sensitivity"].to_numpy() == pytest.approx([se] * len(table))
    assert table["specificity"].to_numpy() == pytest.approx([sp] * len(table))
    rogan_gladen = np.clip((table["parasitized"] / table["cells"] + sp - 1) / (se + sp - 1), 0, 1)
    assert table["fraction"].to_numpy() == pytest.approx(rogan_gladen.to_numpy())
    assert set(table["call"]) - {"review"}, table[["patient", "cells", "parasitized", "fraction", "call"]]
    pooled = (
        f"the pooled out-of-fold cells of cross-validation run {cv_id} "
        f"({len(predictions)} cells of {predictions['patient_id'].nunique()} patients)"
    )
    assert table["rates_from"].str.startswith(pooled).all()
    assert f"**Where the rates come from: cross-validation run `{cv_id}`.**" in card


@pytest.mark.slow
def test_a_cross_validation_stopped_in_fold_2_resumes_without_training_fold_1_again(
    kedro_project, tmp_path, monkeypatch
):
    from malaria_pipeline.ml import train
    from tests.helpers import SMALL_PATIENTS, write_cells

    write_cells(tmp_path / "cells", SMALL_PATIENTS)
    params = {**TINY_CV, "ingestion": {**TINY_CV["ingestion"], "source": str(tmp_path / "cells")}}
    kedro_project.run("cross_validation", **params)  # uninterrupted, for the answers
    catalog = kedro_project.context().catalog
    uninterrupted = catalog.load("cv_predictions")

    epochs, real = [], train.run_epoch

    def dies_in_fold_2s_second_epoch(run, *args, **kwargs):
        epochs.append(len(run.loader.images))
        if len(epochs) == 4:  # fold 1 trains epochs 1 and 2, then fold 2 epoch 1, then this
            raise RuntimeError("killed")
        return real(run, *args, **kwargs)

    monkeypatch.setattr(train, "run_epoch", dies_in_fold_2s_second_epoch)
    with pytest.raises(RuntimeError, match="killed"):
        kedro_project.run("cross_validation", **params)
    epochs.clear()
    kedro_project.run("cross_validation", **{**params, "training": {**TINY_CV["training"], "resume": True}})

    # fold 1 is not trained again, fold 2 trains its second epoch only, fold 3 both
    assert len(epochs) == 3
    resumed = kedro_project.context().catalog.load("cv_predictions")
    assert resumed["path"].tolist() == uninterrupted["path"].tolist()
    assert resumed["p_parasitized"].to_numpy() == pytest.approx(
        uninterrupted["p_parasitized"].to_numpy(), abs=1e-6
    )
