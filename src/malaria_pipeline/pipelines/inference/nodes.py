"""Nodes of the inference pipeline and of the MLflow model that each training run logs.

Importing this module imports no torch: on ONNX Runtime (``inference.runtime: onnx``) the served model
and Spark's workers answer without it; the torch paths import it where they start.

One concern over 500 lines: how a cell gets its answer. The pipeline's nodes and the served model's
per-cell and per-patient answers share the decoding, the threshold and the patient table, and every path
calls them here so that they cannot drift apart; which classifier answers is :mod:`.classifiers`'.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import time
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from malaria_pipeline.assess.columns import probability_column
from malaria_pipeline.assess.patients import (
    PATIENT_COLUMNS,
    PatientSettings,
    model_patient_settings,
    patient_table,
)
from malaria_pipeline.cells.archive import (
    IMAGE_SUFFIXES,
    ArchiveError,
    ImageArchive,
    check_source,
    image_members,
    patient_id,
)
from malaria_pipeline.ml.images import ImageLimits, UnreadableImageError, decode_cell_image, one_line
from malaria_pipeline.ml.onnx_runtime import OnnxClassifier

from .classifiers import classifier_for, classify, runtime_name, torch_classifier

if TYPE_CHECKING:
    import torch

    from malaria_pipeline.ml.model_io import CellClassifier

logger = logging.getLogger(__name__)


def predict_images(
    inference_images: ImageArchive, inference_model: dict[str, Any], params: dict[str, Any]
) -> tuple[pd.DataFrame, dict[str, Any], dict[str, np.ndarray]]:
    """Classifies every image of a folder or zip with a trained model.

    The images go through exactly the training preprocessing: decoded once, 3 channels, fitted to the
    model's image size as in ingestion, normalized with the model's statistics. A file that is not a
    decodable image is skipped and listed with its reason.

    Args:
        inference_images: the new images (PNG or JPEG, any size, grayscale or RGB, any folders).
        inference_model: the bundle of a training run: the latest ``model`` by default, else the
            version or MLflow model that ``inference.model_version`` or ``inference.model_uri`` names.
        params: ``source``, ``threshold`` (P(Parasitized) at or above it is Parasitized; ``auto``: the
            model's operating threshold, :func:`operating_threshold`), ``tta`` (test-time augmentation),
            ``batch_size``, ``workers``, ``device``, ``image_limits``, and ``explain``, ``explain_max``,
            ``explain_scale`` (:func:`explain_positives`).

    Returns:
        ``predictions``: file, predicted label and probability of Parasitized per image;
        ``inference_summary``: counts per class, fraction parasitized, skipped files with reasons, and
        the overlay of each explained cell; ``explanation_overlays``: those overlays as PNG pixels
        (none unless ``explain``).
    """
    from malaria_pipeline.ml.packing import pack_images

    check_source(params.get("source"), inference_images, "inference.source", "inference_source")
    classifier = classifier_for(inference_model, params)
    threshold = operating_threshold(inference_model, params)
    candidates, skipped = image_members(inference_images.members())
    limits = ImageLimits.from_params(params["image_limits"], "inference.image_limits")
    packed = pack_images(inference_images, candidates, classifier.image_size, limits, params.get("workers"))
    skipped = sorted(skipped + packed.skipped)
    if not packed.members:
        raise ArchiveError(
            f"{inference_images.source} holds no decodable PNG or JPEG image ({len(skipped)} files skipped)"
        )
    started = time.perf_counter()
    p_positive, labels = classify(classifier, packed.images, threshold, params)
    seconds = time.perf_counter() - started
    predictions = pd.DataFrame(
        {"file": packed.members, "label": labels, probability_column(params["positive_class"]): p_positive}
    )

    counts = predictions["label"].value_counts()
    summary = {
        "source": inference_images.source,
        "model": {
            key: inference_model.get(key)
            for key in ("source", "registered_version", "architecture", "image_size")
        },
        "threshold": threshold,
        "threshold_parameter": params["threshold"],
        "tta": params["tta"],
        "images": len(predictions),
        "per_class": {name: int(counts.get(name, 0)) for name in classifier.class_names},
        "fraction_parasitized": float((labels == params["positive_class"]).mean()),
        "skipped": [{"path": member, "reason": reason} for member, reason in skipped],
    }
    summary["runtime"] = runtime_name(classifier)
    summary["classify_seconds"] = round(seconds, 3)
    overlays, summary["explanations"] = explain_positives(
        torch_classifier(inference_model, params) if params["explain"] else None,
        packed.images,
        predictions,
        params,
    )
    logger.info(
        "Classified %d images of %s on %s in %.1f s (%.0f cells/s): %s; %.1f%% parasitized; skipped %d files",
        len(predictions),
        inference_images.source,
        summary["runtime"],
        seconds,
        len(predictions) / max(seconds, 1e-9),
        summary["per_class"],
        100 * summary["fraction_parasitized"],
        len(skipped),
    )
    for member, reason in skipped:
        logger.warning("Skipped %s: %s", member, reason)
    return predictions, summary, overlays


GROUPS = ("prefix", "folder")
# The patient of a file without a prefix, when the patients are the file-name prefixes.
NO_PREFIX = "(no prefix)"


def predict_patients(
    predictions: pd.DataFrame,
    inference_summary: dict[str, Any],
    inference_model: dict[str, Any],
    params: dict[str, Any],
) -> pd.DataFrame:
    """``patient_predictions``: one row per patient or folder (``inference.group_by``), with its cells,
    those called Parasitized, the files that could not be classified (``errors``), the parasitized
    fraction corrected for the model's errors with its interval, and the call
    (:func:`~malaria_pipeline.assess.patients.patient_table`).

    The cells are counted Parasitized at the model's counting threshold (else the threshold the cells were
    called at); the sensitivity and specificity come from the model's reference cells there (its
    validation subset; for a model trained on every patient, the pooled out-of-fold cells of the
    cross-validation run it claims), the healthy range from the spread between its reference patients,
    and the call is the rule stored in the model (else ``inference.patients.call``). A model without
    reference cells (trained before they were kept, or on every patient without a cross-validation run to
    take them from) gives no fraction and calls every patient ``review``, with a warning.
    ``group_by: null``: an empty table.
    """
    group_by = params["group_by"]
    if not wants_patient_table(group_by, "inference.group_by"):
        return pd.DataFrame(columns=PATIENT_COLUMNS)
    settings = served_settings(inference_model, inference_summary["threshold"], params)
    failed = pd.Series(  # image files that could not be classified; a README beside the cells is no error
        [row["path"] for row in inference_summary["skipped"] if row["path"].lower().endswith(IMAGE_SUFFIXES)],
        dtype=object,
    )
    table = patient_table(
        patients_of_files(predictions["file"], group_by),
        predictions[probability_column(params["positive_class"])].to_numpy() >= settings.threshold,
        settings.rates,
        settings.rule,
        params["patients"]["level"],
        errors=patients_of_files(failed, group_by),
        spread=settings.spread,
    )
    log_patient_rows(table, group_by, params["positive_class"])
    return table


def wants_patient_table(group_by: str | None, parameter: str) -> bool:
    """Whether ``group_by``, the value of ``parameter``, asks for a patient table (null: no, logged).

    Raises:
        ValueError: a value other than prefix, folder or null.
    """
    if group_by is None:
        logger.info("%s is null: no patient table", parameter)
        return False
    if group_by not in GROUPS:
        raise ValueError(
            f"{parameter} is {group_by!r}: give prefix (the file-name prefix before _IMG_), folder "
            "(the folder a file is in) or null (no patient table)"
        )
    return True


def served_settings(model: dict[str, Any], threshold: float, params: dict[str, Any]) -> PatientSettings:
    """The patient settings of a model bundle (:func:`model_patient_settings`), with a warning where the
    model keeps no reference cells: its tables give no fraction and call everyone ``review``."""
    settings = model_patient_settings(model, threshold, params["patients"]["call"])
    if settings.rates is None:
        logger.warning(
            "This model keeps no reference cells (it was trained without validation images and without a "
            "cross-validation run to take them from, or before they were kept): the patient table gives "
            "no corrected fraction, and every call is review"
        )
    return settings


def log_patient_rows(table: pd.DataFrame, group_by: str, positive_class: str) -> None:
    """One log line per row of a patient table."""
    for row in table.itertuples():
        logger.info(
            "%s %s: %d cells, %d called %s, %d errors; parasitized %s; %s",
            group_by,
            row.patient,
            row.cells,
            row.parasitized,
            positive_class,
            row.errors,
            "n/a"
            if np.isnan(row.fraction)
            else f"{row.fraction:.2%} ({row.fraction_low:.2%} to {row.fraction_high:.2%})",
            row.call,
        )


def patients_of_files(files: pd.Series, group_by: str) -> pd.Series:
    """The patient of each file: its prefix before ``_IMG_`` (``(no prefix)`` without one), or its folder."""
    if group_by == "folder":
        return files.map(lambda file: str(PurePosixPath(file).parent))
    return files.map(lambda file: patient_id(file) or NO_PREFIX)


def explain_positives(
    classifier: CellClassifier | None, images: torch.Tensor, predictions: pd.DataFrame, params: dict[str, Any]
) -> tuple[dict[str, np.ndarray], list[dict[str, Any]] | None]:
    """With ``params["explain"]``: the Grad-CAM heatmap of Parasitized over each cell predicted
    Parasitized, the most confident first, at most ``explain_max`` (null: all), as a PNG of the cell and
    its overlay side by side, ``explain_scale`` times enlarged (:func:`~malaria_pipeline.assess.plots.cell_and_overlay`).

    Returns:
        ``{file name: uint8 H×W×3}`` and, for the summary, the list of ``{file, overlay, p_parasitized}``
        (None without ``explain``).
    """
    if not params["explain"]:
        return {}, None
    positive, column = params["positive_class"], probability_column(params["positive_class"])
    chosen = predictions[predictions["label"] == positive].sort_values(column, ascending=False, kind="stable")
    if params["explain_max"] is not None:
        chosen = chosen.head(params["explain_max"])
    import torch  # Grad-CAM needs the network's gradients: torch, whatever inference.runtime

    rows = torch.as_tensor(chosen.index.to_numpy(copy=True))
    pictures = explained_cells(
        classifier, images[rows], positive, params["batch_size"], params["explain_scale"]
    )
    overlays, listing = {}, []
    for rank, (row, p, picture) in enumerate(zip(chosen.itertuples(), chosen[column], pictures), start=1):
        name = overlay_name(rank, row.file)
        overlays[name] = picture
        listing.append({"file": row.file, "overlay": name, column: float(p)})
    logger.info(
        "Explained %d of the %d cells predicted %s (Grad-CAM overlays, explanation_overlays)",
        len(listing),
        int((predictions["label"] == positive).sum()),
        positive,
    )
    return overlays, listing


def explained_cells(
    classifier: CellClassifier, images: torch.Tensor, positive: str, batch_size: int, scale: int
) -> list[np.ndarray]:
    """Each cell of ``uint8, N×3×S×S`` beside its Grad-CAM heatmap of ``positive`` (where the network found
    the evidence for it), ``scale`` times enlarged: ``uint8, sS×2sS×3`` each
    (:func:`~malaria_pipeline.assess.plots.cell_and_overlay`). What ``inference.explain`` writes, and what a
    reviewer sees beside each cell."""
    from malaria_pipeline.assess.plots import (
        cell_and_overlay,  # matplotlib: not among the served model's requirements
    )
    from malaria_pipeline.ml.explain import grad_cam

    if not len(images):
        return []
    heatmaps = grad_cam(classifier, images, classifier.class_names.index(positive), batch_size)
    return [cell_and_overlay(image, heatmap, scale) for image, heatmap in zip(images, heatmaps)]


def overlay_name(rank: int, file: str) -> str:
    """The file name of a cell's overlay: its rank, then its own name made safe (``00001_cell_3.png``)."""
    return f"{rank:05d}_{_SAFE_NAME.sub('_', PurePosixPath(file).stem)[:100]}.png"


