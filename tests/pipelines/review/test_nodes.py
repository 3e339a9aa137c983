"""The review queue without Label Studio: which cells of which patients, each beside its Grad-CAM heatmap
(Grad-CAM written out by hand in tests/helpers.py), a file that has gone, a model that is not the one that
classified, and the label audit's suspects."""

import base64
import io

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from malaria_pipeline.cells.archive import ImageArchive
from malaria_pipeline.ml import load_model
from malaria_pipeline.pipelines.inference.nodes import predict_images
from malaria_pipeline.pipelines.review.nodes import (
    label_studio_tasks,
    make_queue,
    queue_label_issues,
    queue_patients,
)
from tests.helpers import (
    base_image_limits,
    hand_overlay,
    image_bytes,
    png_pixels,
    reference_grad_cam,
    reference_proba,
    tiny_bundle,
)

FILES = {f"A_IMG_1_cell_{i}.png": image_bytes(16, 16, seed=i) for i in range(5)} | {
    f"B_IMG_1_cell_{i}.png": image_bytes(16, 16, seed=10 + i) for i in range(3)
}
PARAMS = {
    "cells_per_patient": 3,
    "confirm_positive": False,
    "include_label_issues": False,
    "label_issues_max": None,
    "overlay_scale": 2,
    "group_by": "prefix",
    "positive_class": "Parasitized",
    "batch_size": 4,
    "device": "cpu",
    "image_limits": base_image_limits(),
}


@pytest.fixture
def inferred(tmp_path):
    folder = tmp_path / "new"
    folder.mkdir()
    for name, data in FILES.items():
        (folder / name).write_bytes(data)
    bundle = {**tiny_bundle(), "source": "data/06_models/model.pt/v1/model.pt"}
    inference = {
        "source": str(folder),
        "threshold": 0.5,
        "batch_size": 4,
        "workers": None,
        "device": "cpu",
        "positive_class": "Parasitized",
        "image_limits": base_image_limits(),
        "tta": False,
        "explain": False,
        "explain_max": None,
        "explain_scale": 2,
    }
    predictions, summary, _ = predict_images(ImageArchive.open(folder), bundle, inference)
    patients = pd.DataFrame(
        {
            "patient": ["A", "B"],
            "cells": [5, 3],
            "fraction": [0.2, 0.6],
            "fraction_low": [0.0, 0.1],
            "fraction_high": [0.5, 0.9],
            "healthy_chance": [0.02, 1e-5],
            "call": ["review", "positive"],
        }
    )
    return folder, bundle, predictions, summary, patients


def top_by_hand(bundle, patient: str, k: int) -> list[str]:
    names = [n for n in FILES if n.startswith(patient)]
    p = reference_proba(bundle, torch.stack([png_pixels(FILES[n]) for n in names]))[:, 0].tolist()
    return [n for _, n in sorted(zip(p, names), key=lambda pair: -pair[0])][:k]


def test_the_queue_holds_each_review_patients_top_cells_beside_their_heatmaps(inferred):
    folder, bundle, predictions, summary, patients = inferred
    queue, overlays, _ = queue_patients(
        predictions, patients, summary, ImageArchive.open(folder), bundle, PARAMS
    )
    assert queue["file"].tolist() == top_by_hand(
        bundle, "A", 3
    )  # B is positive: not without confirm_positive
    assert queue["rank"].tolist() == [1, 2, 3] and set(queue["call"]) == {"review"}
    assert queue["image"].tolist() == [FILES[f] for f in queue["file"]]
    classifier = load_model(bundle)
    for row in queue.itertuples():
        pair = overlays[row.overlay]
        assert pair.shape == (32, 64, 3)
        pixels = png_pixels(FILES[row.file])
        assert torch.equal(torch.from_numpy(pair[::2, ::2][:, :16].copy()), pixels.permute(1, 2, 0))
        heatmap = reference_grad_cam(classifier, classifier.network.layer3, pixels[None], 0)[0]
        overlay = torch.from_numpy(pair[::2, ::2][:, 16:].copy())
        assert (overlay.int() - hand_overlay(pixels, heatmap).int()).abs().max() <= 1

    confirm = {**PARAMS, "confirm_positive": True}
    queue, _, _ = queue_patients(predictions, patients, summary, ImageArchive.open(folder), bundle, confirm)
    assert queue.groupby("patient")["file"].apply(list).to_dict() == {
        "A": top_by_hand(bundle, "A", 3),
        "B": top_by_hand(bundle, "B", 3),
    }
    assert queue.groupby("patient")["task_key"].nunique().tolist() == [1, 1]


def test_a_file_gone_since_inference_is_left_out_and_the_others_stay(inferred, caplog):
    folder, bundle, predictions, summary, patients = inferred
    first = top_by_hand(bundle, "A", 3)
    (folder / first[1]).unlink()
    queue, overlays, _ = queue_patients(
        predictions, patients, summary, ImageArchive.open(folder), bundle, PARAMS
    )
    assert queue["file"].tolist() == [first[0], first[2]] and queue["rank"].tolist() == [1, 3]
    assert len(overlays) == 2
    assert f"{first[1]} is left out of the queue, it cannot be read from" in caplog.text


def test_a_model_other_than_the_one_that_classified_is_refused(inferred):
    folder, bundle, predictions, summary, patients = inferred
    other = {**bundle, "source": "models:/malaria-cell-classifier@champion/model.pt"}
    with pytest.raises(
        ValueError, match=r"made by data/06_models/model\.pt/v1/model\.pt, and the review would"
    ):
        queue_patients(predictions, patients, summary, ImageArchive.open(folder), other, PARAMS)


