"""The cross-validation nodes on tables and tensors made by hand: which images each fold's model sees (the
folds run as the pipeline's namespaced training nodes, on an in-memory catalog), the label audit on an easy
set with planted label flips, and what exclude_label_issues leaves out."""

import hashlib

import numpy as np
import pandas as pd
import pytest
import torch

from malaria_pipeline.assess.cv_table import format_table
from malaria_pipeline.assess.folds import OPERATING_POINT_COLUMNS
from malaria_pipeline.pipelines.cross_validation import nodes
from malaria_pipeline.pipelines.model_training import nodes as training_nodes
from tests.helpers import TRAIN_PARAMS

CV_PARAMS = {
    "folds": 4,
    "seed": 0,
    "validation_folds": 3,
    "positive_class": "Parasitized",
    "threshold": 0.5,
    "target_sensitivities": [0.9, 0.95],
    "calibration_bins": 10,
    "specificity_targets": [0.9, 0.99],
    "worst_patients": 5,
    "label_audit": {"filter_by": "prune_by_noise_rate", "figure_cells": 8},
    "patients": {
        "level": 0.95,
        "count_at": 0.5,
        "quantifier": "ACC",
        "healthy_range": "all",
        "call": {"healthy_below": 0.001, "negative_below": 0.02, "min_cells": 1},
        "min_fraction": 0.05,
        "max_review": 0.1,
        "budget": "patients",
        "reviewer": {"cells_per_patient": 6, "max_cells_per_patient": 3},
        "choose_from": {"healthy_below": [0.01, 0.001], "negative_below": [0.01, 0.02]},
        "detection": {"cells": 200, "parasitemia": [0.0, 0.05, 0.2], "smears": 20, "seed": 0},
    },
    "compare": {
        "count_at": [0.5, {"specificity": 0.9}],
        "quantifiers": {"methods": ["ACC", "PACC"], "resamples": 5, "seed": 0},
    },
}


# What the folds read of the evaluation parameters (calibrate_model and predict_subsets), as in
# parameters_evaluation.yml: the cross-validation parameters' patients and positive class.
EVALUATION = {
    "positive_class": "Parasitized",
    "target_sensitivity": 0.9,
    "target_specificity": None,
    "tta": False,
    "batch_size": 64,
    "device": "cpu",
    "operating_point_checks": {"min_cells_per_class": 300, "min_rate": 0.8},
    "patients": CV_PARAMS["patients"],
}


def run_folds(images, index, training, evaluation=EVALUATION, params=CV_PARAMS, audit=None, tmp_path=None):
    """The cross-validation pipeline up to the pooled out-of-fold tables, on an in-memory catalog, as
    ``kedro run`` runs it (SequentialRunner): ``cv_folds`` (as assign_folds deals them), ``cv_predictions``,
    ``cv_history``, ``cv_operating_points``."""
    import tempfile
    from pathlib import Path

    from kedro.io import DataCatalog, MemoryDataset
    from kedro.runner import SequentialRunner

    from malaria_pipeline.ml.checkpoint import CheckpointStore
    from malaria_pipeline.pipelines.cross_validation.pipeline import create_pipeline

    outputs = ("cv_predictions", "cv_history", "cv_operating_points")
    pipeline = create_pipeline(folds=params["folds"]).to_outputs(*outputs)
    folder = Path(tmp_path or tempfile.mkdtemp())
    catalog = DataCatalog(
        {
            "image_tensors": MemoryDataset(images, copy_mode="assign"),
            "image_index": MemoryDataset(index),
            "label_issues_to_exclude": MemoryDataset(NO_AUDIT if audit is None else audit),
            "claimed_cv_patient_settings": MemoryDataset({}),
            "params:cross_validation": MemoryDataset(params),
            "params:training": MemoryDataset(training),
            "params:evaluation": MemoryDataset(evaluation),
            **{
                f"cv_fold_{k}.training_checkpoint": MemoryDataset(
                    CheckpointStore(folder / f"fold_{k}"), copy_mode="assign"
                )
                for k in range(1, params["folds"] + 1)
            },
            **{name: MemoryDataset() for name in outputs},
        }
    )
    SequentialRunner().run(pipeline, catalog)
    return (nodes.assign_folds(index, params), *(catalog.load(name) for name in outputs))


