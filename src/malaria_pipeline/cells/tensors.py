"""The adapter between the pipeline's tables (pandas) and the torch layer (``ml/``): tensors of subsets.

Training, the LR finder, evaluation and the benchmark take their images and class indices from here,
so the class of each label is decided in one place: class index i is the i-th label in sorted order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch

from malaria_pipeline.cells.splitting import SplitError, subset_rows
from malaria_pipeline.ml.train import TrainData


def class_names_of(image_index: pd.DataFrame) -> list[str]:
    """The labels of ``image_index`` in class-index order (sorted)."""
    return sorted(image_index["label"].unique())


def class_codes(labels: Sequence[str] | pd.Series, class_names: list[str]) -> torch.Tensor:
    """``int64`` class index of each label.

    Raises:
        ValueError: a label is not one of ``class_names``.
    """
    codes = {name: i for i, name in enumerate(class_names)}
    unknown = sorted({str(label) for label in labels} - codes.keys())
    if unknown:
        raise ValueError(f"Labels {unknown} are not among the model's classes {class_names}")
    return torch.tensor([codes[label] for label in labels], dtype=torch.int64)


def train_data(
    images: torch.Tensor,
    image_index: pd.DataFrame,
    data_split: pd.DataFrame,
    normalization: dict[str, Any],
    need_validation: bool = True,
) -> TrainData:
    """The ``train`` and ``validation`` subsets of the packed images, for :mod:`malaria_pipeline.ml.train`.

    Args:
        images: ``uint8, N×3×S×S`` in the order of ``image_index``.
        image_index: ``path`` and ``label`` per image.
        data_split: ``path`` and ``subset`` per image, in index order.
        normalization: ``mean`` and ``std`` per channel of the training images.
        need_validation: False where no epoch is chosen (``training.keep: last``): a model trained on
            every image has no validation subset.

    Raises:
        SplitError: the split has no validation image, or belongs to other images.
    """
    class_names = class_names_of(image_index)
    codes = class_codes(image_index["label"], class_names)
    train = torch.from_numpy(subset_rows(image_index, data_split, "train", n_images=len(images)))
    valid = torch.from_numpy(subset_rows(image_index, data_split, "validation"))
    if len(valid) == 0 and need_validation:
        raise SplitError(
            "The split has no validation images, which training needs to choose its best epoch: give "
            "preprocessing.split.fractions.validation a value above 0, or set training.keep=last."
        )
    return TrainData(
        train_images=images[train],
        train_labels=codes[train],
        valid_images=images[valid],
        valid_labels=codes[valid],
        mean=list(normalization["mean"]),
        std=list(normalization["std"]),
        class_names=class_names,
    )
