"""Nodes of the collect_reviews pipeline: the reviewers' verdicts read back from Label Studio, the patients'
final calls, and the label corrections that the next ingestion applies."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from malaria_pipeline.assess.review import NEGATIVE_VERDICT, POSITIVE_VERDICT, UNDECIDED, final_calls
from malaria_pipeline.cells.corrections import CORRECTION_COLUMNS
from malaria_pipeline.framework import tracking
from malaria_pipeline.framework.label_studio import verdicts_of

logger = logging.getLogger(__name__)


def collect_reviews(
    review_tasks: dict[str, Any],
    review_queue: pd.DataFrame,
    review_patients: pd.DataFrame,
    previous_reviewed_cells: pd.DataFrame,
    previous_label_corrections: pd.DataFrame,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Reads every verdict of the Label Studio project, and makes of them:

    - ``reviewed_cells``: one row per verdict on a cell (``VERDICT_COLUMNS`` of :mod:`~malaria_pipeline.framework.label_studio`:
      cell, patient, verdict, reviewer, time, task), all the project's tasks (earlier queues' too). The
      project is read whole each time, so collecting again adds nothing twice;
    - ``final_calls``: one row per patient of ``review_patients`` (the patient table that the latest queue
      was made of: ``patient_predictions``, or ``batch_patients`` of a Spark run), with the model's call, the
      final call and who made it (:func:`~malaria_pipeline.assess.review.final_calls`, on the tasks of the
      latest ``review_queue``);
    - ``label_corrections``: one row per cell whose verdicts agree on Parasitized or Uninfected
      (:data:`~malaria_pipeline.cells.corrections.CORRECTION_COLUMNS`), with the file's bytes (from the
      queue, or the previous corrections) so that a new cell can join the training images;
    - ``review_report``: what was read, what was skipped and why, and the counts (also MLflow metrics
      ``review.*``).

    An annotation that cannot be used (a choice Label Studio let through that is none of Parasitized,
    Uninfected or Unsure, a task the review pipeline did not make) is counted, reported and skipped; so is
    a verdict collected before whose task no longer exists. Nothing else is lost.
    """
    verdicts, skipped = verdicts_of(review_tasks)
    # Label Studio on SQLite gives a deleted task's id to the next one: a task is the same by id and key
    existing = {(int(task["id"]), task["data"].get("task_key")) for task in review_tasks["tasks"]}
    vanished = _vanished(previous_reviewed_cells, existing)
    queue = review_queue[review_queue["kind"] == "patient"]
    calls = final_calls(review_patients, queue, verdicts)
    corrections, unsettled = _corrections(verdicts, review_queue, previous_label_corrections)

    report = {
        "label_studio": f"{review_tasks['url']}/projects/{review_tasks['project_id']}/data"
        if review_tasks["project_id"] is not None
        else None,
        "tasks": len(review_tasks["tasks"]),
        "queued_tasks": int(review_queue["task_key"].nunique()),
        "queued_tasks_reviewed": int(
            verdicts.loc[verdicts["task_key"].isin(set(review_queue["task_key"])), "task_key"].nunique()
        ),
        "annotations": int(verdicts["annotation_id"].nunique()),
        "verdicts": int(len(verdicts)),
        "by_verdict": {name: int(n) for name, n in verdicts["verdict"].value_counts().sort_index().items()},
        "skipped": skipped + vanished,
        "final_calls": {name: int(n) for name, n in calls["final_call"].value_counts().sort_index().items()},
        "decided_by_reviewers": int((~calls["decided_by"].isin(["model", UNDECIDED])).sum()),
        "still_in_review": calls.loc[calls["final_call"] == "review", ["patient", "reason"]].to_dict(
            "records"
        ),
        "label_corrections": int(len(corrections)),
        "not_corrected": unsettled,
    }
    _log(report, calls)
    tracking.log_metrics(
        {
            "review.verdicts": report["verdicts"],
            "review.skipped": len(report["skipped"]),
            "review.decided_by_reviewers": report["decided_by_reviewers"],
            "review.label_corrections": report["label_corrections"],
            **{
                f"review.final_calls.{call}": report["final_calls"].get(call, 0)
                for call in ("positive", "negative", "review")
            },
        }
    )
    return verdicts, calls, corrections, report


