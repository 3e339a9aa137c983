"""The review queue end to end, with the real Label Studio (``make label-studio-install``) on loopback: a tiny
model classifies new cells, ``review`` queues the review patients' top cells in Label Studio, reviewers
answer through the SDK (one cell confirmed, others rejected, one Unsure, two reviewers who disagree, one
choice that is none of the three), ``collect_reviews`` brings the verdicts back (twice: nothing twice), and
the next ingestion applies them as labels. Then the same queue in a browser (Playwright driving Debian's
Chromium, headless), and what a user sees when Label Studio is down or refuses the token."""

from __future__ import annotations

import base64
import hashlib
import io
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from kedro.io.core import DatasetError

from malaria_pipeline.framework.label_studio import LabelStudioProjectDataset
from tests.helpers import (
    LABEL_STUDIO_PYTHON,
    SMALL_PATIENTS,
    TINY,
    KedroProject,
    free_port,
    label_studio_sdk,
    label_studio_server,
    write_cells,
)

pytestmark = pytest.mark.slow

# The new cells: five patients of 5 cells (a size the archive's 20-pixel cells don't have, so that no new
# file is byte-identical to an archive's), and one archive cell copied among them.
NEW_PATIENTS = {f"N{i}P{i}ThinF": {"Parasitized": 2, "Uninfected": 3} for i in range(1, 6)}
# The calls the test gives the patients (a tiny model's own calls depend on its few validation cells):
# N1, N2, N3 and the archive cell's patient to review, N4 positive (confirm_positive queues it), N5 negative.
CALLS = {"N1P1ThinF": "review", "N2P2ThinF": "review", "N3P3ThinF": "review", "N4P4ThinF": "positive"}
CELLS_PER_PATIENT = 3
P, U = "Parasitized", "Uninfected"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("label_studio")
    with label_studio_server(folder / "data") as running:
        yield running


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory, server):
    """A project whose latest inference sent five patients to review, queued in Label Studio."""
    root = tmp_path_factory.mktemp("review")
    with pytest.MonkeyPatch.context() as monkeypatch:
        project = KedroProject(root / "project")
        monkeypatch.chdir(project.root)
        (project.root / "conf/local/globals.yml").write_text(
            yaml.safe_dump(
                {
                    "label_studio_url": server["url"],
                    "label_studio_environment": str(LABEL_STUDIO_PYTHON.parents[1]),
                }
            )
        )
        (project.root / "conf/local/credentials.yml").write_text(
            yaml.safe_dump({"label_studio": {"api_key": server["token"]}})
        )
        archive = root / "cells"
        write_cells(archive, SMALL_PATIENTS, separable=True)
        project.run("training", ingestion={"source": str(archive), "image_size": 16}, **TINY)
        new = root / "new_cells"
        write_cells(new, NEW_PATIENTS, size=24, prefix="", separable=True)
        copied = sorted((archive / "cell_images" / P).glob("C0P0ThinF_*.png"))[0]
        shutil.copy(copied, new / copied.name)
        project.run("inference", inference={"source": str(new)})
        patients = project.load("patient_predictions")
        calls = {**CALLS, "C0P0ThinF": "review"}
        patients["call"] = [calls.get(p, "negative") for p in patients["patient"]]
        project.context().catalog.save("patient_predictions", patients)
        project.run("review", review={"cells_per_patient": CELLS_PER_PATIENT, "confirm_positive": True})
        yield {"project": project, "archive": archive, "new": new, "copied": copied}


def tasks_of(server: dict) -> dict[str, dict]:
    """The project's tasks by patient, read with the SDK."""
    tasks = label_studio_sdk(
        server,
        "project = [p for p in ls.projects.list(title='Malaria review') if p.title == 'Malaria review'][0]\n"
        "answer = [{'id': t.id, 'data': t.data, 'predictions': [p.result for p in t.predictions]}"
        " for t in ls.tasks.list(project=project.id, fields='all')]",
        {},
    )
    return {task["data"]["patient"]: task for task in tasks}


