"""The nodes of the inference pipeline and of the served MLflow model, on their own: one answer per image
or row, errors named, and exactly the training preprocessing."""

import base64
import re

import pandas as pd
import pytest
import torch
from scipy.stats import betabinom, binom

from malaria_pipeline.cells.archive import ImageArchive
from malaria_pipeline.pipelines.inference.nodes import (
    predict_encoded_images,
    predict_images,
    predict_patients,
    served_patients,
)
from tests.helpers import (
    HAND_SPREAD,
    REFERENCE_CELLS,
    base_image_limits,
    bomb_png,
    changed,
    hand_overlay,
    image_bytes,
    interval_by_hand,
    png_pixels,
    reference_grad_cam,
    reference_proba,
    reference_tta_proba,
    tiny_bundle,
    with_onnx_graph,
)


def params(
    threshold: float | str = 0.5, batch_size: int = 4, max_rows: int = 4096, tta: bool = False
) -> dict:
    return {
        "threshold": threshold,
        "batch_size": batch_size,
        "device": "cpu",
        "positive_class": "Parasitized",
        "image_limits": base_image_limits(),
        "max_rows": max_rows,
        "tta": tta,
    }


@pytest.fixture(scope="module", params=["onnx", "torch"])
def bundle(request):
    """The model on each runtime: with its ONNX graph (inference.runtime onnx, the default), and a bundle
    alone (trained before models were exported: PyTorch answers)."""
    return with_onnx_graph(tiny_bundle()) if request.param == "onnx" else tiny_bundle()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_each_row_gets_an_answer_and_a_broken_row_keeps_its_place(bundle):
    rows = pd.DataFrame(
        {"image": [b64(image_bytes(30, 20, "L")), b64(b"GIF89a..."), None, b64(image_bytes(50, 50))]},
        index=[10, 11, 12, 13],
    )
    answers = predict_encoded_images(rows, bundle, params(batch_size=2))
    assert answers.index.tolist() == [10, 11, 12, 13]
    assert answers.loc[11, "error"] == "row 11: not a PNG or JPEG image (the file starts with b'GIF89a..')"
    assert answers.loc[12, "error"] == "row 12: no image (the cell is empty)"
    assert answers.loc[[11, 12], "label"].isna().all() and answers.loc[[11, 12], "p_parasitized"].isna().all()
    assert answers.loc[[10, 13], "error"].isna().all()
    assert set(answers.loc[[10, 13], "label"]) <= {"Parasitized", "Uninfected"}


def test_the_threshold_sets_the_label(bundle):
    rows = pd.DataFrame({"image": [b64(image_bytes(20, 20, seed=i)) for i in range(6)]})
    everything = predict_encoded_images(rows, bundle, params(threshold=0.0))
    nothing = predict_encoded_images(rows, bundle, params(threshold=1.01))
    assert (everything["label"] == "Parasitized").all() and (nothing["label"] == "Uninfected").all()
    assert everything["p_parasitized"].dtype == float and everything["error"].isna().all()


def test_an_input_without_the_image_column_is_refused_with_the_columns_it_has(bundle):
    with pytest.raises(ValueError, match=r"columns \['images'\]; it needs a column 'image'"):
        predict_encoded_images(pd.DataFrame({"images": ["x"]}), bundle, params())


def test_a_bomb_row_gets_its_size_as_error_and_the_other_rows_their_answer(bundle):
    good = [b64(image_bytes(50, 50, "L", seed=i)) for i in range(3)]
    rows = pd.DataFrame(
        {
            "image": [
                b64(bomb_png()),
                good[0],
                b64(image_bytes(400, 20)),
                good[1],
                b64(image_bytes(4, 4)),
                good[2],
            ]
        }
    )
    answers = predict_encoded_images(rows, bundle, params())
    assert answers.loc[0, "error"].startswith(
        "row 0: image of 20000 × 20000 pixels (400,000,000 pixels) is larger than inference.image_limits.max_pixels"
    )
    assert "more elongated (20.0:1) than inference.image_limits.max_aspect_ratio" in answers.loc[2, "error"]
    assert "smaller than inference.image_limits.min_side" in answers.loc[4, "error"]
    # each good row keeps the probability it has when sent alone
    alone = [
        predict_encoded_images(pd.DataFrame({"image": [g]}), bundle, params()).loc[0, "p_parasitized"]
        for g in good
    ]
    assert answers.loc[[1, 3, 5], "error"].isna().all()
    assert answers.loc[[1, 3, 5], "p_parasitized"].astype(float).tolist() == pytest.approx(alone, abs=1e-6)


