"""Figures of the pipeline, as matplotlib figures for ``matplotlib.MatplotlibDataset``.

Each is a ``matplotlib.figure.Figure`` made without pyplot: no backend or display is needed, and no
figure stays registered in pyplot after the dataset has saved it. In a notebook, ``display(figure)``.
"""

from __future__ import annotations

from matplotlib.figure import Figure


def plot_lr_sweep(lrs: list[float], losses: list[float], suggested_lr: float, min_loss_lr: float) -> Figure:
    """Smoothed training loss against learning rate (log scale), with the suggested max LR marked."""
    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
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


def plot_confusion_matrices(subsets: dict[str, tuple], class_names: list[str]) -> Figure:
    """One confusion matrix per subset: ``{subset: (true labels, predicted labels)}``."""
    from sklearn.metrics import ConfusionMatrixDisplay

    figure = Figure(figsize=(4.5 * len(subsets), 4))
    axes = figure.subplots(1, len(subsets), squeeze=False)
    for ax, (name, (truth, called)) in zip(axes[0], subsets.items()):
        ConfusionMatrixDisplay.from_predictions(truth, called, labels=class_names, ax=ax, colorbar=False,
                                                values_format=",d")
        ax.set_title(f"{name} ({len(truth):,} cells)")
    figure.tight_layout()
    return figure


def plot_roc_curves(subsets: dict[str, tuple], positive: str) -> Figure:
    """ROC curve of each subset: ``{subset: (is_positive, p_positive)}``."""
    from sklearn.metrics import RocCurveDisplay

    figure = Figure(figsize=(5, 5))
    axes = figure.subplots()
    for name, (truth, score) in subsets.items():
        RocCurveDisplay.from_predictions(truth, score, name=name, ax=axes)
    axes.plot([0, 1], [0, 1], color="tab:gray", linestyle=":")
    axes.set_title(f"ROC, positive class {positive}")
    figure.tight_layout()
    return figure


def plot_training_curves(history) -> Figure:
    """Losses, validation accuracy and learning rate per epoch, from ``training_history``."""
    figure = Figure(figsize=(13, 3.8))
    losses, accuracy, lr = figure.subplots(1, 3)
    losses.plot(history["epoch"], history["train_loss"], marker="o", label="train")
    losses.plot(history["epoch"], history["valid_loss"], marker="o", label="validation")
    losses.set_title("loss")
    losses.legend()
    accuracy.plot(history["epoch"], history["accuracy"], marker="o", color="tab:green")
    accuracy.set_title("validation accuracy")
    lr.plot(history["epoch"], history["lr"], marker="o", color="tab:purple")
    lr.set_yscale("log")
    lr.set_title("learning rate (end of each epoch)")
    for ax in (losses, accuracy, lr):
        ax.set_xlabel("epoch")
    figure.tight_layout()
    return figure


def plot_image_grid(images, titles: list[str], columns: int = 8, suptitle: str = "") -> Figure:
    """A grid of ``uint8, N×3×S×S`` images with a title under each."""
    rows = max(1, -(-len(images) // columns))
    figure = Figure(figsize=(1.6 * columns, 1.9 * rows))
    axes = figure.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles):
        ax.imshow(image.permute(1, 2, 0).numpy())
        ax.set_title(title, fontsize=7)
    if suptitle:
        figure.suptitle(suptitle)
    figure.tight_layout()
    return figure