_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


def predict_encoded_images(
    served_images: pd.DataFrame,
    model: dict[str, Any],
    params: dict[str, Any],
    classifier: CellClassifier | OnnxClassifier | None = None,
) -> pd.DataFrame:
    """The MLflow model's answer per cell: image files encoded in base64 in, one answer per row out.

    Any number of rows, from Python (``mlflow.pyfunc.load_model(uri).predict``) or Spark
    (``mlflow.pyfunc.spark_udf``): the rows are decoded and classified ``batch_size`` at a time, so memory
    grows with the chunk, not with the request. Only the scoring server (``mlflow models serve``) refuses
    a request of more than ``max_rows`` rows.

    One row never fails the request: a row that is not base64, not a PNG or JPEG, broken, or outside
    the image limits (a decompression bomb, say) gets its reason in ``error``, and the other rows are
    answered.

    Args:
        served_images: a column ``image`` of base64-encoded PNG or JPEG files, one cell per row.
        model: the bundle of the training run that logged the MLflow model (or, on ONNX Runtime, the
            bundle less its weights that its graph carries).
        params: ``inference``'s ``threshold`` (a number, or ``auto``), ``tta``, ``batch_size``, ``device``,
            ``runtime``, ``image_limits`` and ``max_rows``.
        classifier: what answers (None: the one ``params["runtime"]`` asks of ``model``).

    Returns:
        A table with the index of ``served_images`` and the columns ``label`` (``Parasitized`` or
        ``Uninfected``), ``p_parasitized`` and ``error``. A row whose image cannot be classified keeps
        its place: its ``error`` names the row and says why, and its label and probability are None.
        Every other row has ``error`` None.

    Raises:
        ValueError: the input has no column ``image``.
        MlflowException: (HTTP 400) served, the request has more than ``max_rows`` rows.
    """
    if "image" not in served_images.columns:
        raise ValueError(
            f"The input has the columns {list(served_images.columns)}; it needs a column 'image' "
            "holding each image file's bytes encoded in base64"
        )
    if _served():
        _check_rows(len(served_images), params["max_rows"])
    limits = ImageLimits.from_params(params["image_limits"], "inference.image_limits")
    classifier = classifier or classifier_for(model, params)
    threshold = operating_threshold(model, params)
    labels = np.full(len(served_images), None, dtype=object)
    p_positive = np.full(len(served_images), np.nan)
    errors: dict[int, str] = {}
    values = served_images["image"]
    for start in range(0, len(values), params["batch_size"]):
        chunk = values.iloc[start : start + params["batch_size"]]
        images, decoded = _decode_rows(chunk, start, classifier.image_size, limits, errors)
        if images:
            p_positive[decoded], labels[decoded] = classify(classifier, np.stack(images), threshold, params)
    for message in errors.values():
        logger.warning("Not classified: %s", message)
    return _answer_table(
        served_images.index, labels, p_positive, errors, probability_column(params["positive_class"])
    )