def answers(*choices: str) -> list[dict]:
    return [
        {
            "from_name": f"verdict_{i}",
            "to_name": f"cell_{i}",
            "type": "choices",
            "value": {"choices": [choice]},
        }
        for i, choice in enumerate(choices)
        if choice
    ]


def test_verdicts_from_label_studio_become_final_calls_and_the_next_ingestions_labels(reviewed, server):
    project = reviewed["project"]
    tasks = tasks_of(server)
    check_queued_tasks(project, tasks)
    annotate_as_reviewers(server, tasks)

    project.run("collect_reviews")
    cells, calls = project.load("reviewed_cells"), project.load("final_calls").set_index("patient")
    corrections = project.load("label_corrections")
    check_collected(project, tasks, reviewed)

    # collecting again adds nothing twice
    project.run("collect_reviews")
    pd.testing.assert_frame_equal(project.load("reviewed_cells"), cells)
    pd.testing.assert_frame_equal(project.load("final_calls").set_index("patient"), calls)
    pd.testing.assert_frame_equal(project.load("label_corrections"), corrections)

    check_next_ingestion(project, reviewed)

    # a task deleted in Label Studio: its verdicts are reported, not kept
    label_studio_sdk(server, "ls.tasks.delete(id=request['task'])", {"task": tasks["N3P3ThinF"]["id"]})
    project.run("collect_reviews")
    report = project.load("review_report")
    gone = [row for row in report["skipped"] if "no longer exists" in row["reason"]]
    assert [row["task_id"] for row in gone] == [tasks["N3P3ThinF"]["id"]]
    assert "N3P3ThinF" not in set(project.load("reviewed_cells")["patient"])
    assert project.load("final_calls").set_index("patient").loc["N3P3ThinF", "reason"] == (
        "not reviewed yet: 3 cells shown"
    )


def check_queued_tasks(project: KedroProject, tasks: dict[str, dict]) -> None:
    """One task per queued patient, its 3 cells of highest P(Parasitized) (ranked here with pandas), the
    model's answer on each as a prediction, the patient's numbers above them."""
    predictions = project.load("predictions")
    predictions["patient"] = predictions["file"].str.split("_IMG_").str[0].str.split("/").str[-1]
    assert sorted(tasks) == ["C0P0ThinF", "N1P1ThinF", "N2P2ThinF", "N3P3ThinF", "N4P4ThinF"]
    for patient, task in tasks.items():
        top = predictions[predictions["patient"] == patient].sort_values(
            ["p_parasitized", "file"], ascending=[False, True]
        )
        expected = top.head(CELLS_PER_PATIENT)
        assert [cell["file"] for cell in task["data"]["cells"]] == expected["file"].tolist()
        assert [cell["rank"] for cell in task["data"]["cells"]] == list(range(1, len(expected) + 1))
        [prediction] = task["predictions"]
        assert [r["value"]["choices"][0] for r in prediction] == expected["label"].tolist()
    row = project.load("patient_predictions").set_index("patient").loc["N1P1ThinF"]
    assert (
        f"parasitized {row['fraction']:.2%} ({row['fraction_low']:.2%} to {row['fraction_high']:.2%})"
        in (tasks["N1P1ThinF"]["data"]["summary"])
    )


def annotate_as_reviewers(server: dict, tasks: dict[str, dict]) -> None:
    """ann (the admin) and bob answer through the SDK, as they would in the browser."""
    bob = label_studio_sdk(
        server,
        "me = ls.users.whoami()\n"
        "answer = ls.users.create(username='bob', email='bob@example.org', active_organization=me.active_organization).id",
        {},
    )
    reviews = [
        ("N1P1ThinF", None, answers(P, U, U)),  # one cell confirmed: positive
        ("N2P2ThinF", None, answers(U, U, U)),  # every cell rejected: negative
        ("N3P3ThinF", None, answers(U, "Unsure", U)),  # an Unsure: still review
        ("N4P4ThinF", None, answers(P, U, U)),  # bob disagrees on cell 1: still review
        ("N4P4ThinF", bob, answers(U)),
        ("C0P0ThinF", None, answers(U)),  # an archive cell labelled Parasitized, judged uninfected
        ("N2P2ThinF", bob, answers("Banana")),  # a choice Label Studio lets through: skipped
    ]
    for patient, reviewer, result in reviews:
        label_studio_sdk(
            server,
            "extra = {'completed_by': request['by']} if request['by'] else {}\n"
            "answer = ls.annotations.create(id=request['task'], result=request['result'], **extra).id",
            {"task": tasks[patient]["id"], "by": reviewer, "result": result},
        )


