"""The served model on each runtime: cold start, memory and pace of ``mlflow models serve``, side by side.

For each runtime in turn (``MALARIA_PIPELINE_RUNTIME``, which the served model reads over its
``model_config``), starts ``mlflow models serve`` of the model on 127.0.0.1 and measures:

- cold start: from the command's start to the first answer of a request of 256 cells (``/ping`` answers
  before the model is loaded: the first request is what a client waits for);
- memory: the summed PSS and RSS of the server's processes (``/proc/<pid>/smaps_rollup``) after that
  answer, and whether any of them mapped PyTorch's library;
- pace: cells/s over ``--requests`` more requests of 256 cells.

    MLFLOW_TRACKING_URI=sqlite:///mlflow.db .venv/bin/python docs/tools/serve_pace.py \\
        runs:/<run id>/model ../shared/data/malaria_cells_50px.zip [--runtimes torch,onnx,onnx_int8]

Run from the project root, nothing else running. The cells are the first 256 × (requests + 1) files of
the zip, as base64 PNG.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

MLFLOW = str(Path(sys.executable).parent / "mlflow")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(port: int, rows: list[str]) -> list[dict]:
    body = json.dumps({"dataframe_split": {"columns": ["image"], "data": [[row] for row in rows]}}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())["predictions"]


def session_memory(session: int) -> tuple[int, int, bool]:
    """Summed PSS and RSS (MiB) of the processes of ``session``, and whether one maps libtorch."""
    pss = rss = 0
    torch = False
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if os.getsid(int(proc.name)) != session:
                continue
            for line in (proc / "smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1])
                elif line.startswith("Rss:"):
                    rss += int(line.split()[1])
            torch = torch or "libtorch" in (proc / "maps").read_text()
        except (OSError, ProcessLookupError):
            continue
    return pss // 1024, rss // 1024, torch


def measure(model_uri: str, runtime: str, requests: list[list[str]]) -> dict:
    port = free_port()
    env = {
        **os.environ,
        "MALARIA_PIPELINE_RUNTIME": runtime,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    command = [MLFLOW, "models", "serve", "-m", model_uri, "--env-manager", "local", "--host", "127.0.0.1"]
    started = time.perf_counter()
    server = subprocess.Popen(
        [*command, "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        while True:
            try:
                answers = post(port, requests[0])
                break
            except OSError:
                if server.poll() is not None:
                    sys.exit(f"mlflow models serve ({runtime}) stopped")
                time.sleep(0.1)
        cold = time.perf_counter() - started
        pss, rss, torch = session_memory(server.pid)
        timed = time.perf_counter()
        for rows in requests[1:]:
            post(port, rows)
        pace = sum(len(rows) for rows in requests[1:]) / (time.perf_counter() - timed)
        return {
            "runtime": runtime,
            "cold": cold,
            "pss": pss,
            "rss": rss,
            "torch": torch,
            "pace": pace,
            "answers": answers,
        }
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_uri")
    parser.add_argument("cells", help="a zip of cell images")
    parser.add_argument("--runtimes", default="torch,onnx,onnx_int8")
    parser.add_argument("--requests", type=int, default=20)
    args = parser.parse_args()
    with zipfile.ZipFile(args.cells) as archive:
        names = [n for n in archive.namelist() if n.lower().endswith(".png")][: 256 * (args.requests + 1)]
        rows = [base64.b64encode(archive.read(name)).decode("ascii") for name in names]
    requests = [rows[start : start + 256] for start in range(0, len(rows), 256)]
    results = [measure(args.model_uri, runtime, requests) for runtime in args.runtimes.split(",")]
    base = results[0]
    print(
        "| runtime | cold start (to the first answer of 256 cells) | summed PSS | summed RSS | libtorch loaded | cells/s |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for result in results:
        print(
            f"| {result['runtime']} | {result['cold']:.1f} s ({result['cold'] / base['cold']:.2f}×) | "
            f"{result['pss']:,} MiB ({result['pss'] / base['pss']:.2f}×) | {result['rss']:,} MiB | "
            f"{'yes' if result['torch'] else 'no'} | {result['pace']:.0f} |"
        )
    for result in results[1:]:
        gap = max(
            abs(a["p_parasitized"] - b["p_parasitized"]) for a, b in zip(result["answers"], base["answers"])
        )
        same = all(a["label"] == b["label"] for a, b in zip(result["answers"], base["answers"]))
        print(
            f"\n{result['runtime']} against {base['runtime']}: largest |Δp| {gap:.2g}, labels {'the same' if same else 'differ'}"
        )


if __name__ == "__main__":
    main()