def summarize_all(predictions, history, points, params):
    """``summarize`` after the patient nodes that feed it, as the pipeline runs them."""
    patients, smears = nodes.judge_patients_out_of_fold(predictions, params)
    methods = nodes.compare_patient_methods(predictions, params)
    return nodes.summarize(predictions, history, points, patients, smears, methods, params)


def easy_cells(patients=12, per_patient=20, size=16, seed=0, spot=10):
    """Every image different; parasitized cells (half of each patient's) carry a dark 4×4 spot of value
    ``spot`` (the background is 120 to 199: a spot near it makes a hard set)."""
    generator = torch.Generator().manual_seed(seed)
    count = patients * per_patient
    images = torch.randint(120, 200, (count, 3, size, size), dtype=torch.uint8, generator=generator)
    labels = np.where(np.arange(count) % 2 == 0, "Parasitized", "Uninfected")
    images[torch.from_numpy(labels == "Parasitized"), :, 6:10, 6:10] = spot
    patient = [f"C{i // per_patient}P{i // per_patient}ThinF" for i in range(count)]
    index = pd.DataFrame(
        {
            "path": [
                f"cell_images/{label}/{p}_IMG_1_cell_{i}.png"
                for i, (label, p) in enumerate(zip(labels, patient))
            ],
            "label": labels,
            "patient_id": patient,
        }
    )
    return images, index


def digest(image: torch.Tensor) -> str:
    return hashlib.sha1(image.contiguous().numpy().tobytes()).hexdigest()


NO_AUDIT = pd.DataFrame({"path": pd.Series(dtype="object")})


def test_each_image_is_predicted_by_the_one_model_that_never_saw_it(monkeypatch):
    images, index = easy_cells()
    seen = []
    real = training_nodes.train_classifier

    def spy(data, config, **kwargs):
        seen.append({digest(image) for image in torch.cat([data.train_images, data.valid_images])})
        return real(data, config, **kwargs)

    monkeypatch.setattr(training_nodes, "train_classifier", spy)
    folds, predictions, history, _ = run_folds(images, index, {**TRAIN_PARAMS, "epochs": 1})

    assert len(seen) == 4 and sorted(predictions["path"]) == sorted(index["path"])
    by_path = dict(zip(index["path"], images))
    for row in predictions.itertuples():
        model_of_fold = seen[row.fold - 1]
        assert digest(by_path[row.path]) not in model_of_fold, row.path
        assert (
            sum(digest(by_path[row.path]) in other for other in seen) == 3
        )  # the other folds' models trained on it
    # Train and validation of a fold are whole patients of the other folds, never of the held-out one.
    for fold in range(1, 5):
        split = nodes.split_fold(index, folds, CV_PARAMS, fold=fold)
        held_out = set(index["patient_id"][folds["fold"] == fold])
        by_subset = {
            s: set(index["patient_id"][split["subset"] == s]) for s in ("train", "validation", "test")
        }
        assert (
            by_subset["test"] == held_out
            and not by_subset["train"] & held_out
            and not by_subset["validation"] & held_out
        )
        assert by_subset["validation"] and not by_subset["validation"] & by_subset["train"]
    assert set(history["fold"]) == {1, 2, 3, 4} and history.groupby("fold")["kept"].sum().tolist() == [
        1,
        1,
        1,
        1,
    ]


def test_planted_label_flips_in_an_easy_set_are_found():
    images, index = easy_cells(patients=12, per_patient=24)
    true_label = dict(zip(index["path"], index["label"]))
    flipped = np.random.default_rng(1).choice(len(index), size=10, replace=False)
    index.loc[flipped, "label"] = np.where(
        index.loc[flipped, "label"] == "Parasitized", "Uninfected", "Parasitized"
    )
    _, predictions, _, _ = run_folds(images, index, {**TRAIN_PARAMS, "epochs": 4})
    issues, summary = nodes.audit_labels(predictions, CV_PARAMS)

    found = set(issues["path"]) & set(index["path"][flipped])
    assert len(found) >= 9, f"found {len(found)} of 10 planted flips"
    assert len(issues) <= 0.06 * len(index)
    planted = issues[issues["path"].isin(index["path"][flipped])]
    # The suggested label of a planted flip is its true class: the one its pixels show.
    assert (planted["suggested_label"] == planted["path"].map(true_label)).all()
    assert (planted["given_label"] != planted["suggested_label"]).all()
    assert issues["rank"].tolist() == list(range(1, len(issues) + 1))
    assert issues["label_quality"].is_monotonic_increasing
    assert summary["flagged"] == len(issues) and summary["images"] == len(index)
    assert sum(c["flagged"] for c in summary["by_given_label"].values()) == len(issues)


