"""Ingestion and preprocessing on the real images of ../shared/data/malaria_cells_50px.zip.

20,571 images (50×50 grayscale) of 147 patients, in the official layout. Skipped, with the reason
printed, where the shared folder is absent.
"""

from __future__ import annotations

import shutil
import zipfile

import numpy as np
import pytest
import torch

from malaria_pipeline.ml import load_model
from tests.helpers import image_bytes, shared_zip_or_skip

# slow: 3 to 4 minutes on 2 cores (make test-slow, and CI)
pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def shared_zip():
    return shared_zip_or_skip()


@pytest.fixture(scope="module")
def trained_on_shared(module_kedro_project, shared_zip):
    """One `training` run on the shared zip: ingestion, patient split, statistics, and one epoch of a
    narrow ResNet-9 (width 8) to keep CI short."""
    module_kedro_project.run(
        "training",
        ingestion={"source": str(shared_zip), "image_size": 64},
        training={"width": 8, "epochs": 1},
    )
    return module_kedro_project


def test_ingestion_indexes_every_image_of_147_patients(trained_on_shared):
    index = trained_on_shared.load("image_index")
    report = trained_on_shared.load("ingestion_report")
    tensors = trained_on_shared.load("image_tensors")
    assert len(index) == 20_571 and tensors.shape == (20_571, 3, 64, 64)
    assert index["patient_id"].nunique() == 147 and report["patients"] == 147
    assert index["label"].value_counts().to_dict() == {"Parasitized": 10_510, "Uninfected": 10_061}
    assert report["skipped"] == [] and report["files"] == 20_571
    assert set(index["mode"]) == {"L"} and set(index["width"]) == {50}


def test_patient_split_puts_no_patient_in_two_subsets(trained_on_shared):
    index, split = trained_on_shared.load("image_index"), trained_on_shared.load("data_split")
    subsets = index.assign(subset=split["subset"]).groupby("patient_id")["subset"].nunique()
    assert subsets.max() == 1
    shares = split["subset"].value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.70, abs=0.03)
    assert shares["validation"] == pytest.approx(0.15, abs=0.03) and shares["test"] == pytest.approx(
        0.15, abs=0.03
    )


def test_normalization_stats_equal_those_of_the_training_images(trained_on_shared):
    tensors, split = trained_on_shared.load("image_tensors"), trained_on_shared.load("data_split")
    stats = trained_on_shared.load("normalization_stats")
    train = torch.from_numpy(np.flatnonzero(split["subset"].to_numpy() == "train"))
    pixels = tensors[train].double() / 255
    assert stats["mean"] == pytest.approx(pixels.mean(dim=(0, 2, 3)).tolist(), abs=1e-4)
    assert stats["std"] == pytest.approx(pixels.std(dim=(0, 2, 3), correction=0).tolist(), abs=1e-4)
    assert stats["images"] == len(train)


def test_one_epoch_on_real_cells_already_tells_parasitized_from_uninfected(trained_on_shared):
    history = trained_on_shared.load("training_history")
    assert history["epoch"].tolist() == [1]
    assert history["accuracy"].iloc[0] > 0.8, history
    model = load_model(trained_on_shared.load("model"))
    assert model.class_names == ["Parasitized", "Uninfected"] and model.image_size == 64


def test_stratified_split_keeps_each_subset_within_one_percent_of_the_class_ratio(kedro_project, shared_zip):
    # A project of its own: a stratified split there would be the latest data_split of the module's project.
    kedro_project.run("ingestion", ingestion={"source": str(shared_zip), "image_size": 16})
    kedro_project.run("preprocessing", preprocessing={"split": {"strategy": "stratified"}})
    index, split = kedro_project.load("image_index"), kedro_project.load("data_split")
    parasitized = index["label"].to_numpy() == "Parasitized"
    for name in ("train", "validation", "test"):
        rows = split["subset"].to_numpy() == name
        assert abs(parasitized[rows].mean() - parasitized.mean()) < 0.01, name


def test_broken_files_added_to_the_zip_are_skipped_and_named(kedro_project, shared_zip, tmp_path):
    broken = tmp_path / "malaria_cells_50px_broken.zip"
    shutil.copy(shared_zip, broken)
    added = {
        "cell_images/Parasitized/Thumbs.db": b"\xd0\xcf\x11\xe0 windows thumbnail cache",
        "cell_images/Uninfected/C999P1ThinF_IMG_0_cell_0.png": b"",
        "cell_images/Parasitized/C999P1ThinF_IMG_0_cell_1.png": image_bytes(50, 50, "L")[:120],
        "cell_images/Uninfected/C999P1ThinF_IMG_0_cell_2.png": b"a text file named .png\n",
    }
    with zipfile.ZipFile(broken, "a") as archive:
        for name, data in added.items():
            archive.writestr(name, data)
    kedro_project.run("ingestion", ingestion={"source": str(broken)})
    report = kedro_project.load("ingestion_report")
    reasons = {entry["path"]: entry["reason"] for entry in report["skipped"]}
    assert reasons.keys() == added.keys()
    assert reasons["cell_images/Parasitized/Thumbs.db"].startswith("not an image file")
    assert reasons["cell_images/Uninfected/C999P1ThinF_IMG_0_cell_0.png"] == "empty file (0 bytes)"
    assert reasons["cell_images/Parasitized/C999P1ThinF_IMG_0_cell_1.png"].startswith(
        "truncated or corrupt image"
    )
    assert reasons["cell_images/Uninfected/C999P1ThinF_IMG_0_cell_2.png"].startswith(
        "not a PNG or JPEG image"
    )
    assert report["images"] == 20_571 and report["files"] == 20_575
