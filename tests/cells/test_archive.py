from pathlib import Path

import pytest

from malaria_pipeline.cells.archive import ArchiveError, ImageArchive, patient_id, sort_members
from tests.helpers import zip_folder


def test_official_layout_sorts_images_by_class_folder_and_skips_the_rest():
    members = [
        "cell_images/Parasitized/C1P1_IMG_1_cell_1.png",
        "cell_images/Parasitized/Thumbs.db",
        "cell_images/Uninfected/C2P2_IMG_2_cell_2.PNG",
        "cell_images/readme.txt",
        "cell_images/Uninfected/nested/C3_IMG_3.png",
        "__MACOSX/cell_images/Parasitized/._C1P1_IMG_1_cell_1.png",
    ]
    candidates, skipped = sort_members(members)
    assert candidates == [
        ("cell_images/Parasitized/C1P1_IMG_1_cell_1.png", "Parasitized"),
        ("cell_images/Uninfected/C2P2_IMG_2_cell_2.PNG", "Uninfected"),
    ]
    reasons = dict(skipped)
    assert reasons["cell_images/Parasitized/Thumbs.db"].startswith("not an image file (suffix '.db'")
    for outside in (
        "cell_images/readme.txt",
        "cell_images/Uninfected/nested/C3_IMG_3.png",
        "__MACOSX/cell_images/Parasitized/._C1P1_IMG_1_cell_1.png",
    ):
        assert reasons[outside] == "outside the class folders (expected cell_images/<class>/<file>)"


def test_class_folders_at_the_top_level_are_accepted():
    candidates, skipped = sort_members(["Parasitized/a_IMG_1.jpg", "Uninfected/b_IMG_2.jpeg", "notes.txt"])
    assert candidates == [
        ("Parasitized/a_IMG_1.jpg", "Parasitized"),
        ("Uninfected/b_IMG_2.jpeg", "Uninfected"),
    ]
    assert skipped == [("notes.txt", "outside the class folders (expected <class>/<file>)")]


def test_patient_id_is_the_prefix_before_IMG():
    assert patient_id("cell_images/Parasitized/C33P1thinF_IMG_20150619_114756a_cell_179.png") == "C33P1thinF"
    assert patient_id("cell_images/Uninfected/cell_7.png") is None


def test_zip_and_folder_list_and_read_the_same_files(cell_folder: Path, tmp_path: Path):
    folder = ImageArchive.open(cell_folder)
    archive = ImageArchive.open(zip_folder(cell_folder, tmp_path / "cells.zip"))
    assert archive.is_zip and not folder.is_zip
    assert archive.members() == folder.members() and len(folder.members()) == 42
    member = folder.members()[5]
    assert archive.read(member) == folder.read(member) == (cell_folder / member).read_bytes()


def test_a_missing_source_says_how_to_set_it(tmp_path: Path):
    with pytest.raises(ArchiveError, match=r"does not exist.*ingestion\.source"):
        ImageArchive.open(tmp_path / "nowhere.zip")


def test_a_file_that_is_not_a_zip_is_named(tmp_path: Path):
    bogus = tmp_path / "cells.zip"
    bogus.write_text("not a zip")
    with pytest.raises(ArchiveError, match="cells.zip' is neither a folder nor a zip archive"):
        ImageArchive.open(bogus)


def test_a_truncated_zip_is_named_as_such(cell_folder: Path, tmp_path: Path):
    whole = zip_folder(cell_folder, tmp_path / "cells.zip").read_bytes()
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(whole[: len(whole) // 2])  # an interrupted copy: entries, but no directory
    with pytest.raises(
        ArchiveError, match=r"truncated.zip' is a damaged or truncated zip archive \(\d+ bytes"
    ):
        ImageArchive.open(truncated)