def check_collected(project: KedroProject, tasks: dict[str, dict], reviewed: dict) -> None:
    """reviewed_cells, final_calls and label_corrections against the answers given, worked out by hand."""
    cells, calls = project.load("reviewed_cells"), project.load("final_calls").set_index("patient")
    corrections, report = project.load("label_corrections"), project.load("review_report")
    assert len(cells) == 3 + 3 + 3 + 3 + 1 + 1  # every verdict but the Banana
    assert set(cells["reviewer"]) == {"ann@example.org", "bob@example.org"}
    n3 = cells[cells["patient"] == "N3P3ThinF"].sort_values("rank")
    assert n3["verdict"].tolist() == [U, "Unsure", U]
    assert n3["file"].tolist() == [c["file"] for c in tasks["N3P3ThinF"]["data"]["cells"]]
    assert [row["reason"] for row in report["skipped"]] == [
        "unknown choice ['Banana']: give one of Parasitized, Uninfected, Unsure"
    ]
    shown = calls.loc[[*CALLS, "C0P0ThinF", "N5P5ThinF"], ["model_call", "final_call", "decided_by"]]
    assert shown.values.tolist() == [
        ["review", "positive", "ann@example.org"],
        ["review", "negative", "ann@example.org"],
        ["review", "review", "nobody yet"],
        ["positive", "review", "nobody yet"],
        ["review", "negative", "ann@example.org"],
        ["negative", "negative", "model"],
    ]
    assert calls.loc["N3P3ThinF", "reason"] == "2 of 3 cells judged Uninfected, 1 Unsure"
    assert calls.loc["N4P4ThinF", "reason"] == (
        "reviewers disagree on cell 1 (ann@example.org Parasitized; bob@example.org Uninfected)"
    )
    # the agreed verdicts as labels: N1's 3, N2's 3, N3's 2 (not the Unsure), N4's 2 (not the disputed
    # cell), the archive cell; each with its task and reviewer, and a new cell's file
    assert len(corrections) == 3 + 3 + 2 + 2 + 1
    copied_sha1 = hashlib.sha1(reviewed["copied"].read_bytes()).hexdigest()
    archive_row = corrections.set_index("sha1").loc[copied_sha1]
    assert (archive_row["label"], archive_row["reviewers"], archive_row["task_id"]) == (
        U,
        "ann@example.org",
        tasks["C0P0ThinF"]["id"],
    )
    n1 = corrections[corrections["patient_id"] == "N1P1ThinF"].set_index("file")
    first = tasks["N1P1ThinF"]["data"]["cells"][0]["file"]
    assert n1.loc[first, "label"] == P and (n1.drop(index=first)["label"] == U).all()
    assert n1.loc[first, "image"] == (reviewed["new"] / first).read_bytes()


def check_next_ingestion(project: KedroProject, reviewed: dict) -> None:
    """The next ingestion relabels the archive cell and adds the 10 new ones; the next split deals them."""
    project.run("ingestion", ingestion={"source": str(reviewed["archive"]), "image_size": 16})
    index, report = project.load("image_index"), project.load("ingestion_report")
    applied = report["label_corrections"]
    assert (applied["relabelled"], applied["confirmed"], applied["added"], applied["skipped"]) == (
        1,
        0,
        10,
        [],
    )
    copied_sha1 = hashlib.sha1(reviewed["copied"].read_bytes()).hexdigest()
    relabelled = index[index["sha1"] == copied_sha1]
    assert relabelled[["label", "archive_label", "label_source"]].values.tolist() == [[U, P, "review"]]
    added = index[index["path"].str.startswith("label_corrections/")]
    assert len(added) == 10 and set(added["patient_id"]) == {
        "N1P1ThinF",
        "N2P2ThinF",
        "N3P3ThinF",
        "N4P4ThinF",
    }
    assert len(project.load("image_tensors")) == len(index) == 42 + 10
    project.run("preprocessing", preprocessing=TINY["preprocessing"])
    assert set(added["path"]) <= set(project.load("data_split")["path"])


