"""Nodes of the preprocessing pipeline."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
import torch

from malaria_pipeline.cells.splitting import SplitError, split_by_patient, split_stratified, subset_rows
from malaria_pipeline.ml.normalization import channel_mean_std

logger = logging.getLogger(__name__)


def split_images(image_index: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    """Assigns every image to ``train``, ``validation`` or ``test``.

    Args:
        image_index: one row per image, with ``path``, ``label`` and ``patient_id``.
        params: ``strategy`` (``patient``: no patient in two subsets; ``stratified``: at random,
            keeping class ratios), ``fractions`` per subset, ``folds`` (patient strategy) and ``seed``.

    Returns:
        ``path`` and ``subset`` of each image, in index order.
    """
    labels = image_index["label"].to_numpy()
    strategy = params["strategy"]
    if strategy == "patient":
        subset = split_by_patient(
            labels, image_index["patient_id"].to_numpy(), params["fractions"], params["folds"], params["seed"]
        )
    elif strategy == "stratified":
        subset = split_stratified(labels, params["fractions"], params["seed"])
    else:
        raise SplitError(f"Unknown split.strategy {strategy!r}: use 'patient' or 'stratified'")
    data_split = pd.DataFrame({"path": image_index["path"], "subset": pd.Series(subset, dtype="string")})

    summary = image_index.assign(subset=data_split["subset"]).groupby("subset", sort=False)
    for name, rows in summary:
        logger.info(
            "%s split, %s: %d images of %d patients (%s)",
            strategy,
            name,
            len(rows),
            rows["patient_id"].nunique(),
            ", ".join(
                f"{label} {share:.1%}"
                for label, share in rows["label"].value_counts(normalize=True).sort_index().items()
            ),
        )
    return data_split


def compute_normalization_stats(
    image_tensors: torch.Tensor, image_index: pd.DataFrame, data_split: pd.DataFrame
) -> dict[str, Any]:
    """Per-channel mean and standard deviation of the training images, pixels scaled to [0, 1].

    Args:
        image_tensors: ``uint8, N×3×S×S`` in index order.
        image_index: one row per image (to check that the split belongs to these images).
        data_split: ``path`` and ``subset`` of each image.

    Returns:
        ``mean`` and ``std`` (3 floats each), and the subset and number of images they come from.
    """
    rows = subset_rows(image_index, data_split, "train", n_images=len(image_tensors))
    mean, std = channel_mean_std(image_tensors, torch.from_numpy(rows))
    logger.info(
        "Normalization statistics of %d training images: mean %s, std %s",
        len(rows),
        [round(m, 4) for m in mean],
        [round(s, 4) for s in std],
    )
    return {"mean": mean, "std": std, "subset": "train", "images": int(len(rows)), "pixel_scale": "[0, 1]"}
