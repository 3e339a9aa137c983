"""The review queue in Label Studio, the open-source labelling tool: the project's labelling interface, the
tasks it holds (one per patient), and the reviewers' verdicts read back.

Label Studio runs in an environment of its own (``make label-studio``: ``.venv-label-studio``, its data
under ``.label-studio/``); the project talks to it over HTTP with its SDK (``label-studio-sdk``, in that environment:
:mod:`~malaria_pipeline.framework.label_studio_client`), through the catalog dataset
:class:`LabelStudioProjectDataset` (``review_tasks``): saving imports the queue's tasks that the project does
not hold yet, loading reads every task back with its annotations.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd
from kedro.io.core import AbstractDataset, DatasetError

from malaria_pipeline.assess.review import VERDICTS
from malaria_pipeline.ml.images import one_line

logger = logging.getLogger(__name__)

# One task is one patient: its summary on top, then its cells ranked, each the cell beside its Grad-CAM
# heatmap, its caption (rank, P(Parasitized), the model's answer), and the reviewer's choice. Repeater
# repeats the block for each entry of the task's "cells"; the choice of cell i is "verdict_<i>".
LABEL_CONFIG = """<View>
  <Header value="$summary"/>
  <Header size="6" value="Left: the cell. Right: where the network found the evidence for Parasitized (Grad-CAM). Answer each cell: Parasitized, Uninfected or Unsure."/>
  <Repeater on="$cells" indexFlag="{{idx}}">
    <View style="display: flex; align-items: center; gap: 16px; border-bottom: 1px solid #ddd; padding: 6px 0">
      <View style="width: 410px; flex: none">
        <Image name="cell_{{idx}}" value="$cells[{{idx}}].image" width="400px" zoom="false" zoomControl="false" rotateControl="false"/>
      </View>
      <View>
        <Text name="caption_{{idx}}" value="$cells[{{idx}}].caption"/>
        <Choices name="verdict_{{idx}}" toName="cell_{{idx}}" choice="single-radio" showInline="true" required="true">
          <Choice value="Parasitized"/>
          <Choice value="Uninfected"/>
          <Choice value="Unsure"/>
        </Choices>
      </View>
    </View>
  </Repeater>
