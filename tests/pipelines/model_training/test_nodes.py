"""The training node on hand-made tables: a ResNet-9 of width 4 on 16-pixel images, on the CPU."""

from __future__ import annotations

import pytest

from malaria_pipeline import tracking
from malaria_pipeline.ml import load_model
from malaria_pipeline.ml.checkpoint import CheckpointStore
from malaria_pipeline.ml.train import HISTORY_COLUMNS
from malaria_pipeline.pipelines.model_training.nodes import train_model
from malaria_pipeline.splitting import SplitError
from tests.helpers import TRAIN_PARAMS, tiny_tables


def test_the_node_trains_on_the_train_rows_and_returns_the_bundle_and_one_history_row_per_epoch(tmp_path):
    images, index, split, stats = tiny_tables()
    store = CheckpointStore(tmp_path / "checkpoint")
    bundle, history = train_model(images, index, split, stats, store, {**TRAIN_PARAMS, "epochs": 1})
    assert list(history.columns) == list(HISTORY_COLUMNS) and history["epoch"].tolist() == [1]
    model = load_model(bundle)
    assert model.class_names == ["Parasitized", "Uninfected"] and model.image_size == 16
    assert model.normalize.mean.flatten().tolist() == pytest.approx(stats["mean"])
    assert bundle["best_epoch"] == 1 and bundle["pretrained"] is False
    assert model.predict_proba(images[:3]).shape == (3, 2)
    # each epoch is checkpointed, with the MLflow run that wrote it (none here)
    assert store.load()["metadata"] == {"mlflow_run_id": ""}


def test_an_interrupted_node_resumes_from_its_checkpoint_with_resume(tmp_path, monkeypatch):
    images, index, split, stats = tiny_tables()
    store = CheckpointStore(tmp_path / "checkpoint")
    params = {**TRAIN_PARAMS, "epochs": 2}

    def interrupt(row):  # Ctrl-C as epoch 1 ends (the node hands each row to tracking.log_epoch)
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(tracking, "log_epoch", interrupt)
        with pytest.raises(KeyboardInterrupt):
            train_model(images, index, split, stats, store, params)
    (saved,) = store.load()["history"]
    _, history = train_model(images, index, split, stats, store, {**params, "resume": True})
    assert history["epoch"].tolist() == [1, 2]
    assert history.iloc[0].to_dict() == saved  # epoch 1 is the checkpoint's, not trained again


def test_a_split_without_validation_images_is_refused_before_training(tmp_path):
    images, index, split, stats = tiny_tables()
    split["subset"] = split["subset"].replace("validation", "test")
    with pytest.raises(SplitError, match="no validation images"):
        train_model(images, index, split, stats, CheckpointStore(tmp_path), {**TRAIN_PARAMS, "epochs": 1})
