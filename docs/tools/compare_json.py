"""Compares two JSON reports number by number: ``python docs/tools/compare_json.py BEFORE AFTER``.

Each argument is a JSON file, or a Kedro versioned dataset's folder (``data/08_reporting/cv_metrics.json``),
of which the latest version is read. Prints how many leaves are equal and each one that differs.
Used for docs/cross-validation.md (the same answers before and after the folds became pipelines).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def read(path: Path) -> Any:
    if path.is_dir():  # a versioned dataset: <name>/<version>/<name>
        path = sorted(path.iterdir())[-1] / path.name
    print(path)
    return json.loads(path.read_text())


def leaves(tree: Any, prefix: str = ""):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from leaves(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from leaves(value, f"{prefix}[{i}]")
    else:
        yield prefix, tree


def main(before: str, after: str) -> None:
    a, b = dict(leaves(read(Path(before)))), dict(leaves(read(Path(after))))
    differ = [key for key in a if key in b and a[key] != b[key]]
    print(
        f"{len(a)} leaves before, {len(b)} after: {len(a) - len(differ) - len(set(a) - set(b))} equal, "
        f"{len(differ)} differ, {len(set(a) - set(b))} only before, {len(set(b) - set(a))} only after"
    )
    for key in differ:
        print(f"  {key}: {a[key]!r} -> {b[key]!r}")
    for key in sorted(set(a) ^ set(b)):
        print(f"  only {'before' if key in a else 'after'}: {key} = {a.get(key, b.get(key))!r}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