def test_exclude_label_issues_leaves_suspects_out_of_each_folds_training_images_only(monkeypatch):
    images, index = easy_cells()
    suspects = index.iloc[::7][["path"]]
    trained_on = []
    real = training_nodes.train_classifier

    def spy(data, config, **kwargs):
        trained_on.append((len(data.train_images), len(data.valid_images)))
        return real(data, config, **kwargs)

    monkeypatch.setattr(training_nodes, "train_classifier", spy)
    training = {**TRAIN_PARAMS, "epochs": 1, "exclude_label_issues": True}
    folds, predictions, _, _ = run_folds(images, index, training, audit=suspects)

    expected, without_exclusion = [], []
    for fold in range(1, 5):
        split = nodes.split_fold(index, folds, CV_PARAMS, fold=fold)
        train, validation = split["subset"] == "train", int((split["subset"] == "validation").sum())
        expected.append((int((train & ~split["path"].isin(suspects["path"])).sum()), validation))
        without_exclusion.append((int(train.sum()), validation))
    assert trained_on == expected and expected != without_exclusion
    # the suspects are still predicted, out of fold
    assert sorted(predictions["path"]) == sorted(index["path"])


def test_folds_of_other_images_are_refused_by_name():
    from malaria_pipeline.cells.splitting import SplitError

    images, index = easy_cells()
    folds = nodes.assign_folds(index, CV_PARAMS)
    with pytest.raises(
        SplitError, match=r"cv_folds \(239 rows\) and image_index \(240\) come from different runs"
    ):
        nodes.split_fold(index, folds.iloc[1:], CV_PARAMS, fold=1)


def test_a_folds_predictions_of_another_assignment_are_refused_when_pooled():
    from malaria_pipeline.cells.splitting import SplitError

    _, index = easy_cells()
    folds = nodes.assign_folds(index, CV_PARAMS)
    other = nodes.assign_folds(index, {**CV_PARAMS, "seed": 1})
    outputs = {}
    for fold in range(1, 5):
        held_out = (other if fold == 3 else folds).query("fold == @fold")
        outputs[f"out_of_fold_{fold}"] = held_out[["path", "patient_id", "label"]].assign(fold=fold)
        outputs[f"choices_{fold}"] = {"kept_epoch": 1, "operating_points": []}
        outputs[f"history_{fold}"] = pd.DataFrame({"epoch": [1]})
    with pytest.raises(
        SplitError, match=r"The predictions of cv_fold_3 .* not of the \d+ images that cv_folds holds out"
    ):
        nodes.pool_folds(index, folds, **outputs)
    outputs["out_of_fold_3"] = folds.query("fold == 3")[["path", "patient_id", "label"]].assign(fold=3)
    predictions, history, _ = nodes.pool_folds(index, folds, **outputs)
    assert predictions["path"].tolist() == index["path"].tolist() and history["kept"].all()


def _threshold_by_brute_force(scores, truth, target):
    """Of the thresholds that find at least ``target`` of the positives, the one of best specificity."""
    best = None
    for t in np.unique(scores):
        sensitivity, specificity = (scores[truth] >= t).mean(), (scores[~truth] < t).mean()
        if sensitivity >= target and (best is None or (specificity, sensitivity) > best[1:]):
            best = (t, specificity, sensitivity)
    return best[0]


