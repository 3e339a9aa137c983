"""Nodes of the review pipeline: the queue of cells that a microscopist looks at, sent to Label Studio."""

from __future__ import annotations

import hashlib
import io
import logging
import re
from typing import Any

import numpy as np
import pandas as pd
import torch

from malaria_pipeline.assess.columns import probability_column
from malaria_pipeline.assess.review import patients_to_review, review_cells
from malaria_pipeline.cells.archive import ImageArchive
from malaria_pipeline.framework import label_studio
from malaria_pipeline.ml.images import ImageLimits, UnreadableImageError, decode_cell_image, one_line
from malaria_pipeline.pipelines.batch_inference.nodes import source_root
from malaria_pipeline.pipelines.inference.classifiers import torch_classifier
from malaria_pipeline.pipelines.inference.nodes import (
    NO_PREFIX,
    explained_cells,
    overlay_name,
    patients_of_files,
)

logger = logging.getLogger(__name__)

QUEUE_COLUMNS = [
    "task_key",
    "kind",
    "patient",
    "rank",
    "file",
    "sha1",
    "p_parasitized",
    "model_label",
    "call",
    "fraction",
    "fraction_low",
    "fraction_high",
    "healthy_chance",
    "patient_cells",
    "given_label",
    "suggested_label",
    "label_quality",
    "overlay",
    "model",
    "source",
    "image",
]
KINDS = ("patient", "label_issue")


def queue_patients(
    predictions: pd.DataFrame,
    patient_predictions: pd.DataFrame,
    inference_summary: dict[str, Any],
    review_images: ImageArchive,
    inference_model: dict[str, Any],
    params: dict[str, Any],
) -> tuple[pd.DataFrame, dict[str, np.ndarray], pd.DataFrame]:
    """The cells of each patient that the model could not call, for a microscopist: every patient of the
    latest ``patient_predictions`` called ``review`` (with ``review.confirm_positive``, ``positive`` too),
    its ``review.cells_per_patient`` cells of highest P(Parasitized), each beside its Grad-CAM heatmap
    (:func:`~malaria_pipeline.pipelines.inference.nodes.explained_cells`, as ``inference.explain`` draws it),
    with the patient's fraction, interval, healthy chance and call.

    A queued file that can no longer be read or decoded is left out with a warning that names it; the
    patient keeps its other cells.

    Returns:
        One row per cell (:data:`QUEUE_COLUMNS`, ``kind`` ``patient``), the overlays by file name, and
        ``review_patients``: the patient table the queue was made of, whose calls ``collect_reviews`` settles.

    Raises:
        ValueError: the model is not the one that made the predictions (``inference_summary``).
    """
    _check_model(inference_model, inference_summary)
    cells = predictions.assign(patient=patients_of_files(predictions["file"], params["group_by"]))
    table, overlays = _queue(cells, patient_predictions, review_images, inference_model, params)
    return table, overlays, patient_predictions


def queue_batch_patients(
    batch_predictions: pd.DataFrame,
    batch_patients: pd.DataFrame,
    batch_review_images: ImageArchive,
    batch_model: dict[str, Any],
    params: dict[str, Any],
    batch_params: dict[str, Any],
) -> tuple[pd.DataFrame, dict[str, np.ndarray], pd.DataFrame]:
    """:func:`queue_patients` for a Spark run: the patients of the latest ``batch_patients`` and the cells
    of the latest ``batch_predictions`` (read without Spark), grouped as ``batch_inference.group_by``
    grouped them, the files read from ``batch_inference.source``, the heatmaps drawn by the model that
    scored them (``batch_inference.model_uri``). Rows that Spark could not classify are not shown.

    Raises:
        ValueError: the model is not the one that scored the files, or a file is not under the source.
    """
    _check_batch_model(batch_model, batch_predictions)
    root = source_root(batch_params["source"]) + "/"
    scored = batch_predictions[batch_predictions["error"].isna()]
    outside = scored.loc[~scored["path"].str.startswith(root), "path"]
    if len(outside):
        raise ValueError(
            f"{outside.iloc[0]} (and {len(outside) - 1} more) is not under batch_inference.source "
            f"({batch_params['source']}): give the source of the batch_inference run"
        )
    group = scored["folder"] if batch_params["group_by"] == "folder" else scored["patient"].fillna(NO_PREFIX)
    cells = pd.DataFrame(
        {
            "file": scored["path"].str.slice(len(root)).to_numpy(),
            "label": scored["label"].to_numpy(),
            probability_column(params["positive_class"]): scored[
                probability_column(params["positive_class"])
            ].to_numpy(),
            "patient": group.astype(str).to_numpy(),
        }
    ).sort_values("file", kind="stable", ignore_index=True)
    table, overlays = _queue(cells, batch_patients, batch_review_images, batch_model, params)
    return table, overlays, batch_patients


