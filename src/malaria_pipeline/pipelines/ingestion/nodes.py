"""Nodes of the ingestion pipeline."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
import torch

from malaria_pipeline.cells.archive import ArchiveError, ImageArchive, check_source, patient_id, sort_members
from malaria_pipeline.cells.corrections import apply_label_corrections, with_provenance
from malaria_pipeline.framework import tracking
from malaria_pipeline.ml.images import ImageLimits
from malaria_pipeline.ml.packing import PackedImages, pack_images

logger = logging.getLogger(__name__)


def index_images(
    cell_images: ImageArchive, params: dict[str, Any], label_corrections: pd.DataFrame | None = None
) -> tuple[pd.DataFrame, torch.Tensor, dict[str, Any]]:
    """Validates every file of the archive, indexes the images and packs them into one tensor, with the
    reviewers' label corrections applied.

    A file that is not a decodable image inside a class folder is skipped and listed with its reason;
    it never stops the run.

    Args:
        cell_images: the archive (zip or folder) of ``cell_images/<class>/<file>`` images.
        params: ``image_size`` (side S of the packed images), ``image_limits`` (what a file must be
            to be decoded), ``workers`` (processes; null: all cores) and ``label_corrections`` (false:
            the archive's labels as they are).
        label_corrections: the latest ``label_corrections`` of ``collect_reviews`` (empty or None while
            there is none): a reviewed cell's verdict replaces the archive's label, and a reviewed cell
            that is not in the archive joins it (:func:`~malaria_pipeline.cells.corrections.apply_label_corrections`).

    Returns:
        ``image_index``: one row per valid image (path, label, patient_id, width, height, mode, sha1, and
        where its label comes from: label_source, archive_label, review_task, reviewers);
        ``image_tensors``: ``uint8, N×3×S×S`` in index order; ``ingestion_report``: counts, skipped
        files with their reasons, groups of byte-identical images, and the corrections applied.

    Raises:
        ArchiveError: the source holds no valid image, or images of one class only, or
            ``params["source"]`` names another source than the catalog read.
    """
    check_source(params.get("source"), cell_images, "ingestion.source", "ingestion_source")
    members = cell_images.members()
    candidates, skipped = sort_members(members)
    label_of = dict(candidates)
    limits = ImageLimits.from_params(params["image_limits"], "ingestion.image_limits")
    packed = pack_images(
        cell_images, [member for member, _ in candidates], params["image_size"], limits, params.get("workers")
    )
    skipped = sorted(skipped + packed.skipped)
    image_index = _build_index(packed, label_of)
    _check_classes(image_index, cell_images.source, len(members), skipped)
    images, image_index, corrected = _corrected(packed.images, image_index, label_corrections, limits, params)

    report = {
        "source": cell_images.source,
        "image_size": params["image_size"],
        "files": len(members),
        "images": len(image_index),
        "images_per_class": image_index["label"].value_counts().sort_index().to_dict(),
        "patients": int(image_index["patient_id"].nunique()),
        "images_without_patient_id": int(image_index["patient_id"].isna().sum()),
        "skipped": [{"path": member, "reason": reason} for member, reason in skipped],
        "duplicates": _duplicate_groups(image_index),
        "label_corrections": corrected,
    }
    logger.info(
        "Indexed %d images of %d patients from %s (%s); skipped %d of %d files; %d groups of identical images",
        report["images"],
        report["patients"],
        cell_images.source,
        ", ".join(f"{label}: {count}" for label, count in report["images_per_class"].items()),
        len(skipped),
        len(members),
        len(report["duplicates"]),
    )
    for member, reason in skipped:
        logger.warning("Skipped %s: %s", member, reason)
    return image_index, images, report


def _corrected(
    images: torch.Tensor,
    image_index: pd.DataFrame,
    corrections: pd.DataFrame | None,
    limits: ImageLimits,
    params: dict[str, Any],
) -> tuple[torch.Tensor, pd.DataFrame, dict[str, Any]]:
    """The images and index with ``label_corrections`` applied (unless ``params["label_corrections"]`` is
    false), what was done (logged, in the report and in MLflow: ``ingestion.label_corrections.*``)."""
    if corrections is None or corrections.empty or not params["label_corrections"]:
        reason = (
            "none collected yet"
            if corrections is None or corrections.empty
            else "ingestion.label_corrections is false"
        )
        logger.info("Label corrections: none applied (%s)", reason)
        return images, with_provenance(image_index), {"applied": False, "reason": reason}
    done = apply_label_corrections(
        image_index,
        images,
        corrections,
        classes=sorted(image_index["label"].unique()),
        size=params["image_size"],
        limits=limits,
    )
    report = {"applied": True, **done.report}
    logger.info(
        "Label corrections: %d reviewed cells, %d relabelled, %d confirmed the archive's label, %d added "
        "to the images, %d skipped",
        report["corrections"],
        report["relabelled"],
        report["confirmed"],
        report["added"],
        len(report["skipped"]),
    )
    for row in report["skipped"]:
        logger.warning("Label correction of %s skipped: %s", row["file"], row["reason"])
    tracking.log_metrics(
        {f"ingestion.label_corrections.{name}": report[name] for name in ("relabelled", "confirmed", "added")}
    )
    return done.images, done.image_index, report


def _build_index(packed: PackedImages, label_of: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "path": pd.Series(packed.members, dtype="string"),
            "label": pd.Series([label_of[m] for m in packed.members], dtype="string"),
            "patient_id": pd.Series([patient_id(m) for m in packed.members], dtype="string"),
            "width": pd.Series([info.width for info in packed.infos], dtype="int32"),
            "height": pd.Series([info.height for info in packed.infos], dtype="int32"),
            "mode": pd.Series([info.mode for info in packed.infos], dtype="string"),
            "sha1": pd.Series(packed.sha1, dtype="string"),
        }
    )


def _check_classes(
    image_index: pd.DataFrame, source: str, n_files: int, skipped: list[tuple[str, str]]
) -> None:
    if image_index.empty:
        examples = "; ".join(f"{member}: {reason}" for member, reason in skipped[:3])
        raise ArchiveError(
            f"{source} holds no valid image: {n_files} files, none a decodable PNG or JPEG inside a "
            f"class folder (cell_images/<class>/<file> or <class>/<file>). First skipped: {examples or 'none'}"
        )
    classes = sorted(image_index["label"].unique())
    if len(classes) < 2:
        raise ArchiveError(
            f"{source} holds images of one class only ({classes[0]!r}, {len(image_index)} images): a "
            "classifier needs at least two class folders, such as Parasitized/ and Uninfected/."
        )


def _duplicate_groups(image_index: pd.DataFrame) -> list[dict[str, Any]]:
    """Groups of images whose files are byte-identical (same SHA-1)."""
    repeated = image_index[image_index["sha1"].duplicated(keep=False)]
    return [
        {"sha1": sha1, "paths": sorted(group["path"].tolist())}
        for sha1, group in sorted(repeated.groupby("sha1"), key=lambda item: item[1]["path"].min())
    ]
