"""Ingestion applies the reviewers' label corrections: a reviewed archive cell takes the verdict, a reviewed
new cell joins the images, a hostile one is skipped with its reason and loses nothing else."""

import hashlib
from pathlib import Path

import pandas as pd
import torch

from malaria_pipeline.cells.archive import ImageArchive
from malaria_pipeline.cells.corrections import CORRECTION_COLUMNS
from malaria_pipeline.pipelines.ingestion.nodes import index_images
from tests.helpers import base_image_limits, bomb_png, image_bytes

PARAMS = {"image_size": 16, "workers": 1, "image_limits": base_image_limits(), "label_corrections": True}


def correction(data: bytes, file: str, patient: str, label: str, task: int) -> dict:
    return {
        "sha1": hashlib.sha1(data).hexdigest(),
        "file": file,
        "patient_id": patient,
        "label": label,
        "task_id": task,
        "reviewers": "ann@example.org",
        "reviewed_at": "2026-12-06T10:00:00Z",
        "source": "/new_cells",
        "image": data,
    }


def test_corrections_relabel_archive_cells_add_new_ones_and_skip_what_cannot_be_used(cell_folder: Path):
    parasitized = sorted((cell_folder / "cell_images" / "Parasitized").glob("*.png"))
    uninfected = sorted((cell_folder / "cell_images" / "Uninfected").glob("*.png"))
    new_cell = image_bytes(30, 24, seed=1234)
    corrections = pd.DataFrame(
        [
            # the reviewer says this archive "Parasitized" cell is uninfected
            correction(parasitized[0].read_bytes(), "x/a.png", "C0P0ThinF", "Uninfected", 11),
            # and confirms this one
            correction(uninfected[0].read_bytes(), "x/b.png", "C0P0ThinF", "Uninfected", 11),
            # a new cell of a new patient, from inference
            correction(new_cell, "slide/N1P1_IMG_1_cell_1.png", "N1P1", "Parasitized", 12),
            # a decompression bomb and a label that is no class: skipped, the others kept
            correction(bomb_png(), "slide/N1P1_IMG_1_cell_2.png", "N1P1", "Parasitized", 12),
            correction(image_bytes(seed=5), "slide/N1P1_IMG_1_cell_3.png", "N1P1", "Gametocyte", 12),
        ],
        columns=CORRECTION_COLUMNS,
    )
    plain, plain_images, _ = index_images(ImageArchive.open(cell_folder), PARAMS)
    index, images, report = index_images(ImageArchive.open(cell_folder), PARAMS, corrections)

    relabelled = index["path"] == parasitized[0].relative_to(cell_folder).as_posix()
    assert index.loc[
        relabelled, ["label", "archive_label", "label_source", "review_task"]
    ].values.tolist() == [["Uninfected", "Parasitized", "review", 11]]
    others = ~relabelled.iloc[:42]
    assert (index["label"].iloc[:42][others] == plain["label"][others]).all()
    # the new cell, decoded as ingestion decodes the archive, at the end
    assert len(index) == 43 and images.shape == (43, 3, 16, 16) and torch.equal(images[:42], plain_images)
    added = index.iloc[42]
    assert added["path"] == f"label_corrections/{hashlib.sha1(new_cell).hexdigest()}/N1P1_IMG_1_cell_1.png"
    assert (added["label"], added["patient_id"], added["label_source"], added["review_task"]) == (
        "Parasitized",
        "N1P1",
        "review",
        12,
    )
    assert pd.isna(added["archive_label"])
    expected, _ = index_images(ImageArchive.open(_one_cell_archive(cell_folder.parent, new_cell)), PARAMS)[1:]
    assert torch.equal(images[42], expected[0])

    corrected = report["label_corrections"]
    assert (corrected["relabelled"], corrected["confirmed"], corrected["added"]) == (1, 1, 1)
    reasons = {row["file"]: row["reason"] for row in corrected["skipped"]}
    assert reasons["slide/N1P1_IMG_1_cell_2.png"].startswith("image of 20000 × 20000 pixels")
    assert reasons["slide/N1P1_IMG_1_cell_3.png"] == (
        "label 'Gametocyte' is not a class of the archive (Parasitized, Uninfected)"
    )


def test_corrections_are_left_alone_when_asked(cell_folder: Path):
    data = sorted((cell_folder / "cell_images" / "Parasitized").glob("*.png"))[0].read_bytes()
    corrections = pd.DataFrame(
        [correction(data, "a.png", "C0P0ThinF", "Uninfected", 1)], columns=CORRECTION_COLUMNS
    )
    index, _, report = index_images(
        ImageArchive.open(cell_folder), {**PARAMS, "label_corrections": False}, corrections
    )
    assert (index["label_source"] == "archive").all() and index["label"].value_counts()["Parasitized"] == 16
    assert report["label_corrections"] == {"applied": False, "reason": "ingestion.label_corrections is false"}


def _one_cell_archive(root: Path, data: bytes) -> Path:
    """A two-class archive holding the new cell (and one other), to decode it as ingestion does."""
    folder = root / "one_cell"
    for label, content in (("Parasitized", data), ("Uninfected", image_bytes(seed=77))):
        (folder / label).mkdir(parents=True, exist_ok=True)
        (folder / label / "a.png").write_bytes(content)
    return folder
