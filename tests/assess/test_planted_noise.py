"""Planting label errors in a copy of an archive, and scoring an audit against them."""

import zipfile

import pandas as pd
import pytest

from malaria_pipeline.assess import planted_noise
from tests.helpers import SMALL_PATIENTS, write_cells, zip_folder


def small_zip(tmp_path):
    write_cells(tmp_path / "cells", SMALL_PATIENTS)
    return zip_folder(tmp_path / "cells", tmp_path / "cells.zip")


def test_planted_cells_move_to_the_other_class_byte_for_byte_and_the_rest_stays(tmp_path):
    source = small_zip(tmp_path)
    out = tmp_path / "planted.zip"
    assert (
        planted_noise.main(
            ["plant", "--source", str(source), "--out", str(out), "--count", "5", "--seed", "3"]
        )
        == 0
    )
    moved = pd.read_csv(out.with_suffix(".csv"))
    with zipfile.ZipFile(source) as before, zipfile.ZipFile(out) as after:
        old, new = set(before.namelist()), set(after.namelist())
        assert len(moved) == 5 and set(moved["original"]) <= old and not set(moved["original"]) & new
        for row in moved.itertuples():
            assert row.planted == row.original.replace(f"/{row.true_label}/", f"/{row.planted_label}/")
            assert {row.true_label, row.planted_label} == {"Parasitized", "Uninfected"}
            assert after.read(row.planted) == before.read(row.original)
        assert new - set(moved["planted"]) == old - set(moved["original"])
        for name in new - set(moved["planted"]):
            assert after.read(name) == before.read(name)
    again = tmp_path / "again.zip"
    planted_noise.plant(source, again, 5, seed=3)
    assert set(zipfile.ZipFile(again).namelist()) == new  # the seed decides


def test_the_score_is_the_share_of_planted_cells_among_the_flagged(tmp_path):
    planted = pd.DataFrame({"planted": [f"cell_images/Uninfected/c{i}.png" for i in range(4)]})
    issues = pd.DataFrame(
        {"path": ["Uninfected/c0.png", "cell_images/Uninfected/c2.png", "cell_images/Parasitized/c9.png"]}
    )
    assert planted_noise.score(planted, issues, images=100) == {
        "planted": 4,
        "flagged": 3,
        "planted_found": 2,
        "recall": 0.5,
        "images": 100,
        "flagged_share": 0.03,
    }


def test_more_cells_than_the_archive_holds_are_refused(tmp_path):
    source = small_zip(tmp_path)
    with pytest.raises(ValueError, match="holds 42 cells .* fewer than --count 500"):
        planted_noise.plant(source, tmp_path / "out.zip", 500, seed=0)
