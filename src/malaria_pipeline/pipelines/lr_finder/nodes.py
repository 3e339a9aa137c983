"""Nodes of the learning-rate finder pipeline."""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from matplotlib.figure import Figure

from malaria_pipeline.assess.plots import plot_lr_sweep
from malaria_pipeline.cells.tensors import train_data
from malaria_pipeline.framework.parameters import training_config
from malaria_pipeline.ml.lr_finder import lr_range_test
from malaria_pipeline.ml.train import build_classifier


def find_learning_rate(
    image_tensors: torch.Tensor,
    image_index: pd.DataFrame,
    data_split: pd.DataFrame,
    normalization_stats: dict[str, Any],
    training_params: dict[str, Any],
    params: dict[str, Any],
) -> tuple[dict[str, Any], Figure]:
    """Runs the LR range test with the training configuration and suggests a max LR.

    Args:
        image_tensors, image_index, data_split, normalization_stats: as for training.
        training_params: ``parameters_training.yml`` (network, optimizer, batch size, augmentation).
        params: ``start_lr``, ``end_lr``, ``num_batches`` and ``diverge`` of the sweep.

    Returns:
        ``lr_finder_result``: the suggested max LR and the sweep; ``lr_finder_plot``: loss against LR.
    """
    data = train_data(image_tensors, image_index, data_split, normalization_stats)
    config = training_config(training_params)
    sweep = lr_range_test(build_classifier(config, data), data, config, **params)
    result = {
        "suggested_max_lr": sweep.suggested_lr,
        "min_loss_lr": sweep.min_loss_lr,
        "architecture": config.architecture,
        "lrs": sweep.lrs,
        "losses": sweep.losses,
    }
    return result, plot_lr_sweep(sweep.lrs, sweep.losses, sweep.suggested_lr, sweep.min_loss_lr)