# What the MLflow model answers per (its param ``per``): one row per input row, or per patient.
PER = ("cell", "patient")
# The patient of the rows of a request without a column ``patient``, and of a row whose patient is empty.
ONE_PATIENT, NO_PATIENT = "(all rows)", "(no patient)"


def served_patients(
    served_images: pd.DataFrame, cells: pd.DataFrame, model: dict[str, Any], params: dict[str, Any]
) -> pd.DataFrame:
    """The MLflow model's answer per patient: the patient table (the columns of ``patient_predictions``)
    of the cells answered by :func:`predict_encoded_images`, grouped by the column ``patient`` (without
    one, every row is one patient, ``(all rows)``). A row that could not be classified counts in its
    patient's ``errors``, as a file that can't be read does in the ``inference`` pipeline's table.

    The cells are counted, and the table made, as :func:`predict_patients` makes it: the model's counting
    threshold, rates, spread and rule, and ``params["patients"]["level"]``. Missing numbers (a patient
    without a classified cell, a model without rates) are None, so that the served JSON stays valid.
    """
    if "patient" in served_images.columns:
        patients = served_images["patient"].map(lambda p: str(p) if isinstance(p, str) and p else NO_PATIENT)
    else:
        patients = pd.Series(ONE_PATIENT, index=served_images.index, dtype=object)
    settings = served_settings(model, operating_threshold(model, params), params)
    failed = cells["error"].notna().to_numpy()
    p_positive = cells[probability_column(params["positive_class"])].astype(float).to_numpy()
    table = patient_table(
        patients[~failed],
        p_positive[~failed] >= settings.threshold,
        settings.rates,
        settings.rule,
        params["patients"]["level"],
        errors=patients[failed],
        spread=settings.spread,
    )
    logger.info(
        "Answered %d rows as %d patients: %s",
        len(served_images),
        len(table),
        dict(table["call"].value_counts()),
    )
    gaps = table.columns[table.isna().any()]
    return table.astype({name: object for name in gaps}).where(table.notna(), None)