def _check_targets(points, fold, call, images, index, valid_rows, cells):
    """Each target's threshold, chosen on validation (with and without TTA), and what it gives held out."""
    from tests.helpers import reference_proba, reference_tta_proba

    valid_truth, held_truth = (
        (index["label"].to_numpy()[valid_rows.numpy()] == "Parasitized"),
        cells["label"] == "Parasitized",
    )
    for tta, reference, column in (
        (True, reference_tta_proba, "p_parasitized"),
        (False, reference_proba, "p_parasitized_without_tta"),
    ):
        p_valid = reference(call["bundle"], images[valid_rows], call["temperature"])[:, 0].numpy()
        p_held = cells[
            column
        ].to_numpy()  # checked against the reference above; float32 as the thresholds see it
        for target in (0.9, 0.95):
            threshold = _threshold_by_brute_force(p_valid, valid_truth, target)
            (row,) = points[
                (points["fold"] == fold) & (points["tta"] == tta) & (points["target_sensitivity"] == target)
            ].itertuples()
            assert row.threshold == pytest.approx(threshold, abs=1e-5)
            called = p_held >= row.threshold
            assert (row.sensitivity, row.specificity) == pytest.approx(
                (called[held_truth.to_numpy()].mean(), (~called[~held_truth.to_numpy()]).mean())
            )


def test_each_fold_calibrates_on_its_own_validation_patients_and_predicts_its_held_out_fold_as_evaluation_does(
    monkeypatch,
):
    from malaria_pipeline.ml.model_io import model_bundle
    from tests.helpers import reference_proba, reference_tta_proba

    images, index = easy_cells(
        seed=3, spot=120
    )  # hard: the thresholds differ from fold to fold and target to target
    calls = []
    real = training_nodes.calibrate

    def spy(classifier, views, labels, **kwargs):
        point = real(classifier, views, labels, **kwargs)
        calls.append(
            {
                "views": views,
                "point": point,
                "kwargs": kwargs,
                "bundle": model_bundle(classifier, architecture="resnet9", network_args={"width": 4}),
                "temperature": classifier.temperature,
            }
        )
        return point

    monkeypatch.setattr(training_nodes, "calibrate", spy)
    params = CV_PARAMS
    evaluation = {**EVALUATION, "tta": True, "target_sensitivity": 0.95}
    folds, predictions, _, points = run_folds(images, index, {**TRAIN_PARAMS, "epochs": 1}, evaluation)

    assert len(calls) == 4
    for fold, call in enumerate(calls, start=1):
        split = nodes.split_fold(index, folds, params, fold=fold)
        valid_rows = torch.from_numpy(np.flatnonzero((split["subset"] == "validation").to_numpy()))
        # The views it chose on are those of the validation images (never the held-out fold, never the training
        # patients): their TTA probabilities at T = 1, written out, are the softmax of the mean of the views'.
        assert call["views"].shape[:2] == (8, len(valid_rows))
        assert call["views"].softmax(-1).mean(0)[:, 0].numpy() == pytest.approx(
            reference_tta_proba(call["bundle"], images[valid_rows])[:, 0].numpy(), abs=1e-5
        )
        assert call["kwargs"] == {
            "fit": True,
            "positive_class": "Parasitized",
            "target_sensitivity": 0.95,
            "target_specificity": None,
        }
        cells = predictions[predictions["fold"] == fold]
        rows = torch.from_numpy(index.reset_index().set_index("path").loc[cells["path"], "index"].to_numpy())
        expected = reference_tta_proba(call["bundle"], images[rows], call["temperature"])[:, 0].numpy()
        assert cells["p_parasitized"].to_numpy() == pytest.approx(expected, abs=1e-5)
        uncalibrated = reference_tta_proba(call["bundle"], images[rows])[:, 0].numpy()
        assert cells["p_parasitized_uncalibrated"].to_numpy() == pytest.approx(uncalibrated, abs=1e-5)
        plain = reference_proba(call["bundle"], images[rows], call["temperature"])[:, 0].numpy()
        assert cells["p_parasitized_without_tta"].to_numpy() == pytest.approx(plain, abs=1e-5)
        assert (cells["operating_threshold"] == call["point"]["threshold"]).all()
        assert (cells["temperature"] == call["temperature"]).all() and call["temperature"] != 1.0
        _check_targets(points, fold, call, images, index, valid_rows, cells)

    report, scores = summarize_all(
        predictions, pd.DataFrame({"epoch": [1] * 4, "kept": [True] * 4}), points, params
    )
    for row in report["per_fold"]:
        cells = predictions[predictions["fold"] == row["fold"]]
        truth, called = (
            cells["label"] == "Parasitized",
            cells["p_parasitized"] >= cells["operating_threshold"],
        )
        assert row["sensitivity_at_operating_point"] == pytest.approx((called & truth).sum() / truth.sum())
        assert row["specificity_at_operating_point"] == pytest.approx(
            (~called & ~truth).sum() / (~truth).sum()
        )
        assert row["sensitivity"] == pytest.approx(
            ((cells["p_parasitized"] >= 0.5) & truth).sum() / truth.sum()
        )
    without = [
        np.mean((cells["p_parasitized_without_tta"] >= 0.5) == (cells["label"] == "Parasitized"))
        for _, cells in predictions.groupby("fold")
    ]
    assert report["without_tta"]["accuracy"]["mean"] == pytest.approx(np.mean(without))
    (at_95_plain,) = [
        r for r in report["target_sensitivities"] if r["target_sensitivity"] == 0.95 and not r["tta"]
    ]
    plain = points[(points["target_sensitivity"] == 0.95) & ~points["tta"]]
    assert at_95_plain["specificity"]["mean"] == pytest.approx(plain["specificity"].mean())
    assert at_95_plain["median_threshold"] == pytest.approx(plain["threshold"].median())
    thresholds = [call["point"]["threshold"] for call in calls]
    assert report["recommended_operating_threshold"] == pytest.approx(np.median(thresholds))
    assert scores["cv.recommended_temperature"]["value"] == pytest.approx(
        np.median([c["temperature"] for c in calls])
    )