</View>
"""
CHOICE = re.compile(r"^verdict_(\d+)$")
# Where the API token is read from when the credentials do not say (conf/base/credentials.yml names the
# environment variable when the token comes from there).
TOKEN_FROM = "conf/local/credentials.yml (label_studio.api_key)"
MAKE_TARGET = "make label-studio"


def task_of(cells: pd.DataFrame, overlays: dict[str, bytes], positive: str) -> dict[str, Any]:
    """The Label Studio task of one patient's queued cells (rows of ``review_queue``, ranked): its data
    (the summary, and each cell's overlay as a PNG data URL with its caption and identity) and the
    model's answer on each cell as a prediction (pre-annotation)."""
    first = cells.iloc[0]
    kind, patient = first["kind"], str(first["patient"])
    data_cells, result = [], []
    for i, row in enumerate(cells.itertuples()):
        image = "data:image/png;base64," + base64.b64encode(overlays[row.overlay]).decode("ascii")
        caption = f"Cell {int(row.rank)} of {len(cells)} · P({positive}) {row.p_parasitized:.3f}"
        caption += (
            f" · labelled {row.given_label}, the model says {row.suggested_label}"
            if kind == "label_issue"
            else f" · the model says {row.model_label}"
        )
        data_cells.append(
            {"rank": int(row.rank), "image": image, "caption": caption, "file": row.file, "sha1": row.sha1}
        )
        result.append(
            {
                "from_name": f"verdict_{i}",
                "to_name": f"cell_{i}",
                "type": "choices",
                "value": {"choices": [row.model_label]},
            }
        )
    return {
        "data": {
            "task_key": first["task_key"],
            "kind": kind,
            "patient": patient,
            "summary": _summary(first, len(cells)),
            "cells": data_cells,
        },
        "predictions": [
            {
                "model_version": str(first["model"])[-200:],
                "score": float(cells["p_parasitized"].max()),
                "result": result,
            }
        ],
    }


def _summary(row: pd.Series, shown: int) -> str:
    if row["kind"] == "label_issue":
        return f"Patient {row['patient']}: {shown} cells whose archive label the label audit doubts"
    return (
        f"Patient {row['patient']} · {int(row['patient_cells'])} cells · the model calls it {row['call']} · "
        f"parasitized {row['fraction']:.2%} ({row['fraction_low']:.2%} to {row['fraction_high']:.2%}) · "
        f"chance that a healthy patient shows as many: {row['healthy_chance']:.2g} · the {shown} cells of "
        "highest P(Parasitized), highest first"
    )


VERDICT_COLUMNS = [
    "task_id",
    "task_key",
    "kind",
    "patient",
    "rank",
    "file",
    "sha1",
    "verdict",
    "reviewer",
    "reviewed_at",
    "annotation_id",
]


def verdicts_of(project: dict[str, Any]) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """The verdicts of a project read back (:meth:`LabelStudioProjectDataset.load`): one row per cell
    answered in an annotation (:data:`VERDICT_COLUMNS`), and what was skipped, each with its reason: an
    annotation of a task that the review pipeline did not make, a choice other than Parasitized,
    Uninfected or Unsure, a cell the task does not have. Skipped (cancelled) annotations give no verdict.
    """
    rows, skipped = [], []
    for task in project["tasks"]:
        data = task["data"]
        for annotation in task["annotations"]:
            if annotation.get("was_cancelled"):
                continue
            where = {"task_id": task["id"], "annotation_id": annotation["id"]}
            if "task_key" not in data or "cells" not in data:
                skipped.append({**where, "reason": "the task was not made by the review pipeline"})
                continue
            reviewer = project["users"].get(
                annotation.get("completed_by"), str(annotation.get("completed_by"))
            )
            for result in annotation.get("result") or []:
                match = CHOICE.match(str(result.get("from_name", "")))
                choices = (result.get("value") or {}).get("choices") or []
                if not match or int(match.group(1)) >= len(data["cells"]):
                    skipped.append({**where, "reason": f"no cell {result.get('from_name')!r} in the task"})
                    continue
                if len(choices) != 1 or choices[0] not in VERDICTS:
                    skipped.append(
                        {**where, "reason": f"unknown choice {choices!r}: give one of {', '.join(VERDICTS)}"}
                    )
                    continue
                cell = data["cells"][int(match.group(1))]
                rows.append(
                    {
                        "task_id": int(task["id"]),
                        "task_key": data["task_key"],
                        "kind": data.get("kind"),
                        "patient": data.get("patient"),
                        "rank": int(cell["rank"]),
                        "file": cell["file"],
                        "sha1": cell["sha1"],
                        "verdict": choices[0],
                        "reviewer": reviewer,
                        "reviewed_at": annotation.get("updated_at") or annotation.get("created_at"),
                        "annotation_id": int(annotation["id"]),
                    }
                )
    return pd.DataFrame(rows, columns=VERDICT_COLUMNS), skipped


class LabelStudioProjectDataset(AbstractDataset[list[dict[str, Any]], dict[str, Any]]):
    """A Label Studio project that holds the review queue: saving imports tasks (those whose ``task_key``
    the project does not hold yet, so that a queue made again adds nothing twice), loading reads every
    task of the project with its annotations (images left out) and the reviewers' e-mail addresses.

    The SDK runs in Label Studio's own environment (``environment``: its ``bin/python`` runs
    :mod:`~malaria_pipeline.framework.label_studio_client`). The project is made with :data:`LABEL_CONFIG`
    the first time. The API token comes from the credentials (``api_key``; ``token_from`` says where it was
    read, for messages): a legacy token, or a personal access token. It goes to the SDK's process in its
    environment and is never logged.

    Example ``catalog.yml`` entry:

    .. code-block:: yaml

        review_tasks:
          type: malaria_pipeline.framework.label_studio.LabelStudioProjectDataset
          url: http://127.0.0.1:8080
          project: Malaria review
          credentials: label_studio
    """

    def __init__(
        self,
        *,
        url: str,
        project: str,
        credentials: dict[str, Any] | None = None,
        environment: str = ".venv-label-studio",
        timeout: float = 30.0,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._url = str(url).rstrip("/")
        self._title = project
        credentials = credentials or {}
        self._token = credentials.get("api_key")
        self._token_from = credentials.get("token_from") or TOKEN_FROM
        self._python = Path(environment) / "bin" / "python"
        self._timeout = timeout
        self.metadata = metadata

    def save(self, data: list[dict[str, Any]]) -> None:
        answer = self._run(
            "import",
            {
                "title": self._title,
                "label_config": LABEL_CONFIG,
                "description": "The cells of the patients that the model sent to review (malaria-pipeline, "
                "docs/review.md)",
                "tasks": data,
            },
        )
        logger.info(
            "Label Studio project %r (%s/projects/%d/data): %d tasks imported, %d already there; open it in a "
            "browser and log in to review",
            self._title,
            self._url,
            answer["project_id"],
            answer["imported"],
            answer["held"],
        )

    def load(self) -> dict[str, Any]:
        answer = self._run("export", {"title": self._title})
        return {
            "url": self._url,
            "project_id": answer["project_id"],
            "tasks": answer["tasks"],
            "users": {int(user): email for user, email in answer["users"].items()},
        }

    def _run(self, command: str, request: dict[str, Any]) -> dict[str, Any]:
        """Runs one command of the SDK's process; a server that does not answer, or refuses the token, fails
        by name."""
        if not self._token:
            raise DatasetError(
                "No Label Studio API token: set label_studio.api_key in conf/local/credentials.yml or the "
                f"environment variable LABEL_STUDIO_API_KEY (docs/review.md). It was read from {self._token_from}."
            )
        if not self._python.exists():
            raise DatasetError(
                f"Label Studio's environment is missing ({self._python}): run `make label-studio-install` "
                "(docs/review.md)"
            )
        environment = {
            **os.environ,
            "LABEL_STUDIO_URL": self._url,
            "LABEL_STUDIO_API_KEY": str(self._token),
            "LABEL_STUDIO_TIMEOUT": str(self._timeout),
        }
        done = subprocess.run(
            [str(self._python), str(Path(__file__).with_name("label_studio_client.py")), command],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            env=environment,
            check=False,
        )
        try:
            answer = json.loads(done.stdout)
        except json.JSONDecodeError:
            raise DatasetError(
                f"Label Studio's SDK ({self._python}) failed on {command!r} (exit status {done.returncode}): "
                + one_line(done.stderr[-2000:] or "no output")
            ) from None
        error = answer.get("error")
        if error == "unreachable":
            raise DatasetError(
                f"Label Studio is not reachable at {self._url} ({answer['detail']}): start it with "
                f"`{MAKE_TARGET}` (docs/review.md), or point label_studio_url in conf/local/globals.yml at yours"
            )
        if error == "unauthorized":
            raise DatasetError(
                f"Label Studio at {self._url} refused the API token read from {self._token_from} "
                f"({answer['detail']}): copy the token of your account (Account & Settings in Label Studio) "
                "there; a legacy token needs LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true (docs/review.md)"
            )
        if error:
            raise DatasetError(f"Label Studio at {self._url} answered {answer['detail']}")
        return answer

    def _describe(self) -> dict[str, Any]:
        return {"url": self._url, "project": self._title}

    def _exists(self) -> bool:
        return True
