"""Smears of known parasitized fraction, built from a training run's test patients."""

import zipfile

import pandas as pd
import pytest

from malaria_pipeline.cells.archive import ImageArchive
from malaria_pipeline.cells.smears import main


def _archive(tmp_path):
    """P1 and P2 are test patients (20 parasitized and 30 uninfected cells between them); P3 is not."""
    path = tmp_path / "cells.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for patient, parasitized, uninfected in (("P1", 12, 15), ("P2", 8, 15), ("P3", 50, 50)):
            for label, count in (("Parasitized", parasitized), ("Uninfected", uninfected)):
                for i in range(count):
                    archive.writestr(
                        f"cell_images/{label}/{patient}_IMG_{label}_cell_{i}.png", f"{patient}{label}{i}"
                    )
    split = pd.DataFrame(
        {
            "path": [
                "cell_images/Parasitized/P1_IMG_x.png",
                "cell_images/Uninfected/P2_IMG_y.png",
                "cell_images/Parasitized/P3_IMG_z.png",
            ],
            "subset": ["test", "test", "train"],
        }
    )
    version = tmp_path / "data_split.parquet" / "2026-01-01T00.00.00.000Z"
    version.mkdir(parents=True)
    split.to_parquet(version / "data_split.parquet")
    return path, tmp_path / "data_split.parquet"


def test_each_smear_holds_its_fraction_of_test_patients_cells_and_no_cell_twice(tmp_path):
    source, split = _archive(tmp_path)
    out = tmp_path / "smears"
    main(
        [
            "--source",
            str(source),
            "--split",
            str(split),
            "--out",
            str(out),
            "--cells",
            "25",
            "--fractions",
            "0,0.2,0.6",
        ]
    )
    table = pd.read_csv(out / "smears.csv")
    assert table.to_dict("records") == [
        {"folder": "smear_01_0.000", "cells": 25, "parasitized": 0, "fraction": 0.0},
        {"folder": "smear_02_0.200", "cells": 25, "parasitized": 5, "fraction": 0.2},
        {"folder": "smear_03_0.600", "cells": 25, "parasitized": 15, "fraction": 0.6},
    ]
    for row in table.itertuples():
        files = sorted(p.name for p in (out / row.folder).iterdir())
        assert len(files) == len(set(files)) == 25
        assert sum("_IMG_Parasitized_" in name for name in files) == row.parasitized
        assert all(name.startswith(("P1_", "P2_")) for name in files)  # never P3, a training patient
        assert (
            ImageArchive.open(out / row.folder).read(files[0])
            == (
                files[0].split("_IMG_")[0]
                + files[0].split("_IMG_")[1].split("_cell_")[0]
                + files[0].rsplit("_", 1)[1][:-4]
            ).encode()
        )


def test_too_few_cells_of_a_class_is_a_clear_error(tmp_path):
    source, split = _archive(tmp_path)
    with pytest.raises(ValueError, match="hold 20 Parasitized cells; smear 1 needs 25"):
        main(
            [
                "--source",
                str(source),
                "--split",
                str(split),
                "--out",
                str(tmp_path / "s"),
                "--cells",
                "25",
                "--fractions",
                "1",
            ]
        )