def _vanished(previous: pd.DataFrame, existing: set[tuple[int, str]]) -> list[dict[str, Any]]:
    """The verdicts collected before whose task no longer exists in Label Studio: reported, not kept."""
    if previous.empty:
        return []
    there = [(int(task), key) in existing for task, key in zip(previous["task_id"], previous["task_key"])]
    gone = previous[~pd.Series(there, index=previous.index, dtype=bool)]
    return [
        {
            "task_id": int(task),
            "annotation_id": int(annotation),
            "reason": f"task {int(task)} no longer exists in Label Studio (deleted since the last collection)",
        }
        for task, annotation in gone[["task_id", "annotation_id"]].drop_duplicates().itertuples(index=False)
    ]


def _corrections(
    verdicts: pd.DataFrame, queue: pd.DataFrame, previous: pd.DataFrame
) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """The label corrections of the verdicts: one per cell (SHA-1) whose every verdict is Parasitized, or
    every one Uninfected; the cells left as they are (Unsure, reviewers who disagree), with the reason."""
    images = dict(zip(previous.get("sha1", []), previous.get("image", [])))
    images.update({sha1: data for sha1, data in zip(queue["sha1"], queue["image"]) if data is not None})
    rows, unsettled = [], []
    for sha1, given in verdicts.groupby("sha1", sort=True):
        distinct = set(given["verdict"])
        last = given.sort_values("reviewed_at").iloc[-1]
        if len(distinct) > 1:
            unsettled.append(
                {"file": last["file"], "reason": "reviewers disagree: " + ", ".join(sorted(distinct))}
            )
            continue
        verdict = distinct.pop()
        if verdict not in (POSITIVE_VERDICT, NEGATIVE_VERDICT):
            unsettled.append({"file": last["file"], "reason": verdict})
            continue
        image = images.get(sha1)
        rows.append(
            {
                "sha1": sha1,
                "file": last["file"],
                "patient_id": last["patient"],
                "label": verdict,
                "task_id": int(last["task_id"]),
                "reviewers": ", ".join(sorted(set(given["reviewer"]))),
                "reviewed_at": str(last["reviewed_at"]),
                "source": "Label Studio task " + ", ".join(str(t) for t in sorted(set(given["task_id"]))),
                "image": None if image is None or pd.isna(image) else bytes(image),
            }
        )
    return pd.DataFrame(rows, columns=CORRECTION_COLUMNS), unsettled


def _log(report: dict[str, Any], calls: pd.DataFrame) -> None:
    logger.info(
        "Collected %d verdicts of %d annotations from %s (%s); %d skipped",
        report["verdicts"],
        report["annotations"],
        report["label_studio"],
        ", ".join(f"{v} {n}" for v, n in report["by_verdict"].items()) or "none",
        len(report["skipped"]),
    )
    for row in report["skipped"]:
        logger.warning(
            "Skipped annotation %s of task %s: %s", row["annotation_id"], row["task_id"], row["reason"]
        )
    for row in calls[calls["task_key"].notna()].itertuples():
        logger.info(
            "Patient %s: the model called it %s, now %s (%s%s)",
            row.patient,
            row.model_call,
            row.final_call,
            row.reason,
            f"; by {row.decided_by}" if row.decided_by != UNDECIDED else "",
        )
    logger.info(
        "Final calls: %s; %d label corrections for the next ingestion",
        ", ".join(f"{call} {n}" for call, n in report["final_calls"].items()),
        report["label_corrections"],
    )
