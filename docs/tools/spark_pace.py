"""Times the ``inference`` pipeline and ``batch_inference`` on Spark over the same folder of cells, side by
side in one run, and prints the table of docs/batch-inference.md: wall time of the whole ``kedro run``,
cells/s and the peak of the summed resident memory of every process (``peak_rss.sh``).

    python docs/tools/spark_pace.py /work/cells_all models:/malaria-cell-classifier@champion \\
        [--variant "label=batch_inference.batch_size=null" ...] [--spark "label=spark.task.cpus:1" ...] \\
        [--runtimes torch,onnx,onnx_int8]

Run from the project root with MLFLOW_TRACKING_URI=sqlite:///mlflow.db, nothing else running. Each
``--variant "label=params"`` adds one more ``batch_inference`` run with those ``--params``, each
``--spark "label=key:value,..."`` one with those Spark settings (written to conf/local/spark.yml for
that run). ``--runtimes`` runs both pipelines on each ``inference.runtime`` in turn (the first is the
reference of the "against" columns).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
KEDRO = str(Path(sys.executable).parent / "kedro")


def timed(pipeline: str, params: str, spark: dict[str, str]) -> tuple[float, int, int]:
    """Wall seconds, peak summed RSS and peak summed PSS (MiB) of ``kedro run --pipelines pipeline
    --params params``, with the Spark settings ``spark`` in conf/local/spark.yml for that run."""
    local = Path("conf/local/spark.yml")
    if spark and local.exists():
        sys.exit(f"{local} exists: move it away to measure Spark settings")
    if spark:
        local.write_text("".join(f"{key}: {value}\n" for key, value in spark.items()))
    try:
        done = subprocess.run(
            [str(TOOLS / "peak_rss.sh"), KEDRO, "run", "--pipelines", pipeline, "--params", params],
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        if spark:
            local.unlink()
    found = re.search(
        r"wall ([\d.]+) s, peak summed RSS (\d+) MiB, peak summed PSS (\d+) MiB, exit (\d+)", done.stderr
    )
    if found is None or found.group(4) != "0":
        sys.exit(f"kedro run --pipelines {pipeline} failed:\n{done.stderr[-3000:]}")
    return float(found.group(1)), int(found.group(2)), int(found.group(3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cells", help="a folder of cell images")
    parser.add_argument("model_uri", help="the MLflow model both pipelines use")
    parser.add_argument("--variant", action="append", default=[], help="label=params of another batch run")
    parser.add_argument(
        "--spark",
        action="append",
        default=[],
        help="label=key:value,key:value: another batch run with these Spark settings (conf/local/spark.yml)",
    )
    parser.add_argument("--runtimes", default="", help="torch,onnx,onnx_int8: both pipelines on each runtime")
    args = parser.parse_args()
    cells = sum(1 for p in Path(args.cells).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    runs = [
        (
            "`inference` (one process)",
            "inference",
            f"inference.source={args.cells},inference.model_uri={args.model_uri}",
            {},
        ),
        (
            "`batch_inference` on `local[*]`",
            "batch_inference",
            f"batch_inference.source={args.cells},batch_inference.model_uri={args.model_uri}",
            {},
        ),
    ]
    if args.runtimes:
        runs = [
            (
                f"`{pipeline}`{' on `local[*]`' if pipeline == 'batch_inference' else ''}, {runtime}",
                pipeline,
                f"{params},{pipeline}.runtime={runtime}",
                {},
            )
            for runtime in args.runtimes.split(",")
            for _, pipeline, params, _ in runs[:2]
        ]
    for variant in args.variant:
        label, params = variant.split("=", 1)
        runs.append((f"`batch_inference`, {label}", "batch_inference", f"{runs[1][2]},{params}", {}))
    for variant in args.spark:
        label, settings = variant.split("=", 1)
        spark = dict(item.split(":", 1) for item in settings.split(","))
        runs.append((f"`batch_inference`, {label}", "batch_inference", runs[1][2], spark))
    print(f"{cells:,} cells of {args.cells}\n")
    print(
        "| run | wall (whole `kedro run`) | cells/s | against `inference` | peak PSS (summed) | against "
        "`inference` | peak RSS (summed) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    base = None
    for label, pipeline, params, spark in runs:
        wall, rss, pss = timed(pipeline, params, spark)
        base = base or (wall, pss)
        print(
            f"| {label} | {wall:.1f} s | {cells / wall:.0f} | {base[0] / wall:.2f}× | {pss:,} MiB | "
            f"{pss / base[1]:.2f}× | {rss:,} MiB |",
            flush=True,
        )


if __name__ == "__main__":
    main()
