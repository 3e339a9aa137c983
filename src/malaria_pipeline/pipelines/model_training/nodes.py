"""Nodes of the model-training pipeline."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import pandas as pd
import torch

from malaria_pipeline import tracking
from malaria_pipeline.ml.checkpoint import CheckpointStore
from malaria_pipeline.ml.model_io import model_bundle
from malaria_pipeline.ml.train import HISTORY_COLUMNS, TrainConfig, train_classifier
from malaria_pipeline.tensors import train_data

logger = logging.getLogger(__name__)


def train_model(
    image_tensors: torch.Tensor,
    image_index: pd.DataFrame,
    data_split: pd.DataFrame,
    normalization_stats: dict[str, Any],
    training_checkpoint: CheckpointStore,
    params: dict[str, Any],
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Trains the classifier on the ``train`` subset, choosing its epoch on ``validation``.

    Args:
        image_tensors: ``uint8, N×3×S×S`` in index order.
        image_index: ``path`` and ``label`` per image.
        data_split: ``path`` and ``subset`` per image.
        normalization_stats: ``mean`` and ``std`` of the training images.
        training_checkpoint: where each epoch's state is kept, for ``resume``.
        params: ``parameters_training.yml``: architecture, network, optimization and speed switches.

    Each epoch's row goes to the active MLflow run as soon as the epoch ends; a resumed run is tagged
    with the id of the MLflow run that wrote the checkpoint it continues.

    Returns:
        ``model``: the bundle that :func:`~malaria_pipeline.ml.model_io.load_model` rebuilds;
        ``training_history``: one row per epoch (epoch, stage, train_loss, valid_loss, accuracy, lr, seconds).
    """
    config = TrainConfig.from_params(params)
    if config.resume:
        _tag_the_run_it_continues(training_checkpoint)
    result = train_classifier(
        train_data(image_tensors, image_index, data_split, normalization_stats), config,
        checkpoint=dataclasses.replace(training_checkpoint, metadata={"mlflow_run_id": tracking.active_run_id() or ""}),
        on_epoch_end=tracking.log_epoch,
    )
    bundle = model_bundle(
        result.classifier, architecture=config.architecture, network_args=config.network_args,
        extra={"best_epoch": result.best_epoch, "pretrained": config.pretrained},
    )
    return bundle, pd.DataFrame(result.history, columns=list(HISTORY_COLUMNS))


def _tag_the_run_it_continues(checkpoint: CheckpointStore) -> None:
    saved = checkpoint.load()
    previous = (saved or {}).get("metadata", {}).get("mlflow_run_id")
    if previous:
        logger.info("Resuming the training of MLflow run %s", previous)
        tracking.set_tags({tracking.RESUMED_FROM_TAG: previous})