def _queue(
    cells: pd.DataFrame,
    patient_table: pd.DataFrame,
    images: ImageArchive,
    model: dict[str, Any],
    params: dict[str, Any],
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """The queue's rows and overlays of classified ``cells`` (``file``, ``label``, the probability column,
    ``patient``) of the patients of ``patient_table`` to review."""
    column = probability_column(params["positive_class"])
    patients = patients_to_review(patient_table, params["confirm_positive"])
    queue = review_cells(
        cells, patients, patient="patient", column=column, per_patient=params["cells_per_patient"]
    )
    logger.info(
        "Review queue: %d of %d patients (%s), %d cells (at most %d each)",
        len(patients),
        len(patient_table),
        ", ".join(f"{call} {n}" for call, n in patients["call"].value_counts().sort_index().items())
        or "none",
        len(queue),
        params["cells_per_patient"],
    )
    classifier = torch_classifier(model, params)
    queue, stacked, files = _read_cells(queue, images, classifier.image_size, params)
    pictures = explained_cells(
        classifier, stacked, params["positive_class"], params["batch_size"], params["overlay_scale"]
    )
    table = pd.DataFrame(
        {
            "kind": "patient",
            "patient": queue["patient"].astype(str),
            "rank": queue["rank"].astype(int),
            "file": queue["file"],
            "sha1": [hashlib.sha1(data).hexdigest() for data in files],
            "p_parasitized": queue[column].astype(float),
            "model_label": queue["label"],
            **{name: queue[name] for name in QUEUE_COLUMNS[8:14]},
            "source": images.source,
            "image": files,
        }
    )
    return _with_keys(table, model, pictures)


def _read_cells(
    queue: pd.DataFrame, images: ImageArchive, size: int, params: dict[str, Any]
) -> tuple[pd.DataFrame, torch.Tensor, list[bytes]]:
    """The queued cells' files read from the classified images and decoded as inference decoded them:
    the rows kept, ``uint8, N×3×S×S`` and each file's bytes. A file that can no longer be read or decoded
    is left out with a warning that names it."""
    limits = ImageLimits.from_params(params["image_limits"], "review.image_limits")
    decoded, files, kept = [], [], []
    for position, row in enumerate(queue.itertuples()):
        try:
            data = images.read(row.file)
            decoded.append(decode_cell_image(data, size, limits)[0])
        except (OSError, KeyError, UnreadableImageError) as error:
            logger.warning(
                "Review of %s: %s is left out of the queue, it cannot be read from %s now (%s)",
                row.patient,
                row.file,
                images.source,
                one_line(error),
            )
            continue
        files.append(data)
        kept.append(position)
    stacked = (
        torch.from_numpy(np.stack(decoded)) if decoded else torch.empty(0, 3, size, size, dtype=torch.uint8)
    )
    return queue.iloc[kept].reset_index(drop=True), stacked, files


def queue_label_issues(
    label_issues: pd.DataFrame,
    image_index: pd.DataFrame | None,
    image_tensors: torch.Tensor | None,
    inference_model: dict[str, Any],
    params: dict[str, Any],
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """With ``review.include_label_issues``: the label audit's suspect cells of the latest cross-validation
    run (``label_issues``), the ``review.label_issues_max`` most suspect (null: all), one task per patient,
    each cell with its given and suggested label and its Grad-CAM heatmap; the images are the archive's, as
    the latest ingestion packed them. Without it, an empty queue.

    Raises:
        ValueError: asked for, but there is no label audit, or no ingestion of the archive it names.
    """
    if not params["include_label_issues"]:
        return pd.DataFrame(columns=QUEUE_COLUMNS), {}
    if label_issues.empty:
        raise ValueError(
            "review.include_label_issues is true, but there is no label audit (label_issues): run "
            "`kedro run --pipelines cross_validation` first, or set review.include_label_issues=false"
        )
    if image_index is None or image_tensors is None:
        raise ValueError(
            "review.include_label_issues is true, but the archive's images are not ingested "
            "(data/02_intermediate/image_index.parquet): run `kedro run --pipelines ingestion` with the "
            "archive of the cross-validation run"
        )
    suspects, rows = _suspects(label_issues, image_index, params["label_issues_max"])
    classifier = torch_classifier(inference_model, params)
    images = image_tensors[torch.from_numpy(rows.copy())]
    if images.shape[-1] != classifier.image_size:
        raise ValueError(
            f"The latest ingestion packed the archive at {images.shape[-1]} pixels and the model takes "
            f"{classifier.image_size}: run `kedro run --pipelines ingestion` with the model's image size"
        )
    with torch.no_grad():
        probabilities = classifier.predict_proba(images, batch_size=params["batch_size"])
    p_positive = probabilities[:, classifier.class_names.index(params["positive_class"])].numpy()
    pictures = explained_cells(
        classifier, images, params["positive_class"], params["batch_size"], params["overlay_scale"]
    )
    logger.info(
        "Review queue: %d suspect labels of the label audit, %d patients",
        len(suspects),
        suspects["patient"].nunique(),
    )
    table = pd.DataFrame(
        {
            "kind": "label_issue",
            "patient": suspects["patient"],
            "rank": suspects["rank"].astype(int),
            "file": suspects["path"].astype(str),
            "sha1": image_index["sha1"].to_numpy()[rows],
            "p_parasitized": p_positive.astype(float),
            "model_label": suspects["suggested_label"],
            "given_label": suspects["given_label"],
            "suggested_label": suspects["suggested_label"],
            "label_quality": suspects["label_quality"].astype(float),
            "source": "label audit (label_issues)",
            "image": None,
        }
    )
    return _with_keys(table, inference_model, pictures)


def _suspects(
    label_issues: pd.DataFrame, image_index: pd.DataFrame, most: int | None
) -> tuple[pd.DataFrame, np.ndarray]:
    """The ``most`` most suspect labels (None: all) that the latest ingestion holds, ranked within their
    patient (``patient``, ``rank``), and their rows in ``image_index``."""
    suspects = label_issues.astype({"rank": "int64"}).sort_values("rank", kind="stable")
    if most is not None:
        suspects = suspects.head(most)
    row_of = pd.Series(np.arange(len(image_index)), index=image_index["path"].astype(str))
    found = suspects["path"].astype(str).isin(row_of.index)
    for path in suspects.loc[~found, "path"]:
        logger.warning("Label issue %s is left out of the queue: it is not in the latest ingestion", path)
    suspects = suspects[found].copy()
    suspects["patient"] = suspects["patient_id"].astype(str)
    suspects["rank"] = suspects.groupby("patient", sort=False).cumcount() + 1
    suspects = suspects.sort_values(["patient", "rank"], kind="stable").reset_index(drop=True)
    return suspects, row_of[suspects["path"].astype(str)].to_numpy()


def make_queue(
    patient_cells: pd.DataFrame,
    patient_overlays: dict[str, np.ndarray],
    label_issue_cells: pd.DataFrame,
    label_issue_overlays: dict[str, np.ndarray],
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """``review_queue`` (one row per cell shown: :data:`QUEUE_COLUMNS`) and ``review_overlays`` (each
    cell beside its heatmap, by the file name in the queue's ``overlay``)."""
    parts = [part for part in (patient_cells, label_issue_cells) if len(part)]
    queue = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=QUEUE_COLUMNS)
    if queue.empty:
        logger.info("Review queue: empty (no patient called review, and no label issue asked for)")
    return queue[QUEUE_COLUMNS], {**patient_overlays, **label_issue_overlays}


def label_studio_tasks(
    review_queue: pd.DataFrame, review_overlays: dict[str, np.ndarray], params: dict[str, Any]
) -> list[dict[str, Any]]:
    """The queue as Label Studio tasks: one task per patient, its cells ranked, each beside its heatmap with
    its P(Parasitized), and the model's answer on each cell as a prediction for the reviewer to confirm or
    correct (:func:`~malaria_pipeline.framework.label_studio.task_of`). ``review_tasks`` imports those it
    does not hold yet."""
    pngs = {name: _png(pixels) for name, pixels in review_overlays.items()}
    tasks = [
        label_studio.task_of(cells.sort_values("rank"), pngs, params["positive_class"])
        for _, cells in review_queue.groupby("task_key", sort=True)
    ]
    logger.info("Review queue: %d tasks for Label Studio", len(tasks))
    return tasks


def _with_keys(
    table: pd.DataFrame, model: dict[str, Any], pictures: list[np.ndarray]
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """The queue's rows with their task (``task_key``: kind, patient, and a digest of the model and the
    cells shown, so that the same queue made twice is the same tasks) and overlay names; the overlays."""
    table = table.reindex(columns=QUEUE_COLUMNS).assign(model=str(model.get("source")))
    keys = {}
    for patient, cells in table.groupby("patient", sort=False):
        kind = cells["kind"].iloc[0]
        digest = hashlib.sha1("\n".join([str(model.get("source")), *cells["sha1"]]).encode()).hexdigest()[:12]
        keys[patient] = f"{kind}/{patient}/{digest}"
    table["task_key"] = table["patient"].map(keys)
    table["overlay"] = [
        overlay_name(position, f"{kind}_{file}")
        for position, (kind, file) in enumerate(zip(table["kind"], table["file"]), start=1)
    ]
    return table, dict(zip(table["overlay"], pictures))


def _check_batch_model(model: dict[str, Any], predictions: pd.DataFrame) -> None:
    runs = set(predictions["model_run_id"].dropna())
    registered = model.get("registered_version") or {}
    run = registered.get("run_id") or _run_of(str(model.get("source")))
    if runs and run not in runs:
        raise ValueError(
            f"The latest batch_predictions were scored by the model of run {', '.join(sorted(runs))}, and the "
            f"review would explain them with {model.get('source')}: give the review the same "
            "batch_inference.model_uri as the batch_inference run"
        )


def _run_of(source: str) -> str | None:
    match = re.match(r"runs:/([0-9a-f]+)/", source)
    return match.group(1) if match else None


def _check_model(model: dict[str, Any], summary: dict[str, Any]) -> None:
    made_by = (summary.get("model") or {}).get("source")
    if made_by is not None and made_by != model.get("source"):
        raise ValueError(
            f"The latest predictions were made by {made_by}, and the review would explain them with "
            f"{model.get('source')}: give the review the same inference.model_version or inference.model_uri "
            "as the inference run, or run inference again"
        )


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()