def _brute_force_at_specificity(truth, p, target):
    """Every score tried as the threshold: the highest sensitivity whose specificity is at least ``target``."""
    best = 0.0  # calling nothing positive always meets the target
    for threshold in np.unique(p):
        called = p >= threshold
        if (~called[~truth]).mean() >= target:
            best = max(best, called[truth].mean())
    return best


def _out_of_fold(fold, paths, patients, truth, p):
    """Out-of-fold predictions of one fold as pool_folds writes them (T = 1, operating threshold 0.5)."""
    return pd.DataFrame(
        {
            "path": paths,
            "patient_id": patients,
            "label": np.where(truth, "Parasitized", "Uninfected"),
            "fold": fold,
            "p_parasitized": p,
            "p_parasitized_uncalibrated": p,
            "operating_threshold": 0.5,
            "temperature": 1.0,
        }
    )


def test_the_sensitivity_at_each_specificity_is_read_per_fold_and_pooled():
    rng = np.random.default_rng(7)
    rows = []
    for fold in (1, 2, 3):
        truth = rng.random(300) < 0.4
        p = np.clip(np.where(truth, rng.normal(0.75, 0.2, 300), rng.normal(0.3, 0.2, 300)), 0, 1)
        rows.append(
            _out_of_fold(
                fold,
                [f"f{fold}_{i}.png" for i in range(300)],
                [f"P{fold}{i % 10}" for i in range(300)],
                truth,
                p,
            )
        )
    predictions = pd.concat(rows, ignore_index=True)
    history = pd.DataFrame({"epoch": [1, 1, 1], "kept": [True] * 3})
    points = pd.DataFrame(columns=OPERATING_POINT_COLUMNS)
    report, scores = summarize_all(predictions, history, points, CV_PARAMS)

    def by_hand(cells, target):
        truth = (cells["label"] == "Parasitized").to_numpy()
        return _brute_force_at_specificity(truth, cells["p_parasitized"].to_numpy(), target)

    for target in (0.9, 0.99):
        name = f"sensitivity_at_specificity_{target}"
        per_fold = [by_hand(cells, target) for _, cells in predictions.groupby("fold")]
        assert [row[name] for row in report["per_fold"]] == pytest.approx(per_fold)
        assert report["mean_std"][name]["mean"] == pytest.approx(np.mean(per_fold))
        assert report["mean_std"][name]["std"] == pytest.approx(np.std(per_fold, ddof=1))
        assert report["pooled"][name] == pytest.approx(by_hand(predictions, target))
        assert scores[f"cv.{name}.mean"]["value"] == pytest.approx(np.mean(per_fold))
        assert scores[f"cv.pooled.{name}"]["value"] == pytest.approx(by_hand(predictions, target))
    assert (
        0
        < report["pooled"]["sensitivity_at_specificity_0.99"]
        < report["pooled"]["sensitivity_at_specificity_0.9"]
    )


