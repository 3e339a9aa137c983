"""Nodes of the model-training pipeline."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import pandas as pd
import torch

from malaria_pipeline.assess.columns import probability_column
from malaria_pipeline.assess.label_audit import excluded_paths
from malaria_pipeline.assess.operating_point import calibrate, operating_point_doubts
from malaria_pipeline.assess.patient_call import PatientCall
from malaria_pipeline.assess.patients import ReferenceCells, fit_patient_settings
from malaria_pipeline.assess.text import number
from malaria_pipeline.cells.splitting import subset_rows
from malaria_pipeline.cells.tensors import class_codes, train_data
from malaria_pipeline.framework import tracking
from malaria_pipeline.framework.parameters import training_config
from malaria_pipeline.ml.checkpoint import CheckpointStore
from malaria_pipeline.ml.device import pick_device
from malaria_pipeline.ml.distributed import DistributedConfig, launch_training
from malaria_pipeline.ml.model_io import load_model, model_bundle
from malaria_pipeline.ml.models import probabilities
from malaria_pipeline.ml.train import HISTORY_COLUMNS, train_classifier

logger = logging.getLogger(__name__)


def train_model(
    image_tensors: torch.Tensor,
    image_index: pd.DataFrame,
    data_split: pd.DataFrame,
    normalization_stats: dict[str, Any],
    training_checkpoint: CheckpointStore,
    label_issues_to_exclude: pd.DataFrame,
    params: dict[str, Any],
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Trains the classifier on the ``train`` subset, choosing its epoch on ``validation``.

    Args:
        image_tensors: ``uint8, N×3×S×S`` in index order.
        image_index: ``path`` and ``label`` per image.
        data_split: ``path`` and ``subset`` per image.
        normalization_stats: ``mean`` and ``std`` of the training images.
        training_checkpoint: where each epoch's state is kept, for ``resume``.
        label_issues_to_exclude: the latest label audit of cross-validation; with
            ``exclude_label_issues`` its images leave the ``train`` subset (never validation or test).
        params: ``parameters_training.yml``: architecture, network, optimization and speed switches.

    Each epoch's row goes to the active MLflow run as soon as the epoch ends; a resumed run is tagged
    with the id of the MLflow run that wrote the checkpoint it continues. With more than one process
    (``distributed``), training runs in processes of its own (:mod:`malaria_pipeline.ml.distributed`),
    whose rank 0 logs each epoch to this run and returns the weights.

    Returns:
        ``model``: the bundle that :func:`~malaria_pipeline.ml.model_io.load_model` rebuilds;
        ``training_history``: one row per epoch (epoch, stage, train_loss, valid_loss, accuracy, lr, seconds).
    """
    config = training_config(params)
    if config.resume:
        _tag_the_run_it_continues(training_checkpoint)
    data_split = without_label_issues(
        data_split,
        excluded_paths(label_issues_to_exclude, image_index["path"], params["exclude_label_issues"]),
    )
    data = train_data(
        image_tensors, image_index, data_split, normalization_stats, need_validation=config.keep == "best"
    )
    checkpoint = dataclasses.replace(
        training_checkpoint, metadata={"mlflow_run_id": tracking.active_run_id() or ""}
    )
    distributed = DistributedConfig.from_params(params["distributed"])
    if distributed.enabled:  # in processes of their own, rank 0 logging each epoch to this run
        result = launch_training(
            data,
            config,
            distributed,
            checkpoint=checkpoint,
            on_epoch_end=tracking.epoch_logger(tracking.active_run_id()),
        )
    else:
        result = train_classifier(data, config, checkpoint=checkpoint, on_epoch_end=tracking.log_epoch)
    bundle = model_bundle(
        result.classifier,
        architecture=config.architecture,
        network_args=config.network_args,
        extra={"best_epoch": result.best_epoch, "pretrained": config.pretrained},
    )
    return bundle, pd.DataFrame(result.history, columns=list(HISTORY_COLUMNS))