def _decode_rows(
    chunk: pd.Series, start: int, size: int, limits: ImageLimits, errors: dict[int, str]
) -> tuple[list[np.ndarray], list[int]]:
    """The decoded images of a chunk of base64 rows that begins at position ``start``, with their
    positions; each row that can't be decoded gets its reason in ``errors`` at its position."""
    images, decoded = [], []
    for position, (row, value) in enumerate(chunk.items(), start=start):
        try:
            images.append(decode_cell_image(_base64_bytes(value, limits), size, limits)[0])
            decoded.append(position)
        except UnreadableImageError as error:
            errors[position] = f"row {row}: {error}"
        except Exception as error:  # noqa: BLE001 - one row never fails the others
            logger.exception("Row %s could not be decoded", row)
            errors[position] = f"row {row}: could not be decoded ({type(error).__name__}: {one_line(error)})"
    return images, decoded


def _answer_table(
    index: pd.Index, labels: np.ndarray, p_positive: np.ndarray, errors: dict[int, str], column: str
) -> pd.DataFrame:
    """``label``, ``column`` and ``error`` by row: object columns holding None (not NaN, nor pandas'
    string dtype) for what a row lacks, so that the served JSON answer stays valid JSON."""
    texts = np.full(len(index), None, dtype=object)
    texts[list(errors)] = list(errors.values())
    probabilities = p_positive.astype(object) if errors else p_positive
    probabilities[list(errors)] = None
    columns = {"label": labels, column: probabilities, "error": texts}
    return pd.DataFrame(
        {name: pd.Series(array, index=index, dtype=array.dtype) for name, array in columns.items()}
    )


