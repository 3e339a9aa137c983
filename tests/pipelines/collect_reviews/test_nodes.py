"""collect_reviews on a project read back by hand: the verdicts, the final calls, the label corrections with
the files they need, and what was skipped, against hand-worked tables."""

import pandas as pd

from malaria_pipeline.cells.corrections import CORRECTION_COLUMNS
from malaria_pipeline.pipelines.collect_reviews.nodes import collect_reviews

P, U = "Parasitized", "Uninfected"


def task(number, key, patient, cells, *annotations):
    return {
        "id": number,
        "data": {
            "task_key": key,
            "kind": "patient",
            "patient": patient,
            "cells": [{"rank": i + 1, "file": f, "sha1": f"sha-{f}"} for i, f in enumerate(cells)],
        },
        "annotations": [
            {
                "id": a_id,
                "completed_by": by,
                "updated_at": f"2026-12-06T10:{a_id:02d}:00Z",
                "result": [
                    {
                        "from_name": f"verdict_{i}",
                        "to_name": f"cell_{i}",
                        "type": "choices",
                        "value": {"choices": [c]},
                    }
                    for i, c in enumerate(choices)
                    if c
                ],
            }
            for a_id, by, choices in annotations
        ],
    }


PATIENTS = pd.DataFrame(
    {
        "patient": ["A", "B", "C"],
        "cells": [80, 90, 100],
        "fraction": [0.01, 0.02, 0.0],
        "fraction_low": [0.0, 0.0, 0.0],
        "fraction_high": [0.05, 0.06, 0.01],
        "healthy_chance": [0.01, 0.002, 0.9],
        "call": ["review", "review", "negative"],
    }
)


def queue():
    rows = [
        ("patient/A/1", "A", 1, "a1.png"),
        ("patient/A/1", "A", 2, "a2.png"),
        ("patient/B/1", "B", 1, "b1.png"),
        ("patient/B/1", "B", 2, "b2.png"),
    ]
    return pd.DataFrame(
        {
            "task_key": [r[0] for r in rows],
            "kind": "patient",
            "patient": [r[1] for r in rows],
            "rank": [r[2] for r in rows],
            "file": [r[3] for r in rows],
            "sha1": [f"sha-{r[3]}" for r in rows],
            "image": [f"bytes of {r[3]}".encode() if r[3] != "b2.png" else None for r in rows],
        }
    )


def test_collect_reviews_makes_final_calls_and_corrections_and_reports_what_it_skipped():
    project = {
        "url": "http://127.0.0.1:8080",
        "project_id": 3,
        "users": {1: "ann@example.org", 2: "bob@example.org"},
        "tasks": [
            task(10, "patient/A/1", "A", ["a1.png", "a2.png"], (1, 1, [U, P])),
            task(11, "patient/B/1", "B", ["b1.png", "b2.png"], (2, 1, [U, U]), (3, 2, [P, U])),
        ],
    }
    # the collection before saw an annotation of task 9, deleted since; and task 11 then held another queue
    previous = pd.DataFrame(
        {
            "task_id": [9, 11],
            "task_key": ["patient/Z/1", "patient/Q/0"],
            "annotation_id": [1, 1],
        }
    )
    kept = pd.DataFrame(
        [{"sha1": "sha-b2.png", "image": b"kept bytes of b2.png"}], columns=CORRECTION_COLUMNS
    )
    cells, calls, corrections, report = collect_reviews(project, queue(), PATIENTS, previous, kept)

    assert len(cells) == 6 and set(cells["task_id"]) == {10, 11}
    calls = calls.set_index("patient")
    # A: cell 2 confirmed by ann; B: ann and bob disagree on cell 1; C: not queued
    assert calls[["model_call", "final_call", "decided_by"]].values.tolist() == [
        ["review", "positive", "ann@example.org"],
        ["review", "review", "nobody yet"],
        ["negative", "negative", "model"],
    ]
    assert (
        calls.loc["B", "reason"]
        == "reviewers disagree on cell 1 (ann@example.org Uninfected; bob@example.org Parasitized)"
    )
    # corrections: a1 U, a2 P, b2 U (both agree); b1 disputed; each with its file's bytes
    by_file = corrections.set_index("file")
    assert by_file["label"].to_dict() == {"a1.png": U, "a2.png": P, "b2.png": U}
    assert by_file.loc["a2.png", "image"] == b"bytes of a2.png"
    assert (
        by_file.loc["b2.png", "image"] == b"kept bytes of b2.png"
    )  # not in the queue: the previous corrections'
    assert by_file.loc["b2.png", "reviewers"] == "ann@example.org, bob@example.org"
    assert report["not_corrected"] == [
        {"file": "b1.png", "reason": "reviewers disagree: Parasitized, Uninfected"}
    ]
    # the vanished tasks: 9 (deleted) and 11 of the old key (Label Studio gave its id to a new task)
    assert [(row["task_id"], row["reason"]) for row in report["skipped"]] == [
        (9, "task 9 no longer exists in Label Studio (deleted since the last collection)"),
        (11, "task 11 no longer exists in Label Studio (deleted since the last collection)"),
    ]
    assert (report["verdicts"], report["annotations"], report["decided_by_reviewers"]) == (6, 3, 1)
    assert report["final_calls"] == {"negative": 1, "positive": 1, "review": 1}
