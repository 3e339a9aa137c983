import pandas as pd
import pytest
import torch

from malaria_pipeline.cells.splitting import SplitError
from malaria_pipeline.pipelines.preprocessing.nodes import compute_normalization_stats, split_images


def _index(n_patients=12, per_patient=10):
    rows = []
    for p in range(n_patients):
        for i in range(per_patient):
            label = "Parasitized" if (p + i) % 2 else "Uninfected"
            rows.append((f"cell_images/{label}/C{p}P{p}_IMG_{i}.png", label, f"C{p}P{p}"))
    return pd.DataFrame(rows, columns=["path", "label", "patient_id"]).astype("string")


SPLIT = {
    "strategy": "patient",
    "fractions": {"train": 0.5, "validation": 0.25, "test": 0.25},
    "folds": 4,
    "seed": 0,
}


def test_patient_split_table_follows_the_index():
    index = _index()
    split = split_images(index, SPLIT)
    assert split["path"].equals(index["path"])
    assert set(split["subset"]) == {"train", "validation", "test"}
    assert index.assign(subset=split["subset"]).groupby("patient_id")["subset"].nunique().max() == 1


def test_stratified_split_is_selected_by_parameter():
    split = split_images(_index(), {**SPLIT, "strategy": "stratified"})
    assert split["subset"].value_counts().to_dict() == {"train": 60, "validation": 30, "test": 30}


def test_unknown_strategy_is_named():
    with pytest.raises(SplitError, match="Unknown split.strategy 'random'"):
        split_images(_index(), {**SPLIT, "strategy": "random"})


def test_normalization_stats_use_the_training_images_only():
    index = _index(4, 5)
    images = torch.zeros((20, 3, 4, 4), dtype=torch.uint8)
    split = pd.DataFrame({"path": index["path"], "subset": ["train"] * 10 + ["validation"] * 10})
    images[:10] = torch.randint(
        0, 256, (10, 3, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    images[10:] = 255  # validation images must not move the statistics
    stats = compute_normalization_stats(images, index, split)
    direct = images[:10].double() / 255
    assert stats["mean"] == pytest.approx(direct.mean(dim=(0, 2, 3)).tolist(), abs=1e-10)
    assert stats["std"] == pytest.approx(direct.std(dim=(0, 2, 3), correction=0).tolist(), abs=1e-10)
    assert stats["images"] == 10 and stats["subset"] == "train"


def test_tensors_of_another_run_are_refused():
    index = _index(2, 5)
    split = pd.DataFrame({"path": index["path"], "subset": ["train"] * 10})
    with pytest.raises(SplitError, match="image_tensors has 9 images but image_index 10 rows"):
        compute_normalization_stats(torch.zeros((9, 3, 2, 2), dtype=torch.uint8), index, split)
