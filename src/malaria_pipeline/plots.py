"""Figures of the pipeline, as matplotlib figures for ``matplotlib.MatplotlibDataset``."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # figures are saved, never shown: no display needed

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def plot_lr_sweep(lrs: list[float], losses: list[float], suggested_lr: float, min_loss_lr: float) -> Figure:
    """Smoothed training loss against learning rate (log scale), with the suggested max LR marked."""
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot(lrs, losses)
    axes.axvline(suggested_lr, color="tab:red", linestyle="--", label=f"steepest descent {suggested_lr:.1e}")
    axes.axvline(min_loss_lr, color="tab:gray", linestyle=":", label=f"lowest loss {min_loss_lr:.1e}")
    axes.set_xscale("log")
    axes.set_xlabel("learning rate")
    axes.set_ylabel("training loss (smoothed)")
    axes.set_title("Learning-rate range test")
    axes.legend()
    figure.tight_layout()
    return figure