def _served() -> bool:
    """Whether this process is MLflow's scoring server (``mlflow models serve``), read as MLflow reads
    the variable that its server sets (``mlflow.models.validate_serving_input`` sets it too)."""
    from mlflow.environment_variables import _MLFLOW_IS_IN_SERVING_ENVIRONMENT

    return bool(_MLFLOW_IS_IN_SERVING_ENVIRONMENT.get())


def _check_rows(n_rows: int, max_rows: int) -> None:
    if n_rows > max_rows:
        # An MlflowException is what the scoring server answers as HTTP 400 with the message alone.
        from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException

        raise MlflowException(
            f"The request has {n_rows} rows, more than inference.max_rows ({max_rows}), the limit of a "
            f"request to the scoring server: send at most {max_rows} images per request, raise "
            "inference.max_rows before training, or score from Python or Spark (no limit there).",
            error_code=INVALID_PARAMETER_VALUE,
        )


def _base64_bytes(value: Any, limits: ImageLimits) -> bytes:
    """The file bytes of one cell of the column ``image``: base64 text, as ``base64`` tools write it
    (with or without line breaks and ``=`` padding, or as a ``data:image/png;base64,`` URL)."""
    if not isinstance(value, (str, bytes)):
        if value is None or (isinstance(value, float) and np.isnan(value)):
            raise UnreadableImageError("no image (the cell is empty)")
        raise UnreadableImageError(
            f"no image: expected a base64 string, got {type(value).__name__} {value!r:.40}"
        )
    limits.check_file_size(len(value) * 3 // 4)  # before decoding: base64 holds 3 bytes per 4 characters
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    if text.startswith("data:") and "," in text[:100]:
        text = text.split(",", 1)[1]
    text = "".join(text.split())
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as error:
        raise UnreadableImageError(f"not base64-encoded ({error})") from error


def operating_threshold(bundle: dict[str, Any], params: dict[str, Any]) -> float:
    """The threshold on P(positive class): ``params["threshold"]`` when it is a number, else (``auto``)
    the one stored in the model, chosen on its validation subset for ``evaluation.target_sensitivity``
    (or ``target_specificity``).

    Raises:
        ValueError: ``auto`` with a model that has no stored threshold (trained before there were any,
            or without validation images), or one chosen for another positive class; or neither a
            number nor ``auto``.
    """
    threshold = params["threshold"]
    if isinstance(threshold, (int, float)) and not isinstance(threshold, bool):
        return float(threshold)
    if threshold != "auto":
        raise ValueError(
            f"inference.threshold is {threshold!r}: give a number (P(Parasitized) at or above it is "
            "Parasitized, e.g. 0.5) or auto (the threshold stored in the model)"
        )
    point = bundle.get("operating_point")
    if not point:
        raise ValueError(
            "inference.threshold is auto, but this model has no stored operating threshold (it was trained before "
            "they were stored, or without validation images, e.g. in conf/all_patients). Give a number instead "
            '(--params "inference.threshold=0.5"), or use a model of a training run with a validation subset, '
            "which chooses one for evaluation.target_sensitivity."
        )
    if point["positive_class"] != params["positive_class"]:
        raise ValueError(
            f"inference.threshold is auto, but the model's threshold is on P({point['positive_class']}) "
            f"and positive_class is {params['positive_class']}: give inference.threshold a number"
        )
    if bool(point.get("tta")) != bool(params["tta"]):
        target = (
            f"specificity {point['target_specificity']}"
            if point.get("target_specificity") is not None
            else f"sensitivity {point['target_sensitivity']}"
        )
        logger.warning(
            "The model's operating threshold was chosen with tta=%s and inference.tta is %s: it may not give "
            "the %s it was chosen for",
            point.get("tta"),
            params["tta"],
            target,
        )
    return float(point["threshold"])
