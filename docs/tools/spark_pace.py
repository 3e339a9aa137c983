"""Times the ``inference`` pipeline and ``batch_inference`` on Spark over the same folder of cells, side by
side in one run, and prints the table of docs/batch-inference.md: wall time of the whole ``kedro run``,
cells/s and the peak of the summed resident memory of every process (``peak_rss.sh``).

    python docs/tools/spark_pace.py /work/cells_all models:/malaria-cell-classifier@champion \\
        [--variant "torch threads: torch's default=batch_inference.torch_threads=null" ...]

Run from the project root with MLFLOW_TRACKING_URI=sqlite:///mlflow.db, nothing else running. Each
``--variant "label=params"`` adds one more ``batch_inference`` run with those ``--params``.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
KEDRO = str(Path(sys.executable).parent / "kedro")


def timed(pipeline: str, params: str) -> tuple[float, int]:
    """Wall seconds and peak summed RSS (MiB) of ``kedro run --pipelines pipeline --params params``."""
    done = subprocess.run(
        [str(TOOLS / "peak_rss.sh"), KEDRO, "run", "--pipelines", pipeline, "--params", params],
        capture_output=True,
        text=True,
        check=False,
    )
    found = re.search(r"wall ([\d.]+) s, peak summed RSS (\d+) MiB, exit (\d+)", done.stderr)
    if found is None or found.group(3) != "0":
        sys.exit(f"kedro run --pipelines {pipeline} failed:\n{done.stderr[-3000:]}")
    return float(found.group(1)), int(found.group(2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cells", help="a folder of cell images")
    parser.add_argument("model_uri", help="the MLflow model both pipelines use")
    parser.add_argument("--variant", action="append", default=[], help="label=params of another batch run")
    args = parser.parse_args()
    cells = sum(1 for p in Path(args.cells).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    runs = [
        (
            "`inference` (one process)",
            "inference",
            f"inference.source={args.cells},inference.model_uri={args.model_uri}",
        ),
        (
            "`batch_inference` on `local[*]`",
            "batch_inference",
            f"batch_inference.source={args.cells},batch_inference.model_uri={args.model_uri}",
        ),
    ]
    for variant in args.variant:
        label, params = variant.split("=", 1)
        runs.append((f"`batch_inference`, {label}", "batch_inference", f"{runs[1][2]},{params}"))
    print(f"{cells:,} cells of {args.cells}\n")
    print(
        "| run | wall (whole `kedro run`) | cells/s | against `inference` | peak memory (summed) | against `inference` |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    base = None
    for label, pipeline, params in runs:
        wall, peak = timed(pipeline, params)
        base = base or (wall, peak)
        print(
            f"| {label} | {wall:.1f} s | {cells / wall:.0f} | {base[0] / wall:.2f}× | {peak:,} MiB | "
            f"{peak / base[1]:.2f}× |",
            flush=True,
        )


if __name__ == "__main__":
    main()