def test_an_unexpected_failure_in_one_row_becomes_that_rows_error(bundle, monkeypatch):
    from malaria_pipeline.pipelines.inference import nodes

    decode = nodes.decode_cell_image

    def fails_on_the_second(data, size, limits):
        if data == image_bytes(30, 30, seed=1):
            raise MemoryError("no room")
        return decode(data, size, limits)

    monkeypatch.setattr(nodes, "decode_cell_image", fails_on_the_second)
    rows = pd.DataFrame({"image": [b64(image_bytes(30, 30, seed=i)) for i in range(3)]})
    answers = predict_encoded_images(rows, bundle, params())
    assert answers.loc[1, "error"] == "row 1: could not be decoded (MemoryError: no room)"
    assert answers.loc[[0, 2], "error"].isna().all() and answers.loc[[0, 2], "label"].notna().all()


def test_only_the_scoring_server_refuses_more_rows_than_max_rows_with_the_parameter(bundle):
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc.utils.environment import _simulate_serving_environment

    rows = pd.DataFrame({"image": [b64(image_bytes(20, 20))] * 5})
    # from Python (and Spark) any number of rows is answered
    assert predict_encoded_images(rows, bundle, params(max_rows=4))["error"].isna().sum() == 5
    # MLflow sets the variable that marks its scoring server (as `mlflow models serve` does)
    with _simulate_serving_environment():
        with pytest.raises(
            MlflowException,
            match=r"The request has 5 rows, more than inference.max_rows \(4\), the limit of a request",
        ) as refused:
            predict_encoded_images(rows, bundle, params(max_rows=4))
        assert len(predict_encoded_images(rows, bundle, params(max_rows=5))) == 5
    assert refused.value.get_http_status_code() == 400


def test_rows_are_answered_in_chunks_of_batch_size_with_the_probabilities_of_the_whole(bundle):
    # 11 rows in chunks of 3: broken rows in the first and last chunks and a chunk of broken rows only
    side = bundle["image_size"]
    files = {i: image_bytes(side, side, seed=i) for i in (0, 2, 3, 7, 8, 9)}
    values = [b64(files[i]) if i in files else "not base64 !" for i in range(11)]
    answers = predict_encoded_images(pd.DataFrame({"image": values}), bundle, params(batch_size=3))
    expected = reference_proba(bundle, torch.stack([png_pixels(files[i]) for i in sorted(files)]))[:, 0]
    assert answers["error"].isna().tolist() == [i in files for i in range(11)]
    assert answers.loc[sorted(files), "p_parasitized"].astype(float).tolist() == pytest.approx(
        expected.tolist(), abs=1e-5
    )
    assert answers.loc[[1, 4, 5, 6, 10], "label"].isna().all()


def test_a_row_larger_than_max_file_bytes_is_refused_before_it_is_decoded(bundle):
    limits = {**base_image_limits(), "max_file_bytes": 2000}
    rows = pd.DataFrame({"image": ["#" * 8000, b64(image_bytes(20, 20))]})  # the first is not even base64
    answers = predict_encoded_images(rows, bundle, {**params(), "image_limits": limits})
    assert answers.loc[0, "error"].startswith(
        "row 0: file of 6,000 bytes is larger than inference.image_limits.max_file_bytes (2,000): not read"
    )
    assert answers.loc[1, "error"] is None


def test_base64_as_tools_write_it_is_read_wrapped_unpadded_or_as_a_data_url(bundle):
    import textwrap

    data = image_bytes(50, 50, "L")
    plain = b64(data)
    rows = pd.DataFrame(
        {
            "image": [
                plain,
                "\n".join(textwrap.wrap(plain, 76)) + "\n",
                plain.rstrip("="),
                f"data:image/png;base64,{plain}",
                plain.encode(),
            ]
        }
    )
    answers = predict_encoded_images(rows, bundle, params())
    assert answers["error"].isna().all(), answers["error"].tolist()
    assert answers["p_parasitized"].astype(float).tolist() == pytest.approx(
        [answers.loc[0, "p_parasitized"]] * 5
    )


