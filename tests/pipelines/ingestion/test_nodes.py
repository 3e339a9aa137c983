import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from malaria_pipeline.cells.archive import ArchiveError, ImageArchive
from malaria_pipeline.ml import packing
from malaria_pipeline.ml.images import decode_cell_image
from malaria_pipeline.pipelines.ingestion.nodes import index_images
from tests.helpers import (
    ANY_IMAGE,
    add_bad_files,
    base_image_limits,
    bomb_png,
    corrupt_idat_png,
    image_bytes,
    zip_folder,
)

PARAMS = {"image_size": 16, "workers": 1, "image_limits": base_image_limits()}


def test_indexes_every_valid_image_and_packs_it_in_index_order(cell_folder: Path):
    index, tensors, report = index_images(ImageArchive.open(cell_folder), PARAMS)
    assert len(index) == 42 and tensors.shape == (42, 3, 16, 16) and tensors.dtype == torch.uint8
    assert list(index.columns) == [
        "path",
        "label",
        "patient_id",
        "width",
        "height",
        "mode",
        "sha1",
        "label_source",
        "archive_label",
        "review_task",
        "reviewers",
    ]
    assert (index["label_source"] == "archive").all() and (index["archive_label"] == index["label"]).all()
    assert index["path"].is_monotonic_increasing
    assert index["label"].value_counts().to_dict() == {"Uninfected": 26, "Parasitized": 16}
    assert (
        index["patient_id"].nunique() == 6 and (index["width"] == 20).all() and (index["mode"] == "RGB").all()
    )
    row = 17
    expected, _ = decode_cell_image((cell_folder / index["path"][row]).read_bytes(), 16, ANY_IMAGE)
    assert np.array_equal(tensors[row].numpy(), expected)
    assert report["images"] == 42 and report["patients"] == 6 and report["skipped"] == []


def test_bad_files_are_skipped_listed_with_their_reason_and_lose_nothing_else(cell_folder: Path):
    expected = add_bad_files(cell_folder)
    index, tensors, report = index_images(ImageArchive.open(cell_folder), PARAMS)
    assert len(index) == 42 and len(tensors) == 42
    skipped = {entry["path"]: entry["reason"] for entry in report["skipped"]}
    assert skipped.keys() == expected.keys()
    for path, reason in expected.items():
        assert skipped[path].startswith(reason), (path, skipped[path])
    assert report["files"] == 47


def test_byte_identical_images_are_reported_but_kept(cell_folder: Path):
    source = cell_folder / "cell_images" / "Parasitized"
    original = sorted(source.iterdir())[0]
    copy = source / ("C0P0ThinF_IMG_copy_" + original.name)
    shutil.copy(original, copy)
    index, _, report = index_images(ImageArchive.open(cell_folder), PARAMS)
    assert len(index) == 43
    assert [group["paths"] for group in report["duplicates"]] == [
        sorted([f"cell_images/Parasitized/{original.name}", f"cell_images/Parasitized/{copy.name}"])
    ]


def test_a_zip_gives_the_same_index_and_tensors_as_its_folder(cell_folder: Path, tmp_path: Path):
    from_folder = index_images(ImageArchive.open(cell_folder), PARAMS)
    from_zip = index_images(ImageArchive.open(zip_folder(cell_folder, tmp_path / "c.zip")), PARAMS)
    assert from_folder[0].equals(from_zip[0]) and torch.equal(from_folder[1], from_zip[1])


def test_decoding_on_several_processes_matches_one_process(cell_folder: Path, monkeypatch):
    add_bad_files(cell_folder)
    archive = ImageArchive.open(cell_folder)
    serial = index_images(archive, PARAMS)
    monkeypatch.setattr(packing, "MIN_FILES_PER_WORKER", 5)
    monkeypatch.setattr(packing, "CHUNK_FILES", 7)
    parallel = index_images(archive, {**PARAMS, "workers": 2})
    assert serial[0].equals(parallel[0]) and torch.equal(serial[1], parallel[1])
    assert serial[2]["skipped"] == parallel[2]["skipped"]


def test_a_source_with_one_class_only_is_an_error_naming_it(cell_folder: Path):
    shutil.rmtree(cell_folder / "cell_images" / "Uninfected")
    with pytest.raises(ArchiveError, match=f"{cell_folder}.* one class only .'Parasitized', 16 images"):
        index_images(ImageArchive.open(cell_folder), PARAMS)


def test_a_source_without_valid_images_is_an_error_naming_it(tmp_path: Path):
    (tmp_path / "junk" / "Parasitized").mkdir(parents=True)
    (tmp_path / "junk" / "Parasitized" / "a.png").write_text("text")
    with pytest.raises(ArchiveError, match=r"junk holds no valid image: 1 files.*a.png: not a PNG or JPEG"):
        index_images(ImageArchive.open(tmp_path / "junk"), PARAMS)


def test_a_source_parameter_the_catalog_did_not_read_is_refused(cell_folder: Path, tmp_path: Path):
    archive = ImageArchive.open(cell_folder)
    index, _, _ = index_images(archive, {**PARAMS, "source": str(cell_folder)})  # the same: accepted
    assert len(index) == 42
    with pytest.raises(ArchiveError, match="ingestion.source is .*elsewhere.zip. but the catalog read"):
        index_images(archive, {**PARAMS, "source": str(tmp_path / "elsewhere.zip")})


