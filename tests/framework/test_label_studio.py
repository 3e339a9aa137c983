"""Label Studio's side of the review, without a server: the tasks made of the queue, and the verdicts read
out of a project's annotations, every unusable one counted with its reason."""

import base64

import pandas as pd

from malaria_pipeline.framework.label_studio import LABEL_CONFIG, task_of, verdicts_of


def queue_rows(kind="patient"):
    return pd.DataFrame(
        {
            "task_key": ["patient/A/abc"] * 2,
            "kind": [kind] * 2,
            "patient": ["A", "A"],
            "rank": [1, 2],
            "file": ["s/A_IMG_1.png", "s/A_IMG_2.png"],
            "sha1": ["s1", "s2"],
            "p_parasitized": [0.9731, 0.2],
            "model_label": ["Parasitized", "Uninfected"],
            "call": ["review"] * 2,
            "fraction": [0.0123] * 2,
            "fraction_low": [0.003] * 2,
            "fraction_high": [0.05] * 2,
            "healthy_chance": [0.0042] * 2,
            "patient_cells": [118] * 2,
            "given_label": [None, None],
            "suggested_label": [None, None],
            "label_quality": [None, None],
            "overlay": ["00001_a.png", "00002_b.png"],
            "model": ["data/06_models/model.pt/v1/model.pt"] * 2,
        }
    )


def test_a_task_shows_the_patient_and_each_cell_with_its_picture_probability_and_the_models_answer():
    task = task_of(
        queue_rows(), {"00001_a.png": b"\x89PNG one", "00002_b.png": b"\x89PNG two"}, "Parasitized"
    )
    data = task["data"]
    assert data["summary"].startswith(
        "Patient A · 118 cells · the model calls it review · parasitized 1.23% (0.30% to 5.00%) · chance that "
        "a healthy patient shows as many: 0.0042"
    )
    assert [cell["caption"] for cell in data["cells"]] == [
        "Cell 1 of 2 · P(Parasitized) 0.973 · the model says Parasitized",
        "Cell 2 of 2 · P(Parasitized) 0.200 · the model says Uninfected",
    ]
    assert data["cells"][1]["image"] == "data:image/png;base64," + base64.b64encode(b"\x89PNG two").decode()
    assert [
        (r["from_name"], r["to_name"], r["value"]["choices"]) for r in task["predictions"][0]["result"]
    ] == [
        ("verdict_0", "cell_0", ["Parasitized"]),
        ("verdict_1", "cell_1", ["Uninfected"]),
    ]
    # the interface names every cell's picture and choice as the predictions do
    assert 'name="cell_{{idx}}"' in LABEL_CONFIG and 'name="verdict_{{idx}}"' in LABEL_CONFIG


def annotation(number, by, *choices, cancelled=False):
    return {
        "id": number,
        "completed_by": by,
        "was_cancelled": cancelled,
        "updated_at": f"2026-12-06T10:0{number}:00Z",
        "result": [
            {"from_name": name, "to_name": "cell", "type": "choices", "value": {"choices": choice}}
            for name, choice in choices
        ],
    }


def test_verdicts_are_read_per_cell_and_every_unusable_answer_is_skipped_with_its_reason():
    cells = [{"rank": 1, "file": "a.png", "sha1": "s1"}, {"rank": 2, "file": "b.png", "sha1": "s2"}]
    project = {
        "users": {1: "ann@example.org", 2: "bob@example.org"},
        "tasks": [
            {
                "id": 7,
                "data": {"task_key": "patient/A/abc", "kind": "patient", "patient": "A", "cells": cells},
                "annotations": [
                    annotation(1, 1, ("verdict_0", ["Parasitized"]), ("verdict_1", ["Uninfected"])),
                    annotation(2, 2, ("verdict_1", ["Banana"]), ("verdict_5", ["Unsure"])),
                    annotation(3, 2, ("verdict_0", ["Uninfected"]), cancelled=True),
                ],
            },
            {"id": 8, "data": {"text": "a task made by hand"}, "annotations": [annotation(4, 1)]},
        ],
    }
    verdicts, skipped = verdicts_of(project)
    assert verdicts[
        ["task_id", "rank", "file", "sha1", "verdict", "reviewer", "annotation_id"]
    ].values.tolist() == [
        [7, 1, "a.png", "s1", "Parasitized", "ann@example.org", 1],
        [7, 2, "b.png", "s2", "Uninfected", "ann@example.org", 1],
    ]
    assert verdicts["reviewed_at"].tolist() == ["2026-12-06T10:01:00Z"] * 2
    assert skipped == [
        {
            "task_id": 7,
            "annotation_id": 2,
            "reason": "unknown choice ['Banana']: give one of Parasitized, Uninfected, Unsure",
        },
        {"task_id": 7, "annotation_id": 2, "reason": "no cell 'verdict_5' in the task"},
        {"task_id": 8, "annotation_id": 4, "reason": "the task was not made by the review pipeline"},
    ]