def test_the_served_node_rebuilds_the_classifier_once_per_bundle_and_device(bundle, monkeypatch):
    from malaria_pipeline.pipelines.inference import classifiers

    built = []
    real_make = classifiers.make_classifier
    monkeypatch.setattr(
        classifiers, "make_classifier", lambda *args, **kwargs: built.append(1) or real_make(*args, **kwargs)
    )
    monkeypatch.setattr(classifiers, "_CLASSIFIERS", {})
    rows = pd.DataFrame({"image": [b64(image_bytes(20, 20))]})
    first = predict_encoded_images(rows, bundle, params())
    for _ in range(3):
        assert predict_encoded_images(rows, bundle, params()).equals(first)
    assert len(built) == 1
    other = dict(bundle)  # another bundle (another model): built anew
    predict_encoded_images(rows, other, params())
    assert len(built) == 2


def test_the_served_probabilities_are_those_of_the_training_preprocessing_written_out(bundle):
    files = [image_bytes(16, 16, "RGB", seed=i) for i in range(6)]  # the model's size: decoding fits nothing
    answers = predict_encoded_images(
        pd.DataFrame({"image": [b64(f) for f in files]}), bundle, params(batch_size=4)
    )
    expected = reference_proba(bundle, torch.stack([png_pixels(f) for f in files]))[:, 0]  # P(Parasitized)
    assert answers["p_parasitized"].astype(float).tolist() == pytest.approx(expected.tolist(), abs=1e-5)
    assert answers["label"].tolist() == ["Parasitized" if p >= 0.5 else "Uninfected" for p in expected]


def test_broken_rows_leave_every_other_row_the_answer_it_gets_alone(bundle):
    good = {
        1: image_bytes(16, 16, seed=1),
        2: image_bytes(40, 25, "L", seed=2),
        4: image_bytes(16, 16, seed=4),
        6: image_bytes(33, 33, fmt="JPEG", seed=6),
    }
    broken = {0: b"GIF89a...", 3: image_bytes(30, 30)[:90], 5: b""}  # the first row and two among the good
    rows = pd.DataFrame(
        {"image": [b64({**good, **broken}[i]) for i in range(7)]}, index=[f"r{i}" for i in range(7)]
    )
    answers = predict_encoded_images(rows, bundle, params(batch_size=2))
    for i, data in good.items():
        alone = predict_encoded_images(pd.DataFrame({"image": [b64(data)]}), bundle, params()).iloc[0]
        assert answers.iloc[i]["error"] is None, i
        assert answers.iloc[i]["p_parasitized"] == pytest.approx(alone["p_parasitized"], abs=1e-6), i
        assert answers.iloc[i]["label"] == alone["label"], i
    assert [answers.loc[f"r{i}", "error"].split(":")[0] for i in broken] == ["row r0", "row r3", "row r5"]
    assert answers.iloc[list(broken)]["p_parasitized"].isna().all()


def inference_params(source) -> dict:
    return {
        "source": str(source),
        "threshold": 0.5,
        "batch_size": 2,
        "workers": None,
        "device": "cpu",
        "positive_class": "Parasitized",
        "image_limits": base_image_limits(),
        "tta": False,
        "explain": False,
        "explain_max": None,
        "explain_scale": 4,
    }


def test_broken_files_leave_every_other_image_of_a_folder_the_answer_it_gets_alone(bundle, tmp_path):
    good = {
        "b_cell.png": image_bytes(16, 16, seed=1),
        "d_cell.png": image_bytes(16, 16, seed=2),
        "e_cell.jpg": image_bytes(16, 16, fmt="JPEG", seed=3),
        "g_cell.png": image_bytes(16, 16, seed=4),
    }
    broken = {"a_cell.png": image_bytes(30, 30)[:90], "c_cell.png": b"", "f_cell.png": b"I am a text file"}
    folder = tmp_path / "new"
    folder.mkdir()
    for name, data in {**good, **broken}.items():
        (folder / name).write_bytes(data)
    predictions, summary, _ = predict_images(ImageArchive.open(folder), bundle, inference_params(folder))
    by_file = predictions.set_index("file")
    for name, data in good.items():
        alone_folder = tmp_path / f"alone_{name}"
        alone_folder.mkdir()
        (alone_folder / name).write_bytes(data)
        alone, *_ = predict_images(ImageArchive.open(alone_folder), bundle, inference_params(alone_folder))
        assert by_file.loc[name, "p_parasitized"] == pytest.approx(alone.loc[0, "p_parasitized"], abs=1e-6), (
            name
        )
        assert by_file.loc[name, "label"] == alone.loc[0, "label"], name
    assert predictions["file"].tolist() == sorted(good)
    assert [entry["path"] for entry in summary["skipped"]] == sorted(broken)
    # and the probability is the training preprocessing's, written out
    expected = reference_proba(bundle, torch.stack([png_pixels(good[name]) for name in sorted(good)]))[:, 0]
    assert predictions["p_parasitized"].tolist() == pytest.approx(expected.tolist(), abs=1e-5)


