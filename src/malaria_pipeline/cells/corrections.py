"""A reviewer's verdicts as labels: the label corrections that ingestion applies to the archive's index.

``label_corrections`` (written by ``collect_reviews``) holds one row per reviewed cell with a decisive
verdict: the file's SHA-1, the file as it was reviewed, its patient, the label the reviewer gave, the
original file's bytes, and where the verdict comes from (task, reviewers, time). Ingestion applies it:

- a cell of the archive (the same file's bytes: the same SHA-1) takes the reviewer's label in place of
  the archive's;
- a cell that is not in the archive (a new image from ``inference``) joins the training images, decoded
  from its bytes as the archive's are, with its file and patient;
- an Unsure verdict, or reviewers who disagree, changes nothing (``collect_reviews`` keeps them out).

No Kedro, no MLflow here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import pandas as pd
import torch

from malaria_pipeline.ml.images import ImageLimits
from malaria_pipeline.ml.packing import pack_images

CORRECTION_COLUMNS = [
    "sha1",
    "file",
    "patient_id",
    "label",
    "task_id",
    "reviewers",
    "reviewed_at",
    "source",
    "image",
]
# Where an added cell sits among the archive's paths: a folder of its own, so that no name collides.
ADDED_FOLDER = "label_corrections"
# image_index's columns of each image's provenance: where its label comes from, and the archive's own.
PROVENANCE_COLUMNS = ["label_source", "archive_label", "review_task", "reviewers"]


@dataclass(frozen=True)
class BytesArchive:
    """The files of the corrections, by member name: what :func:`~malaria_pipeline.ml.packing.pack_images`
    reads (picklable, as its workers need)."""

    files: dict[str, bytes]

    def size(self, member: str) -> int:
        return len(self.files[member])

    def read(self, member: str) -> bytes:
        return self.files[member]


@dataclass(kw_only=True)
class Corrected:
    """The index and images after the corrections, and what was done."""

    image_index: pd.DataFrame
    images: torch.Tensor
    report: dict[str, Any] = field(default_factory=dict)


def apply_label_corrections(
    image_index: pd.DataFrame,
    images: torch.Tensor,
    corrections: pd.DataFrame,
    *,
    classes: list[str],
    size: int,
    limits: ImageLimits,
) -> Corrected:
    """The archive's index (``path``, ``label``, ``patient_id``, ``sha1``, …) and its ``uint8, N×3×S×S``
    images with ``corrections`` applied (:data:`CORRECTION_COLUMNS`), and the count of each outcome:
    ``relabelled`` (the reviewer's label differs from the archive's), ``confirmed`` (it is the same),
    ``added`` (cells not in the archive) and ``skipped`` (each with its reason: a label that is no class
    of the archive, a file that cannot be decoded).

    Each image gets the columns :data:`PROVENANCE_COLUMNS`: ``label_source`` (``archive`` or ``review``),
    ``archive_label`` (None for an added cell), and the task and reviewers of its correction.
    """
    index = with_provenance(image_index)
    usable = corrections["label"].isin(classes)
    skipped = [
        {
            "file": row.file,
            "reason": f"label {row.label!r} is not a class of the archive ({', '.join(classes)})",
        }
        for row in corrections[~usable].itertuples()
    ]
    known = corrections[usable].drop_duplicates("sha1", keep="last")
    in_archive = known["sha1"].isin(set(index["sha1"]))
    relabelled, confirmed = _relabel(index, known[in_archive])
    new = known[~in_archive]
    skipped += [
        {"file": row.file, "reason": "not in the archive, and its file was not kept with the correction"}
        for row in new[new["image"].isna()].itertuples()
    ]
    index, images, added, failed = _add(index, images, new[new["image"].notna()], size, limits)
    report = {
        "corrections": int(len(corrections)),
        "relabelled": relabelled,
        "confirmed": confirmed,
        "added": added,
        "skipped": skipped + failed,
    }
    return Corrected(image_index=index, images=images, report=report)


def _relabel(index: pd.DataFrame, corrections: pd.DataFrame) -> tuple[int, int]:
    """Gives each archive image of ``corrections`` (by SHA-1) its reviewed label, in place: the counts of
    labels changed and confirmed."""
    relabelled = confirmed = 0
    for row in corrections.itertuples():
        rows = index["sha1"] == row.sha1
        if (index.loc[rows, "archive_label"] != row.label).any():
            relabelled += 1
        else:
            confirmed += 1
        index.loc[rows, ["label", "label_source", "review_task", "reviewers"]] = [
            row.label,
            "review",
            int(row.task_id),
            row.reviewers,
        ]
    return relabelled, confirmed


def _add(
    index: pd.DataFrame, images: torch.Tensor, new: pd.DataFrame, size: int, limits: ImageLimits
) -> tuple[pd.DataFrame, torch.Tensor, int, list[dict[str, str]]]:
    """The index and images with the cells of ``new`` (not in the archive) decoded from their bytes and
    appended, as ingestion decodes the archive's; the count added, and each file that could not be."""
    members = {_added_path(row.sha1, row.file): bytes(row.image) for row in new.itertuples()}
    if not members:
        return index, images, 0, []
    packed = pack_images(BytesArchive(members), list(members), size, limits, workers=1)
    by_path = new.set_index(pd.Index(list(members)))
    failed = [{"file": by_path.loc[member, "file"], "reason": reason} for member, reason in packed.skipped]
    added = by_path.loc[packed.members]
    rows = pd.DataFrame(
        {
            "path": pd.Series(packed.members, dtype="string"),
            "label": pd.Series(added["label"].to_numpy(), dtype="string"),
            "patient_id": pd.Series(added["patient_id"].to_numpy(), dtype="string"),
            **_image_columns(index, packed),
            "sha1": pd.Series(packed.sha1, dtype="string"),
            "label_source": pd.Series(["review"] * len(added), dtype="string"),
            "archive_label": pd.Series([pd.NA] * len(added), dtype="string"),
            "review_task": pd.Series(added["task_id"].to_numpy(), dtype="Int64"),
            "reviewers": pd.Series(added["reviewers"].to_numpy(), dtype="string"),
        }
    )
    return (
        pd.concat([index, rows], ignore_index=True),
        torch.cat([images, packed.images]),
        len(packed.members),
        failed,
    )


def with_provenance(image_index: pd.DataFrame) -> pd.DataFrame:
    """The archive's index with :data:`PROVENANCE_COLUMNS` saying that every label is the archive's."""
    return image_index.assign(
        label_source=pd.Series("archive", index=image_index.index, dtype="string"),
        archive_label=image_index["label"].astype("string"),
        review_task=pd.Series(pd.NA, index=image_index.index, dtype="Int64"),
        reviewers=pd.Series(pd.NA, index=image_index.index, dtype="string"),
    )


def _added_path(sha1: str, file: str) -> str:
    """The index path of a cell that joins the archive: ``label_corrections/<sha1>/<file name>``."""
    return f"{ADDED_FOLDER}/{sha1}/{PurePosixPath(str(file)).name}"


def _image_columns(index: pd.DataFrame, packed) -> dict[str, pd.Series]:
    """width, height and mode of the added cells, where the index has them."""
    columns = {
        "width": pd.Series([info.width for info in packed.infos], dtype="int32"),
        "height": pd.Series([info.height for info in packed.infos], dtype="int32"),
        "mode": pd.Series([info.mode for info in packed.infos], dtype="string"),
    }
    return {name: values for name, values in columns.items() if name in index.columns}
