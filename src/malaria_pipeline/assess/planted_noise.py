"""Plant known label errors in a copy of an archive, and score a label audit against them.

How well does the label audit find wrong labels? Move a seeded random sample of cells to the other
class's folder of a copy of the archive, run cross-validation on the copy, and compare its
``label_issues`` with the list of moved cells::

    python -m malaria_pipeline.assess.planted_noise plant --source cell_images.zip --out planted.zip --count 200
    kedro run --pipelines cross_validation --params "ingestion.source=$PWD/planted.zip"
    python -m malaria_pipeline.assess.planted_noise score --planted planted.csv --issues data/08_reporting/label_issues.csv

Plain Python: no Kedro, no torch.
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import zipfile
from pathlib import Path, PurePosixPath

import pandas as pd

CLASSES = ("Parasitized", "Uninfected")


def plant(source: Path, out: Path, count: int, seed: int) -> list[dict[str, str]]:
    """Copies the zip ``source`` to ``out`` with ``count`` seeded random cells moved to the other class's folder.

    Returns:
        One row per moved cell: ``original`` path, ``planted`` path, ``true_label``, ``planted_label``.
    """
    with zipfile.ZipFile(source) as archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        cells = [m.filename for m in members if _class_of(m.filename) is not None]
        if count > len(cells):
            raise ValueError(
                f"{source} holds {len(cells)} cells in {'/'.join(CLASSES)} folders, fewer than --count {count}"
            )
        moved = {name: _moved(name) for name in random.Random(seed).sample(sorted(cells), count)}
        clashes = sorted(set(moved.values()) & set(cells))
        if clashes:
            raise ValueError(
                f"Moving {clashes[0]} to the other class would overwrite a cell of that name: use another --seed"
            )
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as copy:
            for member in members:
                copy.writestr(moved.get(member.filename, member.filename), archive.read(member))
    return [
        {"original": name, "planted": new, "true_label": _class_of(name), "planted_label": _class_of(new)}
        for name, new in moved.items()
    ]


def score(planted: pd.DataFrame, issues: pd.DataFrame, images: int | None = None) -> dict[str, float]:
    """Recall of the planted errors among the flagged images, and the share of images flagged.

    Paths are compared from their ``<class>/<file>`` ending, so an archive with or without the
    ``cell_images/`` folder matches.
    """
    found = {_tail(p) for p in issues["path"]} & {_tail(p) for p in planted["planted"]}
    result = {
        "planted": len(planted),
        "flagged": len(issues),
        "planted_found": len(found),
        "recall": len(found) / len(planted) if len(planted) else 0.0,
    }
    if images:
        result.update(images=images, flagged_share=len(issues) / images)
    return result


def _class_of(name: str) -> str | None:
    parts = PurePosixPath(name).parts
    return parts[-2] if len(parts) >= 2 and parts[-2] in CLASSES and name.lower().endswith(".png") else None


def _moved(name: str) -> str:
    path = PurePosixPath(name)
    other = CLASSES[1 - CLASSES.index(path.parent.name)]
    return str(path.parent.parent / other / path.name)


def _tail(path: str) -> str:
    return "/".join(PurePosixPath(path).parts[-2:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m malaria_pipeline.assess.planted_noise", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    planting = commands.add_parser("plant", help="copy a zip with cells moved to the other class")
    planting.add_argument("--source", type=Path, required=True)
    planting.add_argument(
        "--out", type=Path, required=True, help="the new zip; the list goes beside it as .csv"
    )
    planting.add_argument("--count", type=int, default=200)
    planting.add_argument("--seed", type=int, default=0)
    scoring = commands.add_parser("score", help="recall of the planted cells among label_issues")
    scoring.add_argument("--planted", type=Path, required=True, help="the .csv that `plant` wrote")
    scoring.add_argument(
        "--issues", type=Path, required=True, help="a label_issues.csv version (or its folder: the latest)"
    )
    scoring.add_argument("--images", type=int, default=None, help="images audited, for the flagged share")
    args = parser.parse_args(argv)
    if args.command == "plant":
        rows = plant(args.source, args.out, args.count, args.seed)
        listing = args.out.with_suffix(".csv")
        with listing.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(
            f"{args.out}: {len(rows)} cells moved to the other class (seed {args.seed}); the list: {listing}"
        )
        return 0
    issues_path = args.issues
    if issues_path.is_dir():  # a versioned dataset's folder: its latest version
        issues_path = sorted(issues_path.iterdir())[-1] / issues_path.name
    result = score(pd.read_csv(args.planted), pd.read_csv(issues_path), args.images)
    print(", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
