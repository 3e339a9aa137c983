"""The adapter between the pipeline's tables and the torch layer: class indices and the subsets to train on."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from malaria_pipeline.cells.splitting import SplitError
from malaria_pipeline.cells.tensors import class_codes, class_names_of, train_data

LABELS = ["Uninfected", "Parasitized", "Uninfected", "Parasitized", "Uninfected", "Uninfected"]
SUBSETS = ["train", "validation", "train", "test", "validation", "train"]
STATS = {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}


def tables():
    """Six images, image i filled with the value i, and their index and split."""
    images = torch.arange(6, dtype=torch.uint8)[:, None, None, None].expand(6, 3, 2, 2).clone()
    paths = [f"cell_images/{label}/C{i}P{i}_IMG_1_cell_{i}.png" for i, label in enumerate(LABELS)]
    index = pd.DataFrame({"path": paths, "label": LABELS}).astype("string")
    split = pd.DataFrame({"path": paths, "subset": SUBSETS})
    return images, index, split


def test_classes_are_the_labels_in_sorted_order():
    _, index, _ = tables()
    assert class_names_of(index) == ["Parasitized", "Uninfected"]
    codes = class_codes(index["label"], ["Parasitized", "Uninfected"])
    assert codes.dtype == torch.int64 and codes.tolist() == [1, 0, 1, 0, 1, 1]
    assert class_codes(["b", "a", "c"], ["c", "b", "a"]).tolist() == [1, 2, 0]


def test_a_label_the_model_does_not_know_is_named():
    with pytest.raises(
        ValueError,
        match=r"Labels \['Gametocyte'\] are not among the model's classes \['Parasitized', 'Uninfected'\]",
    ):
        class_codes(["Parasitized", "Gametocyte"], ["Parasitized", "Uninfected"])


def test_train_data_holds_the_train_and_validation_rows_and_no_test_row():
    images, index, split = tables()
    data = train_data(images, index, split, STATS)
    # train: rows 0, 2, 5 (all uninfected); validation: rows 1 (parasitized) and 4 (uninfected)
    assert data.train_images[:, 0, 0, 0].tolist() == [0, 2, 5] and data.train_labels.tolist() == [1, 1, 1]
    assert data.valid_images[:, 0, 0, 0].tolist() == [1, 4] and data.valid_labels.tolist() == [0, 1]
    assert data.mean == [0.1, 0.2, 0.3] and data.std == [0.4, 0.5, 0.6]
    assert data.class_names == ["Parasitized", "Uninfected"]


def test_a_split_without_validation_images_is_refused():
    images, index, split = tables()
    split["subset"] = split["subset"].replace("validation", "train")
    with pytest.raises(SplitError, match="no validation images.*preprocessing.split.fractions.validation"):
        train_data(images, index, split, STATS)


def test_tables_of_other_runs_are_refused():
    images, index, split = tables()
    with pytest.raises(SplitError, match="image_tensors has 5 images but image_index 6 rows"):
        train_data(images[:5], index, split, STATS)
    with pytest.raises(SplitError, match="data_split .5 rows. does not match image_index .6 rows."):
        train_data(images, index, split.iloc[:5], STATS)