def _with_operating_point(
    bundle: dict, threshold: float, temperature: float = 1.0, positive: str = "Parasitized"
) -> dict:
    point = {
        "threshold": threshold,
        "positive_class": positive,
        "target_sensitivity": 0.97,
        "tta": False,
        "sensitivity": 0.97,
        "specificity": 0.9,
    }
    return changed(bundle, temperature=temperature, operating_point=point)


SPOTTED = [image_bytes(16, 16, "RGB", seed=i) for i in range(8)]


def test_threshold_auto_uses_the_models_threshold_and_a_number_still_wins(bundle):
    expected = reference_proba(bundle, torch.stack([png_pixels(f) for f in SPOTTED]), 0.8)[:, 0].tolist()
    middle = sum(sorted(expected)[3:5]) / 2  # half of the cells above it (between two: float32 and 64 agree)
    model = _with_operating_point(bundle, middle, temperature=0.8)
    rows = pd.DataFrame({"image": [b64(f) for f in SPOTTED]})
    answers = predict_encoded_images(rows, model, params(threshold="auto"))
    assert answers["p_parasitized"].astype(float).tolist() == pytest.approx(expected, abs=1e-5)
    assert answers["label"].tolist() == ["Parasitized" if p >= middle else "Uninfected" for p in expected]
    assert (answers["label"] == "Parasitized").sum() == 4
    assert (predict_encoded_images(rows, model, params(threshold=0.0))["label"] == "Parasitized").all()


def test_threshold_auto_in_the_inference_pipeline_and_its_summary(bundle, tmp_path):
    folder = tmp_path / "new"
    folder.mkdir()
    for i, data in enumerate(SPOTTED):
        (folder / f"cell_{i}.png").write_bytes(data)
    expected = reference_proba(bundle, torch.stack([png_pixels(f) for f in SPOTTED]))[:, 0].tolist()
    middle = sum(sorted(expected)[1:3]) / 2
    predictions, summary, _ = predict_images(
        ImageArchive.open(folder),
        _with_operating_point(bundle, middle),
        {**inference_params(folder), "threshold": "auto"},
    )
    assert predictions["label"].tolist() == ["Parasitized" if p >= middle else "Uninfected" for p in expected]
    assert summary["threshold"] == middle and summary["threshold_parameter"] == "auto"


def test_threshold_auto_with_a_model_without_a_stored_threshold_says_which_parameter_and_what_to_do(
    bundle, tmp_path
):
    rows = pd.DataFrame({"image": [b64(SPOTTED[0])]})
    message = r"inference.threshold is auto, but this model has no stored operating threshold .* Give a number instead"
    with pytest.raises(ValueError, match=message):
        predict_encoded_images(rows, bundle, params(threshold="auto"))
    folder = tmp_path / "new"
    folder.mkdir()
    (folder / "cell.png").write_bytes(SPOTTED[0])
    with pytest.raises(ValueError, match=message):
        predict_images(ImageArchive.open(folder), bundle, {**inference_params(folder), "threshold": "auto"})
    with pytest.raises(ValueError, match=r"the model's threshold is on P\(Uninfected\)"):
        predict_encoded_images(
            rows, _with_operating_point(bundle, 0.5, positive="Uninfected"), params(threshold="auto")
        )
    with pytest.raises(ValueError, match="inference.threshold is 'high': give a number"):
        predict_encoded_images(rows, bundle, params(threshold="high"))