def without_label_issues(data_split: pd.DataFrame, excluded: set[str]) -> pd.DataFrame:
    """``data_split`` with the ``train`` images among ``excluded`` moved to the subset ``excluded``."""
    if not excluded:
        return data_split
    leave_out = (data_split["subset"] == "train") & data_split["path"].isin(excluded)
    logger.info(
        "Leaving %d suspected label errors of the latest label audit out of the %d training images "
        "(training.exclude_label_issues); validation and test keep theirs",
        int(leave_out.sum()),
        int((data_split["subset"] == "train").sum()),
    )
    tracking.log_metrics({"training.excluded_label_issues": int(leave_out.sum())})
    return data_split.assign(subset=data_split["subset"].mask(leave_out, "excluded"))


def _tag_the_run_it_continues(checkpoint: CheckpointStore) -> None:
    saved = checkpoint.load()
    previous = (saved or {}).get("metadata", {}).get("mlflow_run_id")
    if previous:
        logger.info("Resuming the training of MLflow run %s", previous)
        tracking.set_tags({tracking.RESUMED_FROM_TAG: previous})


def calibrate_model(
    trained_model: dict[str, Any],
    image_tensors: torch.Tensor,
    image_index: pd.DataFrame,
    data_split: pd.DataFrame,
    training_params: dict[str, Any],
    evaluation_params: dict[str, Any],
    claimed_patient_settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fits temperature scaling and chooses the clinical operating threshold, both on the validation
    subset (never the test subset), and keeps them in the model bundle.

    Args:
        trained_model: the bundle of :func:`train_model`.
        image_tensors, image_index, data_split: as for :func:`train_model`.
        training_params: ``calibrate`` (false: T stays 1).
        evaluation_params: ``positive_class``, ``target_sensitivity``, ``target_specificity``, ``tta``,
            ``batch_size``, ``device``.
        claimed_patient_settings: ``cv_patient_settings`` of the cross-validation run that the training run
            claims, with its ``cross_validation_run_id`` (None: none claimed); read only without
            validation images.

    Returns:
        ``model``: the bundle with ``temperature``; where the validation subset holds both classes,
        ``operating_point`` (the threshold on P(positive class) chosen on the calibrated probabilities,
        with ``tta`` as evaluation and inference predict; a warning when :func:`operating_point_doubts`
        finds it chosen on too few cells or poor) and ``reference_cells`` (the validation cells' counts
        that give the sensitivity and specificity of any threshold, for the patient tables); and
        ``patient_call``, the rule of ``evaluation.patients.call``. Without validation images (a model
        trained on every image): :func:`without_validation`, with the patient-table settings of the
        cross-validation run it claims (:func:`with_cross_validation_settings`).
    """
    rule = PatientCall(**evaluation_params["patients"]["call"]).as_dict()
    rows = torch.from_numpy(subset_rows(image_index, data_split, "validation", n_images=len(image_tensors)))
    if len(rows) == 0:
        bundle = {**without_validation(trained_model, evaluation_params), "patient_call": rule}
        return with_cross_validation_settings(bundle, claimed_patient_settings)
    classifier = load_model(trained_model, device=pick_device(evaluation_params["device"]))
    labels = class_codes(image_index["label"].to_numpy()[rows.numpy()], classifier.class_names)
    fit = training_params["calibrate"]  # the whole group was checked when the session started
    views = classifier.view_logits(
        image_tensors[rows], evaluation_params["batch_size"], evaluation_params["tta"]
    )
    point = calibrate(
        classifier,
        views,
        labels,
        fit=fit,
        positive_class=evaluation_params["positive_class"],
        target_sensitivity=evaluation_params["target_sensitivity"],
        target_specificity=evaluation_params["target_specificity"],
    )
    if fit:
        tracking.log_metrics({"training.temperature": classifier.temperature})
    bundle = {**trained_model, "temperature": classifier.temperature, "patient_call": rule}
    if not point:
        return bundle
    for doubt in operating_point_doubts(point, evaluation_params["operating_point_checks"]):
        logger.warning("Do not trust the operating threshold %.4f: %s", point["threshold"], doubt)
    positive = classifier.class_names.index(evaluation_params["positive_class"])
    patients = image_index["patient_id"].to_numpy()[rows.numpy()]
    p_positive = probabilities(views, classifier.temperature)[:, positive].numpy().astype(float)
    source = (
        f"the validation subset of the training run ({len(rows):,} cells of {len(set(patients))} patients)"
    )
    settings = fit_patient_settings(
        pd.DataFrame(
            {
                "patient_id": patients,
                "label": np.asarray(classifier.class_names)[labels.numpy()],
                probability_column(evaluation_params["positive_class"]): p_positive,
                "operating_threshold": point["threshold"],
            }
        ),
        positive=evaluation_params["positive_class"],
        count_at=evaluation_params["patients"]["count_at"],
        quantifier=evaluation_params["patients"]["quantifier"],
        source=source,
        healthy_range=evaluation_params["patients"]["healthy_range"],
    )
    _log_patient_settings(settings)
    return {**bundle, "operating_point": point, **settings}


def _log_patient_settings(settings: dict[str, Any]) -> None:
    spread = settings["patient_spread"]
    logger.info(
        "Patient tables: cells counted at %.4g; between the %d validation patients, false alarms %.4f (rho "
        "%.4f), detection %.4f (rho %.4f); quantifier %s",
        settings["count_threshold"],
        spread["false_alarm"]["patients"],
        spread["false_alarm"]["mean"],
        spread["false_alarm"]["rho"],
        spread["detection"]["mean"],
        spread["detection"]["rho"],
        settings["quantifier"],
    )


# What a model keeps for its patient tables (calibrate_model, from its validation subset), and what the
# cross-validation pipeline stores for a model trained on every patient (cv_patient_settings).
PATIENT_SETTINGS = ("reference_cells", "count_threshold", "patient_spread", "quantifier", "patient_call")


def with_cross_validation_settings(bundle: dict[str, Any], claimed: dict[str, Any] | None) -> dict[str, Any]:
    """The bundle of a model trained without validation images with the patient-table settings of the
    cross-validation run it claims (``claimed_cv_patient_settings``: the pooled out-of-fold reference
    cells, the spread between their patients, the counting threshold and the recommended call rule), and
    that run's id in ``patient_settings_from``. None claimed: the bundle as it is, whose patient tables
    give no fraction and call every patient review (a warning says so).

    Raises:
        ValueError: the claimed settings lack one of :data:`PATIENT_SETTINGS`.
    """
    if claimed is None:
        logger.warning(
            "No validation images and no cross-validation run claimed (cross_validation_run_id is null): this "
            "model keeps no reference cells, and its patient tables will call every patient review. Set "
            "cross_validation_run_id (conf/all_patients/globals.yml) to take them from cross-validation"
        )
        return bundle
    run_id = claimed["cross_validation_run_id"]
    missing = [key for key in PATIENT_SETTINGS if key not in claimed]
    if missing:
        raise ValueError(
            f"The patient settings of cross-validation run {run_id} lack {', '.join(missing)}: run "
            "`kedro run --pipelines cross_validation` again with this version, and claim the new run"
        )
    rates = ReferenceCells.from_dict(claimed["reference_cells"]).at(claimed["count_threshold"])
    logger.info(
        "No validation images: the patient tables take %s, at threshold %.4g (sensitivity %.4f, "
        "specificity %.4f), with its spread between patients and its call rule %s",
        rates.source,
        rates.threshold,
        rates.sensitivity,
        rates.specificity,
        claimed["patient_call"],
    )
    return {**bundle, **{key: claimed[key] for key in PATIENT_SETTINGS}, "patient_settings_from": run_id}


def without_validation(trained_model: dict[str, Any], evaluation_params: dict[str, Any]) -> dict[str, Any]:
    """The bundle of a model trained without validation images (``conf/all_patients``): nothing to fit
    or choose on, so T and the operating threshold are ``evaluation.without_validation``'s, the medians
    over the folds of a cross-validation of the same configuration (``recommended_temperature`` and
    ``recommended_operating_threshold`` of ``cv_metrics.json``); null: T = 1 and no operating threshold.
    """
    given = evaluation_params.get("without_validation") or {}
    temperature, threshold = given.get("temperature"), given.get("operating_threshold")
    if temperature is not None and not temperature > 0:
        raise ValueError(
            f"evaluation.without_validation.temperature is {temperature!r}: give a number above 0 "
            "(recommended_temperature of cv_metrics.json), or null for 1"
        )
    if threshold is not None and not 0 <= threshold <= 1:
        raise ValueError(
            f"evaluation.without_validation.operating_threshold is {threshold!r}: give a probability "
            "from 0 to 1 (recommended_operating_threshold of cv_metrics.json), or null for none"
        )
    bundle = {**trained_model, "temperature": float(temperature or 1.0)}
    if threshold is None:
        logger.warning(
            "No validation images: no operating threshold for this model (T = %s). Set "
            "evaluation.without_validation from a cross-validation run's cv_metrics.json to give it one",
            bundle["temperature"],
        )
        return bundle
    logger.info(
        "No validation images: T = %s and the operating threshold %s on P(%s), the medians over the folds of "
        "cross-validation (evaluation.without_validation)",
        bundle["temperature"],
        threshold,
        evaluation_params["positive_class"],
    )
    return {
        **bundle,
        "operating_point": {
            "threshold": float(threshold),
            "positive_class": evaluation_params["positive_class"],
            "tta": bool(evaluation_params["tta"]),
            "target_sensitivity": float(evaluation_params["target_sensitivity"]),
            "target_specificity": evaluation_params["target_specificity"],
            "chosen_on": "cross-validation (evaluation.without_validation)",
        },
    }


def export_onnx_model(
    model: dict[str, Any],
    image_tensors: torch.Tensor,
    image_index: pd.DataFrame,
    data_split: pd.DataFrame,
    training_params: dict[str, Any],
) -> tuple[bytes, dict[str, Any]]:
    """The calibrated model as one ONNX graph (``onnx_model``: ``uint8, N×3×S×S`` images in, class
    probabilities out, normalization and temperature inside; :func:`~malaria_pipeline.ml.onnx_export.export_onnx`),
    checked against PyTorch on at most ``training.onnx.check_cells`` validation cells (training cells for a
    model trained without validation images): ``onnx_check`` holds the largest |Δp| (also the MLflow metric
    ``onnx.max_abs_difference``).

    Raises:
        OnnxMismatchError: a gap above ``training.onnx.tolerance``: the run fails, naming it.
    """
    from malaria_pipeline.ml.onnx_export import check_onnx, export_onnx

    onnx = training_params["onnx"]
    classifier = load_model(model)
    checked_on = "validation"
    rows = subset_rows(image_index, data_split, "validation", n_images=len(image_tensors))
    if len(rows) == 0:
        checked_on, rows = "train (no validation images)", subset_rows(image_index, data_split, "train")
    rows = torch.from_numpy(rows[: onnx["check_cells"]])
    graph = export_onnx(classifier, model)
    report = {
        **check_onnx(graph, classifier, image_tensors[rows], onnx["tolerance"]),
        "checked_on": checked_on,
    }
    logger.info(
        "ONNX graph of %d bytes (opset %d): its probabilities differ from PyTorch's by at most %.2g on %d %s "
        "cells (tolerance %g), labels %s",
        report["bytes"],
        report["opset"],
        report["max_abs_difference"],
        report["cells"],
        checked_on,
        report["tolerance"],
        "the same" if report["same_labels"] else "not all the same",
    )
    tracking.log_metrics({"onnx.max_abs_difference": report["max_abs_difference"]})
    return graph, report


def quantize_onnx_model(
    onnx_model: bytes,
    image_tensors: torch.Tensor,
    image_index: pd.DataFrame,
    data_split: pd.DataFrame,
    training_params: dict[str, Any],
    evaluation_params: dict[str, Any],
) -> tuple[bytes, dict[str, Any]]:
    """The ONNX graph quantized to int8 (:func:`~malaria_pipeline.ml.onnx_quantize.quantize_int8`), its
    activations calibrated on at most ``training.onnx.int8.calibration_cells`` validation cells, kept only
    where it pays: faster than the float32 graph on the test cells (side by side, the best of
    ``timing_rounds``) and, there, an accuracy (at ``evaluation.threshold``) and a ROC AUC at most
    ``max_loss`` below float32's.

    Returns:
        ``onnx_int8_model``: the int8 graph, or no bytes (an empty file) where it does not pay;
        ``onnx_int8_check``: both graphs' cells/s, accuracy and AUC, and whether int8 was kept and why.
    """
    from malaria_pipeline.ml.onnx_quantize import cells_per_second, quantize_int8
    from malaria_pipeline.ml.onnx_runtime import OnnxClassifier

    settings = training_params["onnx"]["int8"]
    if not settings["quantize"]:
        logger.info("training.onnx.int8.quantize is false: no int8 graph")
        return b"", {"kept": False, "why": "training.onnx.int8.quantize is false"}
    n_images = len(image_tensors)
    calibration = subset_rows(image_index, data_split, "validation", n_images=n_images)
    compared_on = next(
        (name for name in ("test", "validation", "train") if len(subset_rows(image_index, data_split, name))),
        "train",
    )
    if not len(calibration):
        calibration = subset_rows(image_index, data_split, "train")
    images = image_tensors.numpy()
    rows = subset_rows(image_index, data_split, compared_on, n_images=n_images)
    graphs = {
        "onnx": OnnxClassifier(onnx_model, path="onnx_model", run="this training run"),
        "onnx_int8": OnnxClassifier(
            quantize_int8(onnx_model, images[calibration[: settings["calibration_cells"]]]),
            path="onnx_int8_model",
            run="this training run",
            runtime="onnx_int8",
        ),
    }
    speed = cells_per_second(graphs, images[rows], rounds=settings["timing_rounds"])
    truth = image_index["label"].to_numpy()[rows] == evaluation_params["positive_class"]
    report: dict[str, Any] = {"compared_on": compared_on, "cells": int(len(rows))}
    for name, graph in graphs.items():
        report[name] = {
            "cells_per_second": round(speed[name], 1),
            **_scores(graph, images[rows], truth, evaluation_params),
        }
    report["bytes"] = {name: len(graph.graph) for name, graph in graphs.items()}
    report["kept"], report["why"] = _int8_pays(report, settings["max_loss"])
    _log_int8(report)
    return (graphs["onnx_int8"].graph if report["kept"] else b""), report


def _scores(
    graph, images: np.ndarray, truth: np.ndarray, evaluation_params: dict[str, Any]
) -> dict[str, Any]:
    """Accuracy at ``evaluation.threshold`` and ROC AUC (None with one class) of ``graph`` on ``images``."""
    from sklearn.metrics import roc_auc_score

    p = graph.predict_proba(images)[:, graph.class_names.index(evaluation_params["positive_class"])]
    return {
        "accuracy": float(((p >= evaluation_params["threshold"]) == truth).mean()),
        "roc_auc": float(roc_auc_score(truth, p)) if 0 < truth.sum() < len(truth) else None,
    }


def _log_int8(report: dict[str, Any]) -> None:
    """One log line of the int8 decision, and both graphs' figures as MLflow metrics ``onnx.<runtime>.<key>``."""
    logger.info(
        "int8 ONNX graph %s (%s): on %d %s cells, %.0f against %.0f cells/s (float32), accuracy %.4f against %.4f, AUC %s against %s",
        "kept" if report["kept"] else "not kept",
        report["why"],
        report["cells"],
        report["compared_on"],
        report["onnx_int8"]["cells_per_second"],
        report["onnx"]["cells_per_second"],
        report["onnx_int8"]["accuracy"],
        report["onnx"]["accuracy"],
        *(number(report[name]["roc_auc"]) for name in ("onnx_int8", "onnx")),
    )
    tracking.log_metrics(
        {
            f"onnx.{name}.{key}": report[name][key]
            for name in ("onnx", "onnx_int8")
            for key in ("cells_per_second", "accuracy", "roc_auc")
            if report[name][key] is not None
        }
    )


def _int8_pays(report: dict[str, Any], max_loss: float) -> tuple[bool, str]:
    """Whether the int8 graph is kept: faster, and its accuracy and AUC at most ``max_loss`` below float32's."""
    fp32, int8 = report["onnx"], report["onnx_int8"]
    if int8["cells_per_second"] <= fp32["cells_per_second"]:
        return False, "not faster than float32"
    for key in ("accuracy", "roc_auc"):
        if fp32[key] is not None and int8[key] < fp32[key] - max_loss:
            return False, f"its {key} is more than training.onnx.int8.max_loss ({max_loss}) below float32's"
    return True, f"faster, and within training.onnx.int8.max_loss ({max_loss}) of float32's accuracy and AUC"