def test_the_tasks_carry_the_overlays_the_queue_drew(inferred):
    folder, bundle, predictions, summary, patients = inferred
    confirm = {**PARAMS, "confirm_positive": True}
    cells, overlays, _ = queue_patients(
        predictions, patients, summary, ImageArchive.open(folder), bundle, confirm
    )
    queue, overlays = make_queue(
        cells, overlays, *queue_label_issues(pd.DataFrame(), None, None, bundle, PARAMS)
    )
    tasks = label_studio_tasks(queue, overlays, PARAMS)
    assert [task["data"]["patient"] for task in tasks] == ["A", "B"]
    for task in tasks:
        rows = queue[queue["task_key"] == task["data"]["task_key"]].sort_values("rank")
        assert [c["file"] for c in task["data"]["cells"]] == rows["file"].tolist()
        for cell, name in zip(task["data"]["cells"], rows["overlay"]):
            data = base64.b64decode(cell["image"].split(",", 1)[1])
            with Image.open(io.BytesIO(data)) as picture:
                assert np.array_equal(np.asarray(picture.convert("RGB")), overlays[name])


def test_the_label_audits_suspects_join_the_queue_when_asked(tmp_path):
    bundle = {**tiny_bundle(), "source": "m"}
    images = torch.stack([png_pixels(image_bytes(16, 16, seed=i)) for i in range(4)])
    index = pd.DataFrame(
        {
            "path": [f"cell_images/Uninfected/P{i % 2}_IMG_1_cell_{i}.png" for i in range(4)],
            "patient_id": [f"P{i % 2}" for i in range(4)],
            "sha1": [f"sha{i}" for i in range(4)],
        }
    )
    issues = pd.DataFrame(
        {
            "rank": [3, 1, 2, 4],
            "path": [index["path"][i] for i in (0, 1, 3, 2)],
            "patient_id": ["P0", "P1", "P1", "P0"],
            "given_label": ["Uninfected"] * 4,
            "suggested_label": ["Parasitized"] * 4,
            "label_quality": [0.1, 0.01, 0.05, 0.2],
        }
    )
    asked = {**PARAMS, "include_label_issues": True, "label_issues_max": 3}
    queue, overlays = queue_label_issues(issues, index, images, bundle, asked)
    # the 3 most suspect (ranks 1, 2, 3), one task per patient, ranked within it
    assert queue[["patient", "rank", "file", "sha1"]].values.tolist() == [
        ["P0", 1, index["path"][0], "sha0"],
        ["P1", 1, index["path"][1], "sha1"],
        ["P1", 2, index["path"][3], "sha3"],
    ]
    assert set(queue["kind"]) == {"label_issue"} and len(overlays) == 3
    expected = reference_proba(bundle, images[[0, 1, 3]])[:, 0].numpy()
    assert np.allclose(queue["p_parasitized"], expected, atol=1e-5)
    with pytest.raises(ValueError, match="there is no label audit"):
        queue_label_issues(issues.iloc[:0], index, images, bundle, asked)
    with pytest.raises(ValueError, match="the archive's images are not ingested"):
        queue_label_issues(issues, None, None, bundle, asked)
    assert queue_label_issues(issues, None, None, bundle, PARAMS)[0].empty


def test_a_spark_runs_queue_is_the_inference_runs_for_the_same_files(inferred):
    from malaria_pipeline.pipelines.review.nodes import queue_batch_patients

    folder, bundle, predictions, summary, patients = inferred
    confirm = {**PARAMS, "confirm_positive": True}
    expected, expected_overlays, _ = queue_patients(
        predictions, patients, summary, ImageArchive.open(folder), bundle, confirm
    )
    # batch_predictions as Spark writes them: file: URIs, the prefix, the model's run; one row it could not
    # classify (no probability), which the queue leaves out
    root = "file:" + folder.resolve().as_posix()
    spark = pd.DataFrame(
        {
            "path": [f"{root}/{f}" for f in predictions["file"]] + [f"{root}/broken.png"],
            "folder": ".",
            "patient": [f.split("_IMG_")[0] for f in predictions["file"]] + [None],
            "label": predictions["label"].tolist() + [None],
            "p_parasitized": predictions["p_parasitized"].tolist() + [None],
            "error": [None] * len(predictions) + ["not a PNG or JPEG image"],
            "model_run_id": "abc123",
        }
    ).iloc[::-1]  # Spark's partitions come in any order
    model = {**bundle, "registered_version": {"name": "m", "version": 1, "run_id": "abc123"}}
    batch = {"source": str(folder), "group_by": "prefix"}
    queue, overlays, table = queue_batch_patients(
        spark, patients, ImageArchive.open(folder), model, confirm, batch
    )
    columns = ["patient", "rank", "file", "sha1", "p_parasitized", "model_label", "call"]
    pd.testing.assert_frame_equal(queue[columns], expected[columns])
    assert all(
        np.array_equal(overlays[a], expected_overlays[b])
        for a, b in zip(queue["overlay"], expected["overlay"])
    )
    assert table is patients
    other = {**model, "registered_version": {"name": "m", "version": 2, "run_id": "fff999"}}
    with pytest.raises(ValueError, match=r"scored by the model of run abc123, and the review would explain"):
        queue_batch_patients(spark, patients, ImageArchive.open(folder), other, confirm, batch)
