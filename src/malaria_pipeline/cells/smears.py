"""Smears of known parasitized fraction, to check the patient table where the truth is known.

Each smear is a folder of cells drawn from patients a model never saw (a training run's test subset),
so many parasitized and the rest uninfected, without replacement within a smear. Scored with that model
through the inference pipeline (``inference.group_by=folder``), each folder's estimated fraction and
interval can be set against the fraction it was built with (``smears.csv``). No Kedro, no torch::

    python -m malaria_pipeline.cells.smears --source ../shared/data/malaria_cells_50px.zip \\
        --split data/05_model_input/data_split.parquet --out data/01_raw/smears
"""

from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from malaria_pipeline.cells.archive import ImageArchive, image_members, patient_id

logger = logging.getLogger(__name__)

FRACTIONS = (0, 0, 0, 0.002, 0.005, 0.01, 0.02, 0.05, 0.05, 0.1, 0.2)
CLASSES = ("Parasitized", "Uninfected")


def latest_version(path: Path) -> Path:
    """A Kedro versioned dataset's latest file (``<path>/<version>/<name>``), or ``path`` if it is a file."""
    if path.is_file():
        return path
    versions = sorted(p for p in path.iterdir() if (p / path.name).is_file()) if path.is_dir() else []
    if not versions:
        raise FileNotFoundError(f"{path} is neither a file nor a versioned dataset folder holding one")
    return versions[-1] / path.name


def cell_pools(archive: ImageArchive, patients: set[str]) -> dict[str, list[str]]:
    """The image members of ``patients`` by class (the class folder a file sits in), sorted."""
    members, _ = image_members(archive.members())
    pools: dict[str, list[str]] = {label: [] for label in CLASSES}
    for member in members:
        label = next((part for part in PurePosixPath(member).parts[:-1] if part in CLASSES), None)
        if label and patient_id(member) in patients:
            pools[label].append(member)
    return {label: sorted(cells) for label, cells in pools.items()}


def build_smears(
    archive: ImageArchive,
    patients: set[str],
    out: Path,
    *,
    fractions: tuple[float, ...] = FRACTIONS,
    cells: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Writes one folder per fraction under ``out`` (``smear_01_0.000``, …) and ``out/smears.csv``.

    Returns:
        One row per smear: ``folder``, ``cells``, ``parasitized``, ``fraction`` (exact: parasitized / cells).

    Raises:
        ValueError: the patients hold too few cells of a class for a smear, or ``out`` is not empty.
    """
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty: give a new folder for the smears")
    pools = cell_pools(archive, patients)
    rng = np.random.default_rng(seed)
    rows = []
    for number, fraction in enumerate(fractions, start=1):
        wanted = {"Parasitized": round(fraction * cells)}
        wanted["Uninfected"] = cells - wanted["Parasitized"]
        folder = out / f"smear_{number:02d}_{fraction:.3f}"
        folder.mkdir(parents=True)
        for label, count in wanted.items():
            if count > len(pools[label]):
                raise ValueError(
                    f"The {len(patients)} patients hold {len(pools[label])} {label} cells; smear {number} "
                    f"needs {count}. Give fewer --cells or more patients."
                )
            for member in rng.choice(pools[label], size=count, replace=False):
                (folder / PurePosixPath(member).name).write_bytes(archive.read(member))
        rows.append(
            {
                "folder": folder.name,
                "cells": cells,
                "parasitized": wanted["Parasitized"],
                "fraction": wanted["Parasitized"] / cells,
            }
        )
    table = pd.DataFrame(rows)
    table.to_csv(out / "smears.csv", index=False, quoting=csv.QUOTE_MINIMAL)
    logger.info("Wrote %d smears of %d cells to %s", len(table), cells, out)
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m malaria_pipeline.cells.smears", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--source", required=True, help="the archive the model was trained on (zip or folder)"
    )
    parser.add_argument(
        "--split",
        required=True,
        type=Path,
        help="the training run's data_split (a parquet file or its versioned dataset folder: the latest)",
    )
    parser.add_argument("--subset", default="test", help="whose patients to draw from (default: test)")
    parser.add_argument("--out", required=True, type=Path, help="a new folder for the smears")
    parser.add_argument("--cells", type=int, default=1000, help="cells per smear (default: 1000)")
    parser.add_argument(
        "--fractions",
        default=",".join(f"{f:g}" for f in FRACTIONS),
        help="parasitized fraction of each smear, comma-separated (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    split = pd.read_parquet(latest_version(args.split))
    patients = {patient_id(path) for path in split.loc[split["subset"] == args.subset, "path"]} - {None}
    if not patients:
        parser.error(f"{args.split} has no patients in the subset {args.subset!r}")
    table = build_smears(
        ImageArchive.open(args.source, parameter="--source"),
        patients,
        args.out,
        fractions=tuple(float(f) for f in args.fractions.split(",")),
        cells=args.cells,
        seed=args.seed,
    )
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
