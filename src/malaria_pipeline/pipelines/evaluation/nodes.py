"""Nodes of the evaluation pipeline: the held-out subsets' predictions, their patients, metrics and review
workload, the model card, and the figures.

Over 500 lines, one module still: these are every node that the evaluation pipeline wires, each a thin
adapter over ``assess/`` and ``ml/``, as Kedro's layout keeps one pipeline's nodes in its ``nodes.py``; the
figures alone are seven nodes of a few lines each.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from malaria_pipeline.assess.columns import probability_column, without_tta_column
from malaria_pipeline.assess.detection import detection_of_cells
from malaria_pipeline.assess.metrics import (
    at_specificity_name,
    at_specificity_phrase,
    binary_confidence,
    calibration_bins,
    calibration_errors,
    classification_metrics,
    operating_points,
    patient_bootstrap_intervals,
    per_patient,
    sensitivity_at_specificity,
)
from malaria_pipeline.assess.model_card import model_card
from malaria_pipeline.assess.patient_call import PATIENT_METRICS, patient_metrics
from malaria_pipeline.assess.patients import (
    PATIENT_COLUMNS,
    TRUTH_COLUMNS,
    judge_patients,
    model_patient_settings,
)
from malaria_pipeline.assess.plots import (
    plot_confusion_matrices,
    plot_explained_cells,
    plot_image_grid,
    plot_message,
    plot_patient_fractions,
    plot_reliability_diagrams,
    plot_roc_curves,
)
from malaria_pipeline.assess.review import (
    with_first_ranks,
    workload_lines,
    workload_report,
    workload_scores,
)
from malaria_pipeline.assess.text import number
from malaria_pipeline.cells.splitting import subset_rows
from malaria_pipeline.cells.tensors import class_codes
from malaria_pipeline.framework import tracking
from malaria_pipeline.framework.parameters import differing_from_base
from malaria_pipeline.framework.profiles import choose_profile
from malaria_pipeline.ml.device import pick_device
from malaria_pipeline.ml.explain import grad_cam
from malaria_pipeline.ml.model_io import CellClassifier, load_model
from malaria_pipeline.ml.models import probabilities as probabilities_of

logger = logging.getLogger(__name__)

EVALUATED_SUBSETS = ("validation", "test")
SUBSET_ORDER = {"train": 0, "validation": 1, "test": 2}
# Metrics of each subset that go to MLflow as final metrics.
SCORES = (
    "accuracy",
    "sensitivity",
    "specificity",
    "precision",
    "f1",
    "roc_auc",
    "average_precision",
    "false_negatives",
    "false_positives",
    "ece",
    "ece_uncalibrated",
)


def predict_subsets(
    model: dict[str, Any],
    image_tensors: torch.Tensor,
    image_index: pd.DataFrame,
    data_split: pd.DataFrame,
    params: dict[str, Any],
) -> pd.DataFrame:
    """The model's probability of the positive class for every validation and test image.

    Predicted as inference predicts (:meth:`~malaria_pipeline.ml.models.CellClassifier.predict_proba`:
    the model's temperature and ``params["tta"]``), and from the same forward passes with T = 1, for the
    calibration error before temperature scaling.

    Returns:
        One row per image: path, subset, label, patient_id, the probability of the positive class
        (:func:`~malaria_pipeline.assess.metrics.probability_column`: ``p_parasitized``), predicted label,
        loss (cross-entropy of the true class), row, ``p_parasitized_uncalibrated`` (T = 1), and with ``tta``
        ``p_parasitized_without_tta`` (the first view alone: the image as it is).
    """
    classifier = load_model(model, device=pick_device(params["device"]))
    positive = classifier.class_names.index(params["positive_class"])
    rows = subset_rows(image_index, data_split, *EVALUATED_SUBSETS, n_images=len(image_tensors))
    images = image_tensors[torch.from_numpy(rows)]
    views = classifier.view_logits(images, batch_size=params["batch_size"], tta=params["tta"])
    probabilities, uncalibrated = probabilities_of(views, classifier.temperature), probabilities_of(views)
    labels = image_index["label"].to_numpy()[rows]
    true_class = class_codes(labels, classifier.class_names)
    p_true = probabilities.gather(1, true_class[:, None]).squeeze(1) if len(rows) else torch.empty(0)
    column = probability_column(params["positive_class"])
    predictions = pd.DataFrame(
        {
            "path": image_index["path"].to_numpy()[rows],
            "subset": data_split["subset"].to_numpy()[rows],
            "label": labels,
            "patient_id": image_index["patient_id"].to_numpy()[rows],
            column: probabilities[:, positive].numpy(),
            "predicted": np.asarray(classifier.class_names)[probabilities.argmax(dim=1).numpy()],
            "loss": (-torch.log(p_true.clamp_min(1e-12))).numpy(),
            "row": rows,
            f"{column}_uncalibrated": uncalibrated[:, positive].numpy(),
        }
    )
    if params["tta"]:  # the first view is the image as it is: the same model without TTA, for free
        predictions[without_tta_column(params["positive_class"])] = probabilities_of(
            views[:1], classifier.temperature
        )[:, positive].numpy()
    return predictions


def _test_detection(
    cells: pd.DataFrame, model: dict[str, Any], params: dict[str, Any]
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The detection limits of smears of the test patients' cells as the model judges them
    (:func:`~malaria_pipeline.assess.detection.detection_of_cells`), and their MLflow metrics."""
    detection = detection_of_cells(
        cells,
        model_patient_settings(model, params["threshold"], params["patients"]["call"]),
        positive=params["positive_class"],
        level=params["patients"]["level"],
        detection=params["patients"]["detection"],
    )
    scores = {
        f"test.detection.{name}": {"value": detection[name], "step": 0}
        for name in ("lob", "lod", "loq", "healthy_positive", "coverage")
        if detection and detection[name] is not None
    }
    return detection, scores


def judge_patient_subsets(
    predictions: pd.DataFrame, model: dict[str, Any], params: dict[str, Any]
) -> pd.DataFrame:
    """``evaluation_patients``: the patient table of the validation and test subsets
    (:func:`~malaria_pipeline.assess.patients.judge_patients`, with a column ``subset``), cells counted at
    the model's counting threshold (else ``threshold``), corrected with the sensitivity and specificity of
    the model's reference cells (its validation subset: on the validation subset's own patients, not an
    independent check), judged against the spread between its reference patients, and called by the
    model's rule (else ``patients.call``). A model without reference cells gets no corrected fraction."""
    settings = model_patient_settings(model, params["threshold"], params["patients"]["call"])
    tables = [
        judge_patients(
            cells,
            positive=params["positive_class"],
            threshold=settings.threshold,
            rates=settings.rates,
            rule=settings.rule,
            level=params["patients"]["level"],
            spread=settings.spread,
        ).assign(subset=subset)
        for subset, cells in _by_subset(predictions)
    ]
    if not tables:  # a model trained on every image: a table of no patients, still readable as CSV
        return pd.DataFrame(columns=[*PATIENT_COLUMNS, *TRUTH_COLUMNS, "subset"])
    return pd.concat(tables, ignore_index=True)


def review_workload_of_test(
    evaluation_predictions: pd.DataFrame,
    evaluation_patients: pd.DataFrame,
    params: dict[str, Any],
    review: dict[str, Any],
) -> dict[str, Any]:
    """``evaluation_review_workload``: what a reviewer of each test review patient's top ``k`` cells
    (``review.workload_k``) gives and costs, the archive's label standing for the reviewer's eye, the
    patients called by the model's rule (:func:`~malaria_pipeline.assess.review.workload_report`); also
    MLflow metrics ``test.review.k<k>.<figure>``. Empty for a model trained on every image."""
    patients = (
        evaluation_patients[evaluation_patients["subset"] == "test"]
        if len(evaluation_patients)
        else evaluation_patients
    )
    if patients.empty:
        return {"subset": "test", "patients": 0}
    cells = evaluation_predictions[evaluation_predictions["subset"] == "test"]
    positive = params["positive_class"]
    table = with_first_ranks(
        patients,
        cells,
        patient="patient_id",
        column=probability_column(positive),
        is_positive=(cells["label"] == positive).to_numpy(),
    )
    report = {
        "subset": "test",
        **workload_report(table, review["workload_k"], params["patients"]["min_fraction"]),
    }
    for line in workload_lines("Review of the test patients, called by the model's rule", report):
        logger.info("%s", line)
    tracking.log_metrics(workload_scores("test.review", report))
    return report


def patient_fractions_figure(evaluation_patients: pd.DataFrame) -> Figure:
    """The estimated fraction of each patient with its interval against the labelled one, by call."""
    if evaluation_patients.empty:
        return plot_message(NOTHING_HELD_OUT)
    return plot_patient_fractions(
        {subset: table for subset, table in evaluation_patients.groupby("subset", sort=False)}
    )


def compute_metrics(
    predictions: pd.DataFrame,
    evaluation_patients: pd.DataFrame,
    model: dict[str, Any],
    params: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Metrics of each evaluated subset: overall, per patient, at several thresholds, calibration, at
    the model's operating point, and of its patients (``patients``: :func:`patient_metrics` of
    ``evaluation_patients``; MLflow ``<subset>.patients.<metric>``).

    Returns:
        ``evaluation_metrics`` (all of it, for the JSON report) and ``evaluation_scores`` (the headline
        numbers as MLflow metrics, ``<subset>.<metric>``).
    """
    positive, threshold = params["positive_class"], params["threshold"]
    column = probability_column(positive)
    negative = next(
        (label for label in sorted(predictions["label"].unique()) if label != positive), "negative"
    )
    point = model.get("operating_point")
    report: dict[str, Any] = {
        "positive_class": positive,
        "threshold": threshold,
        "tta": params["tta"],
        "temperature": float(model.get("temperature", 1.0)),
        "calibration_bins": params["calibration_bins"],
        "operating_point": dict(point) if point else None,
    }
    scores: dict[str, Any] = {}
    for subset, cells in _by_subset(predictions):
        is_positive = (cells["label"] == positive).to_numpy()
        report[subset] = metrics = _subset_report(cells, is_positive, negative, params)
        scores.update(
            {
                f"{subset}.{name}": {"value": metrics[name], "step": 0}
                for name in SCORES
                if metrics[name] is not None
            }
        )
        scores.update(_at_specificity_scores(subset, report[subset]["at_specificity"]))
        patients = evaluation_patients[evaluation_patients["subset"] == subset]
        metrics["patients"] = patient_metrics(patients, params["patients"]["min_fraction"])
        scores.update(
            {
                f"{subset}.patients.{name}": {"value": metrics["patients"][name], "step": 0}
                for name in PATIENT_METRICS
                if metrics["patients"][name] is not None
            }
        )
        if subset == "test":  # the patients that chose nothing: smears of their cells, as the model judges
            metrics["detection"], detection_scores = _test_detection(cells, model, params)
            scores.update(detection_scores)
        if point and point["positive_class"] == positive:
            report["operating_point"][subset] = _at_operating_point(is_positive, cells[column], point)
            scores.update(
                {
                    f"{subset}.{k}_at_operating_point": {"value": v, "step": 0}
                    for k, v in report["operating_point"][subset].items()
                }
            )
        _log_subset(subset, report[subset])
    return report, scores


def _subset_report(cells: pd.DataFrame, is_positive, negative: str, params: dict[str, Any]) -> dict[str, Any]:
    """The metrics of one subset at ``threshold``, at each of ``operating_thresholds`` and
    ``specificity_targets``, per patient, and their intervals over resampled patients."""
    positive, threshold = params["positive_class"], params["threshold"]
    p_positive = cells[probability_column(positive)]
    return {
        **classification_metrics(is_positive, p_positive.to_numpy(), threshold, positive, negative),
        **calibration_errors(
            is_positive,
            p_positive,
            cells[f"{probability_column(positive)}_uncalibrated"],
            params["calibration_bins"],
        ),
        "operating_points": operating_points(
            is_positive, p_positive.to_numpy(), params["operating_thresholds"]
        ),
        "at_specificity": [
            sensitivity_at_specificity(is_positive, p_positive.to_numpy(), target)
            for target in params["specificity_targets"]
        ],
        "per_patient": per_patient(cells, threshold, positive),
        # 95% (intervals.level) intervals over resampled patients, at threshold
        "intervals": patient_bootstrap_intervals(
            cells,
            threshold,
            positive,
            params["intervals"]["resamples"],
            params["intervals"]["level"],
            params["seed"],
        ),
    }


def _at_operating_point(is_positive, p_positive: pd.Series, point: dict[str, Any]) -> dict[str, float | None]:
    at_point = operating_points(is_positive, p_positive.to_numpy(), [point["threshold"]])[0]
    return {k: at_point[k] for k in ("sensitivity", "specificity")}


def _at_specificity_scores(subset: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``<subset>.sensitivity_at_specificity_<target>`` of each target that both classes define."""
    return {
        f"{subset}.{at_specificity_name(row['target_specificity'])}": {"value": row["sensitivity"], "step": 0}
        for row in rows
        if row["sensitivity"] is not None
    }


def _log_subset(subset: str, metrics: dict[str, Any]) -> None:
    shown = {name: number(metrics[name]) for name in ("sensitivity", "specificity", "roc_auc")}
    logger.info(
        "%s: accuracy %.4f, sensitivity %s, specificity %s, ROC AUC %s, ECE %.4f (%.4f before temperature "
        "scaling); %s; %s",
        subset,
        metrics["accuracy"],
        shown["sensitivity"],
        shown["specificity"],
        shown["roc_auc"],
        metrics["ece"],
        metrics["ece_uncalibrated"],
        metrics["false_negatives_phrase"],
        metrics["false_positives_phrase"],
    )
    logger.info("%s: %s", subset, at_specificity_phrase(metrics["at_specificity"]))


def write_model_card(
    model: dict[str, Any],
    evaluation_metrics: dict[str, Any],
    evaluation_patients: pd.DataFrame,
    ingestion_report: dict[str, Any],
    image_index: pd.DataFrame,
    data_split: pd.DataFrame,
    image_tensors: torch.Tensor,
    parameters: dict[str, Any],
    onnx_check: dict[str, Any] | None = None,
) -> str:
    """The model card (Markdown, :func:`malaria_pipeline.assess.model_card.model_card`) from this run's records;
    a model trained on every patient gets the metrics of the cross-validation run that claims its accuracy,
    and the ONNX export's check (None: a model of a run that exported none). The training hook logs it
    with the registered model version."""
    subsets = image_index.merge(data_split, on="path").groupby("subset", sort=False)
    sample = image_tensors[:: max(1, len(image_tensors) // 512)]  # the same in every channel: grayscale
    facts = {
        "model": model,
        "ingestion": ingestion_report,
        "evaluation": evaluation_metrics,
        "test_patients": evaluation_patients[evaluation_patients["subset"] == "test"]
        if len(evaluation_patients)
        else evaluation_patients,
        "parameters": parameters,
        "profile": choose_profile(parameters.get("profile", "auto"))[0],  # what `auto` chose here
        # what the command line and conf/local changed, for the card's command that reproduces the run
        "overrides": differing_from_base(
            parameters, "all_patients" if parameters.get("cross_validation_run_id") else None
        ),
        "subsets": {
            name: {
                "patients": int(cells["patient_id"].nunique()),
                "images": len(cells),
                "parasitized": int((cells["label"] == parameters["positive_class"]).sum()),
            }
            for name, cells in sorted(subsets, key=lambda item: SUBSET_ORDER.get(item[0], 9))
        },
        "grayscale": bool(len(sample)) and bool((sample == sample[:, :1]).all()),
        "cross_validation": tracking.claimed_cross_validation(parameters.get("cross_validation_run_id")),
        "run_id": tracking.active_run_id(),
        "registered_model": parameters["registry"]["model_name"],
        "onnx": onnx_check,
    }
    return model_card(facts)


def package_model(model: dict[str, Any]) -> CellClassifier:
    """The trained classifier as a torch module (``uint8`` images in, logits out), for MLflow's pytorch flavor."""
    return load_model(model)


# The figures of a model trained on every image (conf/all_patients): no cell was held out from it.
NOTHING_HELD_OUT = (
    "No validation or test images: this model trained on every image. Its accuracy is that of "
    "the cross-validation run named by the MLflow tag cross_validation_run_id."
)


def confusion_matrix_figure(predictions: pd.DataFrame, params: dict[str, Any]) -> Figure:
    if predictions.empty:
        return plot_message(NOTHING_HELD_OUT)
    classes = sorted(predictions["label"].unique())
    subsets = {s: (c["label"], c["predicted"]) for s, c in _by_subset(predictions)}
    return plot_confusion_matrices(subsets, classes)


def roc_curve_figure(predictions: pd.DataFrame, params: dict[str, Any]) -> Figure:
    if predictions.empty:
        return plot_message(NOTHING_HELD_OUT)
    positive = params["positive_class"]
    column = probability_column(positive)
    subsets = {s: (c["label"] == positive, c[column]) for s, c in _by_subset(predictions)}
    return plot_roc_curves(subsets, positive)


def reliability_diagram_figure(predictions: pd.DataFrame, params: dict[str, Any]) -> Figure:
    """Accuracy against confidence per bin, before and after temperature scaling, one panel per subset."""
    if predictions.empty:
        return plot_message(NOTHING_HELD_OUT)
    bins, diagrams, column = params["calibration_bins"], {}, probability_column(params["positive_class"])
    for subset, cells in _by_subset(predictions):
        is_positive = (cells["label"] == params["positive_class"]).to_numpy()
        diagrams[subset] = {
            name: calibration_bins(*binary_confidence(is_positive, cells[name_column]), bins)
            for name, name_column in (("before", f"{column}_uncalibrated"), ("after", column))
        }
    return plot_reliability_diagrams(diagrams)


def _by_subset(predictions: pd.DataFrame):
    """``(subset, rows)`` in the order validation, test."""
    return [
        (s, predictions[predictions["subset"] == s])
        for s in EVALUATED_SUBSETS
        if (predictions["subset"] == s).any()
    ]


def top_losses_figure(
    predictions: pd.DataFrame, image_tensors: torch.Tensor, model: dict[str, Any], params: dict[str, Any]
) -> Figure:
    """The most wrongly classified cells, each with the Grad-CAM heatmap of its predicted class: true
    label → prediction, probability of the positive class, subset."""
    if predictions.empty:
        return plot_message(NOTHING_HELD_OUT)
    worst = predictions.nlargest(params["top_losses"], "loss")
    return _explained_figure(
        worst,
        image_tensors,
        model,
        params,
        f"Top {len(worst)} losses (true→predicted, "
        f"p = P({params['positive_class']})); heatmap: Grad-CAM of the predicted class",
    )


def explanations_figure(
    predictions: pd.DataFrame, image_tensors: torch.Tensor, model: dict[str, Any], params: dict[str, Any]
) -> Figure:
    """Correctly classified cells of each class (the test subset's, else validation's; a seeded random
    ``explanations_per_class`` of each), with the Grad-CAM heatmap of their class: what the network
    looks at when it is right."""
    if predictions.empty:
        return plot_message(NOTHING_HELD_OUT)
    subset = "test" if (predictions["subset"] == "test").any() else "validation"
    right = predictions[
        (predictions["subset"] == subset) & (predictions["label"] == predictions["predicted"])
    ]
    shown = (
        right.sample(frac=1.0, random_state=params["seed"])
        .groupby("label", sort=True)
        .head(params["explanations_per_class"])
        .sort_values("label", kind="stable")
    )
    return _explained_figure(
        shown,
        image_tensors,
        model,
        params,
        f"Correctly classified {subset} cells "
        f"(p = P({params['positive_class']})); heatmap: Grad-CAM of the class",
    )


def _explained_figure(
    cells: pd.DataFrame,
    image_tensors: torch.Tensor,
    model: dict[str, Any],
    params: dict[str, Any],
    suptitle: str,
) -> Figure:
    classifier = load_model(model, device=pick_device(params["device"]))
    images = image_tensors[torch.as_tensor(cells["row"].to_numpy(copy=True))]
    heatmaps = grad_cam(
        classifier,
        images,
        class_codes(cells["predicted"].to_numpy(), classifier.class_names),
        batch_size=params["batch_size"],
    )
    p_positive = cells[probability_column(params["positive_class"])]
    titles = [
        f"{r.label[:5]}→{r.predicted[:5]}\np={p:.2f} {r.subset[:5]}"
        for r, p in zip(cells.itertuples(), p_positive)
    ]
    return plot_explained_cells(images, heatmaps, titles, suptitle=suptitle)


def sample_images_figure(
    image_tensors: torch.Tensor, image_index: pd.DataFrame, params: dict[str, Any]
) -> Figure:
    """A few random cells of each class, with their patient."""
    shuffled = image_index.reset_index().sample(frac=1.0, random_state=params["seed"])
    samples = (
        shuffled.groupby("label", sort=True)
        .head(params["samples_per_class"])
        .sort_values("label", kind="stable")
    )
    titles = [f"{r.label}\n{r.patient_id}" for r in samples.itertuples()]
    return plot_image_grid(
        image_tensors[torch.as_tensor(samples["index"].to_numpy(copy=True))],
        titles,
        columns=params["samples_per_class"],
        suptitle="Sample cells per class",
    )