def _noisy_predictions(seed=11, folds=3, patients_per_fold=6, cells=80):
    """Out-of-fold predictions of patients whose false-alarm rates differ (a third of them controls)."""
    rng = np.random.default_rng(seed)
    rows = []
    for fold in range(1, folds + 1):
        for k in range(patients_per_fold):
            truth = rng.random(cells) < (0.0 if k % 3 == 0 else rng.uniform(0.05, 0.6))
            alarm = rng.uniform(0.0, 0.08)  # this patient's own false-alarm rate
            p = np.where(truth, rng.uniform(0.3, 1.0, cells), np.where(rng.random(cells) < alarm, 0.8, 0.1))
            rows.append(
                _out_of_fold(fold, [f"f{fold}p{k}_{i}.png" for i in range(cells)], f"F{fold}P{k}", truth, p)
            )
    return pd.concat(rows, ignore_index=True)


def test_the_smears_of_each_fold_are_judged_by_its_rule_and_the_report_holds_the_limits_and_comparisons():
    from malaria_pipeline.assess.detection import detection_limits
    from malaria_pipeline.assess.patient_call import PatientCall

    predictions = _noisy_predictions()
    patients, smears = nodes.judge_patients_out_of_fold(predictions, CV_PARAMS)
    for fold, rows in smears.groupby("fold"):
        mine = patients[patients["fold"] == fold]
        rule = PatientCall(
            healthy_below=mine["healthy_below"].iloc[0],
            negative_below=mine["negative_below"].iloc[0],
            min_cells=1,
        )
        assert rows["call"].tolist() == rule.calls(rows)
        assert len(rows) == 20 * 3 and set(rows["patient"]) <= set(mine["patient"])
    methods = nodes.compare_patient_methods(predictions, CV_PARAMS)
    report, scores = nodes.summarize(
        predictions,
        pd.DataFrame({"epoch": [1] * 3, "kept": [True] * 3}),
        pd.DataFrame(columns=OPERATING_POINT_COLUMNS),
        patients,
        smears,
        methods,
        CV_PARAMS,
    )
    detection = report["patients"]["detection"]
    for row in detection["per_fold"]:
        expected = detection_limits(smears[smears["fold"] == row["fold"]])
        assert (row["lob"], row["lod"], row["loq"]) == (expected["lob"], expected["lod"], expected["loq"])
    lobs = [row["lob"] for row in detection["per_fold"]]
    assert scores["cv.detection.lob.mean"]["value"] == pytest.approx(np.mean(lobs))
    assert scores["cv.pooled.detection.lob"]["value"] == detection_limits(smears)["lob"]
    assert [row["count_at"] for row in methods["thresholds"]] == [0.5, {"specificity": 0.9}]
    assert [row["method"] for row in methods["quantifiers"]] == ["ACC", "PACC"]
    lines = format_table(report)
    assert any(line.startswith("lob ") for line in lines) and detection["sentence"] in lines
    assert any(line.startswith("PACC ") for line in lines)


def test_the_deployable_settings_are_the_pooled_cells_and_the_rule_the_report_recommends():
    predictions = _noisy_predictions()
    report = {
        "mlflow_run_id": "cv-run-7",
        "recommended_operating_threshold": 0.5,
        "patients": {"recommended_call": {"healthy_below": 0.01, "negative_below": 0.02, "min_cells": 1}},
    }
    settings = nodes.deployable_patient_settings(predictions, report, CV_PARAMS)
    assert settings["patient_call"] == report["patients"]["recommended_call"]
    assert settings["count_threshold"] == 0.5 and settings["quantifier"] == "ACC"
    truth = (predictions["label"] == "Parasitized").to_numpy()
    called = predictions["p_parasitized"].to_numpy() >= 0.5
    reference = settings["reference_cells"]
    assert (reference["positives"], reference["negatives"]) == (truth.sum(), (~truth).sum())
    alarms = settings["patient_spread"]["false_alarm"]
    assert (alarms["events"], alarms["cells"]) == ((called & ~truth).sum(), (~truth).sum())
    assert reference["source"] == (
        f"the pooled out-of-fold cells of cross-validation run cv-run-7 ({len(predictions):,} cells of "
        f"{predictions['patient_id'].nunique()} patients)"
    )