def add_hostile_files(root: Path) -> dict[str, str]:
    """Adds files that are valid PNGs but cannot be cell crops; returns path → start of the reason."""
    parasitized = root / "cell_images" / "Parasitized"
    (parasitized / "C9P9ThinF_IMG_1_cell_bomb.png").write_bytes(bomb_png(20_000, 20_000))
    (parasitized / "C9P9ThinF_IMG_1_cell_tiny.png").write_bytes(image_bytes(4, 4))
    (parasitized / "C9P9ThinF_IMG_1_cell_strip.png").write_bytes(image_bytes(400, 20))
    (parasitized / "C9P9ThinF_IMG_1_cell_corrupt.png").write_bytes(corrupt_idat_png())
    return {
        "cell_images/Parasitized/C9P9ThinF_IMG_1_cell_corrupt.png": "truncated or corrupt image",
        "cell_images/Parasitized/C9P9ThinF_IMG_1_cell_bomb.png": "image of 20000 × 20000 pixels (400,000,000 pixels) is larger than ingestion.image_limits.max_pixels",
        "cell_images/Parasitized/C9P9ThinF_IMG_1_cell_tiny.png": "image of 4 × 4 pixels is smaller than ingestion.image_limits.min_side",
        "cell_images/Parasitized/C9P9ThinF_IMG_1_cell_strip.png": "image of 400 × 20 pixels is more elongated (20.0:1) than ingestion.image_limits.max_aspect_ratio",
    }


@pytest.mark.parametrize("as_zip", [False, True], ids=["folder", "zip"])
def test_a_bomb_and_implausible_images_are_skipped_with_their_size_and_lose_nothing_else(
    cell_folder, tmp_path, as_zip
):
    expected = add_hostile_files(cell_folder)
    source = zip_folder(cell_folder, tmp_path / "cells.zip") if as_zip else cell_folder
    index, tensors, report = index_images(ImageArchive.open(source), PARAMS)
    assert len(index) == 42 and len(tensors) == 42
    skipped = {entry["path"]: entry["reason"] for entry in report["skipped"]}
    assert skipped.keys() == expected.keys()
    for path, reason in expected.items():
        assert skipped[path].startswith(reason), (path, skipped[path])


def test_zip_members_that_cannot_be_read_are_skipped_not_raised(cell_folder, tmp_path):
    archive = zip_folder(cell_folder, tmp_path / "cells.zip")
    encrypted = "cell_images/Uninfected/C9P9ThinF_IMG_1_cell_encrypted.png"
    with zipfile.ZipFile(archive, "a") as zipped:
        zipped.writestr(encrypted, image_bytes(30, 30))
        zipped.writestr(
            "cell_images/Uninfected/C9P9ThinF_IMG_1_cell_large.png", image_bytes(30, 30) + bytes(5000)
        )
    # Mark the member encrypted (bit 0 of the flags, in its local and central headers): zipfile then
    # refuses to read it ("encrypted, password required for extraction").
    data = bytearray(archive.read_bytes())
    name = encrypted.encode()
    for signature, flags_at, name_at in ((b"PK\x03\x04", 6, 30), (b"PK\x01\x02", 8, 46)):
        start = next(
            i
            for i in range(len(data))
            if data.startswith(signature, i) and data[i + name_at : i + name_at + len(name)] == name
        )
        data[start + flags_at] |= 0x1
    archive.write_bytes(bytes(data))
    limits = {**base_image_limits(), "max_file_bytes": 4000}
    index, _, report = index_images(ImageArchive.open(archive), {**PARAMS, "image_limits": limits})
    assert len(index) == 42
    skipped = {entry["path"]: entry["reason"] for entry in report["skipped"]}
    assert (
        skipped[encrypted].startswith("unreadable file (RuntimeError: File ")
        and "encrypted" in skipped[encrypted]
    )
    assert re.fullmatch(
        r"file of [\d,]+ bytes is larger than ingestion.image_limits.max_file_bytes \(4,000\).*",
        skipped["cell_images/Uninfected/C9P9ThinF_IMG_1_cell_large.png"],
    )


MEASURE_PEAK = """
import json, resource, sys
from malaria_pipeline.cells.archive import ImageArchive
from malaria_pipeline.pipelines.ingestion.nodes import index_images
params = json.loads(sys.argv[2])
index, _, report = index_images(ImageArchive.open(sys.argv[1]), params)
print(json.dumps({"images": len(index), "skipped": report["skipped"],
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def test_the_bomb_costs_no_memory(cell_folder, tmp_path):
    """Peak memory of ingestion in a fresh process, with and without a 20,000 × 20,000 PNG among the images."""

    def peak(source: Path) -> dict:
        done = subprocess.run(
            [sys.executable, "-c", MEASURE_PEAK, str(source), json.dumps(PARAMS)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    without = peak(zip_folder(cell_folder, tmp_path / "clean.zip"))
    (cell_folder / "cell_images" / "Parasitized" / "C9P9ThinF_IMG_1_cell_bomb.png").write_bytes(bomb_png())
    with_bomb = peak(zip_folder(cell_folder, tmp_path / "bomb.zip"))
    assert without["images"] == with_bomb["images"] == 42
    assert [entry["path"] for entry in with_bomb["skipped"]] == [
        "cell_images/Parasitized/C9P9ThinF_IMG_1_cell_bomb.png"
    ]
    # decoding it would take 400 MB as 1-bit gray and 1.2 GB as RGB
    assert with_bomb["peak_mb"] - without["peak_mb"] < 500, (without, with_bomb)
