"""The LR-finder node on hand-made tables: a short sweep of a ResNet-9 of width 4, on the CPU."""

from __future__ import annotations

import pytest
from matplotlib.figure import Figure

from malaria_pipeline.pipelines.lr_finder.nodes import find_learning_rate
from tests.helpers import TRAIN_PARAMS, tiny_tables


def test_the_sweep_rises_from_start_lr_and_suggests_a_rate_inside_it():
    images, index, split, stats = tiny_tables()
    sweep = {"start_lr": 1e-5, "end_lr": 1.0, "num_batches": 12, "diverge": 4.0}
    result, figure = find_learning_rate(images, index, split, stats, TRAIN_PARAMS, sweep)
    assert result["architecture"] == "resnet9"
    assert len(result["lrs"]) == len(result["losses"]) <= 12 and result["lrs"][0] == pytest.approx(1e-5)
    assert all(b > a for a, b in zip(result["lrs"], result["lrs"][1:]))
    assert result["lrs"][0] <= result["suggested_max_lr"] <= result["lrs"][-1]
    assert result["lrs"][0] <= result["min_loss_lr"] <= result["lrs"][-1]
    assert isinstance(figure, Figure)