def test_tta_in_the_served_model_and_the_inference_pipeline_is_the_written_out_mean_over_8_symmetries(
    bundle, tmp_path
):
    files = [image_bytes(16, 16, "RGB", seed=i) for i in range(5)]
    model = changed(bundle, temperature=1.5)
    expected = reference_tta_proba(model, torch.stack([png_pixels(f) for f in files]), 1.5)[:, 0].tolist()
    served = predict_encoded_images(
        pd.DataFrame({"image": [b64(f) for f in files]}), model, params(batch_size=8, tta=True)
    )
    assert served["p_parasitized"].astype(float).tolist() == pytest.approx(expected, abs=1e-5)
    folder = tmp_path / "new"
    folder.mkdir()
    for i, data in enumerate(files):
        (folder / f"cell_{i}.png").write_bytes(data)
    predictions, summary, _ = predict_images(
        ImageArchive.open(folder), model, {**inference_params(folder), "tta": True, "batch_size": 8}
    )
    assert (
        predictions["p_parasitized"].tolist() == pytest.approx(expected, abs=1e-5) and summary["tta"] is True
    )


def test_explain_writes_the_most_confident_parasitized_cells_beside_their_grad_cam_and_lists_them(
    bundle, tmp_path
):
    folder = tmp_path / "new"
    folder.mkdir()
    names = [f"cell {i}#(ü).png" if i == 3 else f"cell_{i}.png" for i in range(len(SPOTTED))]
    for name, data in zip(names, SPOTTED):
        (folder / name).write_bytes(data)
    (folder / "broken.png").write_bytes(b"not an image")
    pixels = torch.stack([png_pixels(f) for f in SPOTTED])
    expected = reference_proba(bundle, pixels)[:, 0]
    threshold = float(sorted(expected)[4]) - 1e-7  # the 4 most likely parasitized are called Parasitized
    params_ = {
        **inference_params(folder),
        "threshold": threshold,
        "explain": True,
        "explain_max": 3,
        "explain_scale": 2,
    }
    predictions, summary, overlays = predict_images(ImageArchive.open(folder), bundle, params_)
    assert (predictions["label"] == "Parasitized").sum() == 4
    most_confident = sorted(range(len(SPOTTED)), key=lambda i: -float(expected[i]))[:3]
    listed = summary["explanations"]
    assert [entry["file"] for entry in listed] == [names[i] for i in most_confident]
    assert [entry["p_parasitized"] for entry in listed] == pytest.approx(
        [float(expected[i]) for i in most_confident], abs=1e-5
    )
    assert [entry["overlay"] for entry in listed] == list(overlays)
    assert all(re.fullmatch(r"0000[123]_[A-Za-z0-9._-]+\.png", name) for name in overlays), list(overlays)

    from malaria_pipeline.ml import load_model

    classifier = load_model(bundle)
    for i, pair in zip(most_confident, overlays.values()):
        assert pair.shape == (32, 64, 3)  # 16-pixel cells, twice enlarged, side by side
        cell, overlay = (
            torch.from_numpy(pair[::2, ::2][:, :16].copy()),
            torch.from_numpy(pair[::2, ::2][:, 16:].copy()),
        )
        assert torch.equal(cell, pixels[i].permute(1, 2, 0))
        heatmap = reference_grad_cam(classifier, classifier.network.layer3, pixels[i : i + 1], 0)[0]
        assert (overlay.int() - hand_overlay(pixels[i], heatmap).int()).abs().max() <= 1

    _, summary, overlays = predict_images(ImageArchive.open(folder), bundle, {**params_, "explain": False})
    assert overlays == {} and summary["explanations"] is None


def _patient_run(group_by, model=None, level=0.95):
    files = [f"smear_a/P1_IMG_{i}.png" for i in range(50)] + [f"smear_b/P2_IMG_{i}.png" for i in range(40)]
    labels = ["Parasitized"] * 10 + ["Uninfected"] * 40 + ["Parasitized"] + ["Uninfected"] * 39
    p = [0.6] * 5 + [0.97] * 5 + [0.1] * 40 + [0.6] + [0.1] * 39
    predictions = pd.DataFrame({"file": files, "label": labels, "p_parasitized": p})
    summary = {
        "threshold": 0.5,
        "skipped": [
            {"path": "smear_b/P2_IMG_broken.png", "reason": "truncated"},
            {"path": "smear_b/notes.txt", "reason": "not an image file"},  # not a cell: no error
        ],
    }
    model = (
        {
            "reference_cells": REFERENCE_CELLS,
            "patient_call": {"healthy_below": 0.001, "negative_below": 0.02, "min_cells": 40},
        }
        if model is None
        else model
    )
    params = {
        "group_by": group_by,
        "positive_class": "Parasitized",
        "patients": {"level": level, "call": {"healthy_below": 0.5, "negative_below": 0.5, "min_cells": 50}},
    }
    return predict_patients(predictions, summary, model, params)