def test_a_reviewer_sees_each_cell_beside_its_heatmap_and_its_probability_in_the_browser(
    reviewed, server, tmp_path
):
    from playwright.sync_api import sync_playwright

    project = reviewed["project"]
    queue = project.load("review_queue")
    overlays = project.load("review_overlays")
    task = tasks_of(server)["N1P1ThinF"]
    cells = queue[queue["patient"] == "N1P1ThinF"].sort_values("rank")
    project_id = label_studio_sdk(
        server, "answer = [p.id for p in ls.projects.list() if p.title == 'Malaria review'][0]", {}
    )
    screenshot = tmp_path / "review-task.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(f"{server['url']}/user/login")
            page.fill("input#email", server["username"])
            page.fill("input#password", server["password"])
            page.click("button[type=submit]")
            page.wait_for_url(lambda url: "/user/login" not in url, timeout=60_000)
            page.goto(f"{server['url']}/projects/{project_id}/data?task={task['id']}")
            page.get_by_text("Cell 1 of 3").first.wait_for(timeout=60_000)
            page.wait_for_function(
                "() => [...document.images].filter(i => i.naturalWidth > 0 && i.naturalWidth === 2 * i.naturalHeight)"
                f".length >= {len(cells)}",
                timeout=60_000,
            )
            page.screenshot(path=str(screenshot))
            text = page.inner_text("body")
            # the bytes of each picture the page shows, fetched back by the page itself
            shown = page.evaluate(
                """async () => Promise.all([...document.images]
                    .filter(i => i.naturalWidth === 2 * i.naturalHeight)
                    .map(async i => {
                        const bytes = new Uint8Array(await (await fetch(i.src)).arrayBuffer());
                        let s = ""; for (const b of bytes) s += String.fromCharCode(b);
                        return [i.src.slice(0, 40), btoa(s)];
                    }))"""
            )
        finally:
            browser.close()

    for row in cells.itertuples():
        # the model's probability of each cell, in its caption
        assert f"Cell {row.rank} of 3 · P(Parasitized) {row.p_parasitized:.3f}" in text
    # each picture is a queued cell beside its heatmap: the overlay the queue wrote, pixel for pixel
    pictures = [
        _pixels(base64.b64decode(data)) for src, data in shown if src.startswith(("data:image/png", "blob:"))
    ]
    assert len(pictures) >= len(cells), [src for src, _ in shown]
    for row in cells.itertuples():
        assert any(np.array_equal(picture, overlays[row.overlay]) for picture in pictures)
    # the left half is the cell itself (its own pixels, enlarged), the right half differs: the heatmap
    first = overlays[cells.iloc[0]["overlay"]]
    half = first.shape[1] // 2
    assert not np.array_equal(first[:, :half], first[:, half:])
    assert screenshot.stat().st_size > 10_000


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _pixels(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def test_label_studio_down_or_a_bad_token_fails_by_name_without_the_token(server):
    down = LabelStudioProjectDataset(
        url=f"http://127.0.0.1:{free_port()}",
        project="Malaria review",
        credentials={"api_key": server["token"]},
        environment=str(LABEL_STUDIO_PYTHON.parents[1]),
    )
    with pytest.raises(DatasetError, match=r"not reachable at http://127\.0\.0\.1:\d+ .*make label-studio"):
        down.load()
    wrong = "f" * 40
    refused = LabelStudioProjectDataset(
        url=server["url"],
        project="Malaria review",
        credentials={"api_key": wrong, "token_from": "the environment variable LABEL_STUDIO_API_KEY"},
        environment=str(LABEL_STUDIO_PYTHON.parents[1]),
    )
    with pytest.raises(DatasetError) as error:
        refused.load()
    assert "refused the API token read from the environment variable LABEL_STUDIO_API_KEY" in str(error.value)
    assert wrong not in str(error.value) and server["token"] not in str(error.value)
