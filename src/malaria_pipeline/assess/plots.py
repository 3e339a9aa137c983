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
        ConfusionMatrixDisplay.from_predictions(
            truth, called, labels=class_names, ax=ax, colorbar=False, values_format=",d"
        )
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


def plot_reliability_diagrams(diagrams: dict[str, dict[str, list[dict]]]) -> Figure:
    """One reliability diagram per subset: ``{subset: {"before": bins, "after": bins}}``, each ``bins`` the
    rows of :func:`malaria_pipeline.assess.metrics.calibration_bins`. Bars: the accuracy of each bin after
    temperature scaling; dots: before; the diagonal: perfect calibration."""
    figure = Figure(figsize=(5 * len(diagrams), 4.5))
    axes = figure.subplots(1, len(diagrams), squeeze=False)[0]
    for ax, (name, curves) in zip(axes, diagrams.items()):
        after = [row for row in curves["after"] if row["images"]]
        ax.bar(
            [row["low"] for row in after],
            [row["accuracy"] for row in after],
            align="edge",
            alpha=0.6,
            width=[row["high"] - row["low"] for row in after],
            edgecolor="tab:blue",
            label="after (bars)",
        )
        before = [row for row in curves["before"] if row["images"]]
        ax.plot(
            [row["confidence"] for row in before],
            [row["accuracy"] for row in before],
            "o--",
            color="tab:orange",
            label="before",
        )
        ax.plot([0, 1], [0, 1], color="tab:gray", linestyle=":")
        ax.set_xlabel("confidence (probability of the predicted class)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{name} ({sum(row['images'] for row in curves['after']):,} cells)")
        ax.legend(loc="upper left", title="temperature scaling")
    figure.suptitle("Reliability diagram")
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


def heatmap_overlay(image, heatmap, alpha: float = 0.45):
    """``uint8, S×S×3``: a ``uint8, 3×S×S`` cell blended with its heatmap (``S×S``, values in [0, 1]) in the
    ``jet`` colour map, ``alpha`` of the colour over the cell: blue where the network found nothing, red
    where it looked most."""
    import numpy as np
    from matplotlib import colormaps

    colour = colormaps["jet"](np.asarray(heatmap, dtype=np.float64))[..., :3]
    cell = image.permute(1, 2, 0).numpy().astype(np.float64) / 255
    return np.round(255 * ((1 - alpha) * cell + alpha * colour)).astype(np.uint8)


def cell_and_overlay(image, heatmap, scale: int = 4):
    """``uint8, sS×2sS×3``: the cell and its :func:`heatmap_overlay` side by side, each pixel repeated
    ``scale`` times each way (a 50-pixel cell becomes 200×400), for an image file."""
    import numpy as np

    pair = np.concatenate([image.permute(1, 2, 0).numpy(), heatmap_overlay(image, heatmap)], axis=1)
    return pair.repeat(scale, axis=0).repeat(scale, axis=1)