@pytest.mark.parametrize(
    ("group_by", "names"), [("prefix", ["P1", "P2"]), ("folder", ["smear_a", "smear_b"])]
)
def test_the_patient_table_groups_by_prefix_or_folder_and_corrects_each_fraction(group_by, names):
    table = _patient_run(group_by).set_index("patient")
    assert list(table.index) == names
    first, second = table.loc[names[0]], table.loc[names[1]]
    assert (first["cells"], first["parasitized"], first["errors"]) == (50, 10, 0)
    assert (second["cells"], second["parasitized"], second["errors"]) == (40, 1, 1)  # the broken file counts
    # Hand-worked (Lang & Reiczigel 2014, asht::prevSeSp): 10 of 50 at Se 0.9, Sp 0.95 (n 100 each)
    assert [first["fraction"], first["fraction_low"], first["fraction_high"]] == pytest.approx(
        [0.176470588235294, 0.05224755590898306, 0.33406091023838386]
    )
    # the model's rule, not inference.patients.call: 10 of 50 is positive (a healthy patient shows as many
    # with chance 0.00016 at 1 - Sp = 0.05), 1 of 40 negative
    assert first["healthy_chance"] == pytest.approx(binom.sf(9, 50, 0.05))
    assert (first["call"], second["call"]) == ("positive", "negative")
    assert first["rates_from"] == (
        "the validation subset, at threshold 0.5; no spread between patients (one rate for every patient)"
    )


def test_the_configured_level_reaches_the_patient_table():
    table = _patient_run("prefix", level=0.9).set_index("patient")
    assert table.loc["P1", ["fraction_low", "fraction_high"]].tolist() == pytest.approx(
        interval_by_hand(10, 50, (90, 100), (95, 100), 0.9), abs=1e-12
    )


def test_cells_are_counted_at_the_models_counting_threshold_not_at_their_label():
    # five of P1's ten cells labelled Parasitized at 0.5 reach 0.95; the rates are read there too
    model = {
        "reference_cells": REFERENCE_CELLS,
        "patient_call": {"healthy_below": 0.001, "negative_below": 0.02, "min_cells": 40},
        "count_threshold": 0.95,
    }
    table = _patient_run("prefix", model=model).set_index("patient")
    assert table.loc["P1", "parasitized"] == 5 and table.loc["P2", "parasitized"] == 0
    assert (table["count_threshold"] == 0.95).all()
    assert table.loc["P1", "rates_from"].startswith("the validation subset, at threshold 0.95")


def test_no_patient_table_when_group_by_is_null_and_a_clear_error_for_another_value():
    assert _patient_run(None).empty
    with pytest.raises(ValueError, match="inference.group_by is 'patient': give prefix"):
        _patient_run("patient")


def test_a_model_without_reference_cells_gives_counts_but_no_fraction_and_sends_all_to_review(caplog):
    table = _patient_run("prefix", model={})
    assert table["cells"].tolist() == [50, 40] and table["fraction"].isna().all()
    assert (table["call"] == "review").all()
    assert "keeps no reference cells" in caplog.text


def _served_cells(p_positive: list[float | None]) -> pd.DataFrame:
    """The per-cell answer of the served model: None where the row could not be classified."""
    return pd.DataFrame(
        {
            "label": [
                None if p is None else ("Parasitized" if p >= 0.5 else "Uninfected") for p in p_positive
            ],
            "p_parasitized": p_positive,
            "error": [f"row {i}: truncated" if p is None else None for i, p in enumerate(p_positive)],
        }
    )


# The served model's inference parameters: its call rule is not the model's (a bundle's own rule wins).
SERVED_PARAMS = {
    "threshold": 0.5,
    "positive_class": "Parasitized",
    "patients": {"level": 0.9, "call": {"healthy_below": 0.5, "negative_below": 0.5, "min_cells": 50}},
}