def plot_explained_cells(images, heatmaps, titles: list[str], columns: int = 6, suptitle: str = "") -> Figure:
    """A grid of cells (``uint8, N×3×S×S``), each as its heatmap overlay (:func:`heatmap_overlay`) with the
    bare cell small beside it, and a title over each pair."""
    rows = max(1, -(-len(images) // columns))
    figure = Figure(figsize=(2.3 * columns, 2.2 * rows))
    grid = figure.add_gridspec(rows, 2 * columns, width_ratios=[1, 2] * columns, wspace=0.05)
    for position, (image, heatmap, title) in enumerate(zip(images, heatmaps, titles)):
        row, column = divmod(position, columns)
        bare = figure.add_subplot(grid[row, 2 * column])
        bare.imshow(image.permute(1, 2, 0).numpy())
        bare.set_anchor("N")
        overlay = figure.add_subplot(grid[row, 2 * column + 1])
        overlay.imshow(heatmap_overlay(image, heatmap))
        overlay.set_title(title, fontsize=7)
        for ax in (bare, overlay):
            ax.axis("off")
    if suptitle:
        figure.suptitle(suptitle)
    return figure


def plot_fold_roc_curves(folds: dict[str, tuple], positive: str) -> Figure:
    """ROC curve of each cross-validation fold (``{fold: (is_positive, p_positive)}``) and their mean
    (true-positive rates averaged on a common false-positive grid), with ± 1 std shaded."""
    import numpy as np
    from sklearn.metrics import auc, roc_curve

    figure = Figure(figsize=(5.5, 5.5))
    axes = figure.subplots()
    grid = np.linspace(0, 1, 201)
    curves, aucs = [], []
    for name, (truth, score) in folds.items():
        fpr, tpr, _ = roc_curve(truth, score)
        aucs.append(auc(fpr, tpr))
        axes.plot(fpr, tpr, linewidth=1, alpha=0.6, label=f"{name} (AUC {aucs[-1]:.4f})")
        curves.append(np.interp(grid, fpr, tpr))
        curves[-1][0] = 0.0
    mean, std = np.mean(curves, axis=0), np.std(curves, axis=0)
    mean[-1] = 1.0
    axes.plot(
        grid,
        mean,
        color="black",
        linewidth=2,
        label=f"mean (AUC {np.mean(aucs):.4f} ± {np.std(aucs, ddof=1) if len(aucs) > 1 else 0:.4f})",
    )
    axes.fill_between(grid, np.clip(mean - std, 0, 1), np.clip(mean + std, 0, 1), color="gray", alpha=0.2)
    axes.plot([0, 1], [0, 1], color="tab:gray", linestyle=":")
    axes.set_xlabel("false positive rate")
    axes.set_ylabel("true positive rate (sensitivity)")
    axes.set_title(f"ROC per fold, positive class {positive}")
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    return figure


def plot_per_patient_accuracy(patients: list[dict], worst: int) -> Figure:
    """The spread of per-patient accuracy (histogram) and the ``worst`` patients by name, with their
    number of cells and errors. ``patients``: rows of :func:`malaria_pipeline.assess.metrics.per_patient`."""
    figure = Figure(figsize=(12, 4.5))
    spread, names = figure.subplots(1, 2)
    accuracy = [p["accuracy"] for p in patients]
    spread.hist(accuracy, bins=25, color="tab:blue")
    spread.set_xlabel("accuracy of the patient's cells (out of fold)")
    spread.set_ylabel("patients")
    spread.set_title(f"{len(patients)} patients")
    shown = patients[:worst][::-1]
    names.barh(
        [f"{p['patient_id']} ({p['images']} cells)" for p in shown],
        [p["accuracy"] for p in shown],
        color="tab:red",
    )
    for y, p in enumerate(shown):
        names.text(p["accuracy"], y, f" {p['accuracy']:.3f}, {p['errors']} errors", va="center", fontsize=7)
    names.set_xlim(0, 1.15)
    names.tick_params(axis="y", labelsize=7)
    names.set_title(f"the {len(shown)} worst patients")
    figure.tight_layout()
    return figure


CALL_COLOURS = {"positive": "tab:red", "negative": "tab:blue", "review": "tab:orange"}


def plot_patient_fractions(tables: dict[str, object]) -> Figure:
    """What a clinician reads: per patient, the parasitized fraction estimated from the model's calls
    (corrected for its errors, with its interval) against the labelled fraction of the same cells,
    coloured by the call; one panel per table (``{title: with_truth table}``, of
    :func:`malaria_pipeline.assess.patients.with_truth`). On the diagonal, the estimate is the truth."""
    figure = Figure(figsize=(6.5 * len(tables), 6))
    for axes, (title, table) in zip(figure.subplots(1, len(tables), squeeze=False)[0], tables.items()):
        judged = table[table["cells"] > 0]
        for call, colour in CALL_COLOURS.items():
            rows = judged[judged["call"] == call]
            axes.errorbar(
                rows["labelled_fraction"],
                rows["fraction"],
                yerr=[rows["fraction"] - rows["fraction_low"], rows["fraction_high"] - rows["fraction"]],
                fmt="o",
                markersize=3,
                elinewidth=0.8,
                color=colour,
                label=f"{call} ({len(rows)})",
            )
        axes.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle="--")
        axes.set_xlim(-0.02, 1.02)
        axes.set_ylim(-0.02, 1.02)
        axes.set_xlabel("labelled parasitized fraction of the patient's cells")
        axes.set_ylabel("estimated fraction, corrected, with its 95% interval")
        covered = judged["covered"].mean() if len(judged) else float("nan")
        axes.set_title(f"{title}: {len(judged)} patients, interval covers {covered:.0%}")
        axes.legend(title="call", loc="upper left")
    figure.tight_layout()
    return figure


def plot_message(text: str) -> Figure:
    """A figure that says why there is nothing to draw (a model trained on every image has no test cells)."""
    figure = Figure(figsize=(6, 2))
    figure.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    return figure