def test_the_served_answer_per_patient_counts_each_patients_cells_and_errors_and_corrects_by_hand():
    # P1: 10 of 50 at or above 0.5; P2: 1 of 40, and one row that could not be classified
    p = [0.6] * 5 + [0.97] * 5 + [0.1] * 40 + [0.6] + [0.1] * 39 + [None]
    request = pd.DataFrame({"image": ["..."] * 91, "patient": ["P1"] * 50 + ["P2"] * 41})
    model = {
        "reference_cells": REFERENCE_CELLS,
        "patient_call": {"healthy_below": 0.001, "negative_below": 0.02, "min_cells": 40},
    }
    table = served_patients(request, _served_cells(p), model, SERVED_PARAMS).set_index("patient")
    assert table["cells"].tolist() == [50, 40] and table["parasitized"].tolist() == [10, 1]
    assert table["errors"].tolist() == [0, 1]
    # Se 90/100 and Sp 95/100 at 0.5 (REFERENCE_CELLS): Rogan-Gladen (0.2 + 0.95 - 1) / (0.9 + 0.95 - 1)
    assert table.loc["P1", "fraction"] == pytest.approx(0.15 / 0.85, abs=1e-12)
    assert [table.loc["P1", "fraction_low"], table.loc["P1", "fraction_high"]] == pytest.approx(
        interval_by_hand(10, 50, (90, 100), (95, 100), 0.9), abs=1e-12
    )
    # P2's one cell in 40 is no more than a healthy patient shows (Sp 0.95): not positive; its fraction
    # clips to 0, below negative_below 0.02: negative
    assert table["call"].tolist() == ["positive", "negative"]
    assert table.loc["P2", "fraction"] == 0.0 and table.loc["P2", "healthy_chance"] == pytest.approx(
        binom.sf(0, 40, 0.05), abs=1e-12
    )


def test_the_served_answer_per_patient_without_a_patient_column_is_one_patient_and_gaps_are_none():
    p = [0.97] * 10 + [0.1] * 40 + [None]
    model = {"patient_call": {"healthy_below": 0.001, "negative_below": 0.02, "min_cells": 40}}  # no rates
    params = {
        "threshold": 0.5,
        "positive_class": "Parasitized",
        "patients": {"level": 0.95, "call": {"healthy_below": 0.5, "negative_below": 0.5, "min_cells": 50}},
    }
    (row,) = served_patients(pd.DataFrame({"image": ["..."] * 51}), _served_cells(p), model, params).to_dict(
        orient="records"
    )
    assert (row["patient"], row["cells"], row["parasitized"], row["errors"]) == ("(all rows)", 50, 10, 1)
    # a model without rates: no fraction, as None (valid JSON), and review
    assert row["fraction"] is None and row["fraction_low"] is None and row["call"] == "review"


def test_the_served_answer_per_patient_counts_a_cell_at_the_threshold_and_judges_with_the_spread():
    # P1: 10 cells exactly at the counting threshold 0.5 and 40 below it; the model keeps a spread
    p = [0.5] * 10 + [0.1] * 40
    request = pd.DataFrame({"image": ["..."] * 50, "patient": ["P1"] * 50})
    model = {
        "reference_cells": REFERENCE_CELLS,
        "patient_spread": HAND_SPREAD,
        "patient_call": {"healthy_below": 0.001, "negative_below": 0.02, "min_cells": 40},
    }
    (row,) = served_patients(request, _served_cells(p), model, SERVED_PARAMS).to_dict(orient="records")
    assert (row["cells"], row["parasitized"]) == (50, 10)  # P >= threshold counts
    # Se 90/100, Sp 95/100, each rate's between-patient variance mean (1 - mean) rho added
    assert [row["fraction_low"], row["fraction_high"]] == pytest.approx(
        interval_by_hand(10, 50, (90, 100), (95, 100), 0.9, 0.9 * 0.1 * 0.01, 0.05 * 0.95 * 0.02), abs=1e-12
    )
    # the healthy range is the false alarms' beta-binomial: a = mean (1/rho - 1), b = (1 - mean) (1/rho - 1)
    assert row["healthy_chance"] == pytest.approx(betabinom.sf(9, 50, 0.05 * 49, 0.95 * 49), rel=1e-9)
    # 10 of 50 is likely enough for a healthy patient of that spread (0.0088 >= 0.001): not positive
    assert row["healthy_chance"] > 0.001 and row["call"] == "review"
