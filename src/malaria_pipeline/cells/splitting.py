"""Split images into train / validation / test subsets, by patient or at random (stratified).

Plain pandas and scikit-learn: no Kedro, no torch.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

SUBSETS = ("train", "validation", "test")


class SplitError(ValueError):
    """The split parameters don't fit the data; the message says which value to change."""


def check_fractions(fractions: dict[str, float]) -> dict[str, float]:
    """Returns ``{train, validation, test}`` fractions after checking they are valid and sum to 1."""
    unknown = set(fractions) - set(SUBSETS)
    if unknown:
        raise SplitError(f"Unknown subset(s) {sorted(unknown)} in split.fractions; use {list(SUBSETS)}")
    checked = {subset: float(fractions.get(subset, 0.0)) for subset in SUBSETS}
    if any(value < 0 for value in checked.values()) or checked["train"] <= 0:
        raise SplitError(f"split.fractions must be >= 0 with train > 0, got {checked}")
    if not math.isclose(sum(checked.values()), 1.0, abs_tol=1e-6):
        raise SplitError(f"split.fractions must sum to 1, got {checked} (sum {sum(checked.values()):g})")
    return checked


def split_stratified(labels: np.ndarray, fractions: dict[str, float], seed: int) -> np.ndarray:
    """Assigns each image to a subset at random, keeping each subset's class ratio.

    Validation and test sizes are ``floor(fraction × N)`` and train takes the rest, as the
    reference notebooks' ``random_split`` does: 0.8 / 0.2 / 0 of 27,558 images gives 22,047 / 5,511.

    Returns:
        The subset name of each image, in input order.
    """
    fractions = check_fractions(fractions)
    count = len(labels)
    rows = np.arange(count)
    subset = np.full(count, "train", dtype=object)
    for name in ("test", "validation"):
        size = int(fractions[name] * count)
        if size == 0:
            continue
        rest = rows[subset[rows] == "train"]
        _, chosen = train_test_split(rest, test_size=size, stratify=labels[rest], random_state=seed)
        subset[chosen] = name
    return subset


def split_by_patient(
    labels: np.ndarray, patients: np.ndarray, fractions: dict[str, float], folds: int, seed: int
) -> np.ndarray:
    """Assigns whole patients to subsets, keeping the class ratios as close as the patients allow.

    scikit-learn's ``StratifiedGroupKFold`` deals the patients into ``folds`` folds of balanced class
    ratio; a seeded shuffle of the folds then gives ``fraction × folds`` of them to each subset, so
    each fraction must be a multiple of ``1 / folds``.

    Returns:
        The subset name of each image, in input order.
    """
    fractions = check_fractions(fractions)
    check_patient_ids(patients, "Use split.strategy=stratified, or name files <patient>_IMG_<...>.")
    shares = {name: fraction * folds for name, fraction in fractions.items()}
    if any(not math.isclose(share, round(share), abs_tol=1e-6) for share in shares.values()):
        raise SplitError(
            f"split.fractions {fractions} are not multiples of 1/{folds}: change split.folds "
            "(20 fits any multiple of 0.05) or the fractions."
        )
    check_patient_count(patients, folds, "split.folds", " (the fractions must stay multiples of 1/folds)")
    fold_of = patient_folds(labels, patients, folds, seed)
    order = np.random.default_rng(seed).permutation(folds)
    bounds = np.cumsum([round(shares[name]) for name in SUBSETS])
    subset_of_fold = np.empty(folds, dtype=object)
    for position, fold in enumerate(order):
        subset_of_fold[fold] = SUBSETS[int(np.searchsorted(bounds, position, side="right"))]
    return subset_of_fold[fold_of]


def patient_folds(labels: np.ndarray, patients: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Deals whole patients into ``folds`` folds of balanced class ratio (``StratifiedGroupKFold``, seeded).

    Returns:
        The fold (0 to ``folds - 1``) of each image, in input order.
    """
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    fold_of = np.empty(len(labels), dtype=int)
    for fold, (_, rows) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups=patients)):
        fold_of[rows] = fold
    return fold_of


def check_patient_ids(patients: np.ndarray, advice: str = "Name files <patient>_IMG_<...>.") -> None:
    """Raises :class:`SplitError` when an image has no patient id, with ``advice`` on what to do."""
    missing = pd.isna(patients)
    if missing.any():
        raise SplitError(
            f"{int(missing.sum())} image(s) have no patient id (no '_IMG_' in the file name), so they "
            f"can't be split by patient. {advice}"
        )


def check_patient_count(patients: np.ndarray, folds: int, parameter: str, why: str = "") -> None:
    """Raises :class:`SplitError` when there are fewer patients than ``folds``, naming ``parameter``."""
    n_patients = len(pd.unique(patients))
    if n_patients < folds:
        raise SplitError(
            f"{n_patients} patients are too few for {parameter}={folds}: lower {parameter} to at "
            f"most {n_patients}{why}."
        )


def cross_validation_subsets(
    labels: np.ndarray, patients: np.ndarray, fold_of: np.ndarray, fold: int, validation_folds: int, seed: int
) -> np.ndarray:
    """The subsets of one cross-validation fold: ``test`` is the held-out fold, and the patients of the
    other folds are dealt again into ``validation_folds`` class-balanced groups, one of which becomes
    ``validation`` (it chooses the epoch) and the rest ``train``. The held-out fold chooses nothing.

    Returns:
        ``train``, ``validation`` or ``test`` per image, in input order.
    """
    subset = np.full(len(labels), "test", dtype=object)
    rest = np.flatnonzero(fold_of != fold)
    check_patient_ids(patients[rest])
    check_patient_count(patients[rest], validation_folds, "cross_validation.validation_folds")
    inner = patient_folds(labels[rest], patients[rest], validation_folds, seed + fold)
    subset[rest] = np.where(inner == 0, "validation", "train")
    return subset


def subset_rows(
    image_index: pd.DataFrame, data_split: pd.DataFrame, *subsets: str, n_images: int | None = None
) -> np.ndarray:
    """Row numbers (into ``image_index`` and the packed tensors) of the images in any of ``subsets``.

    Args:
        image_index: ``path`` per image.
        data_split: ``path`` and ``subset`` per image, in index order.
        subsets: ``train``, ``validation`` and/or ``test``.
        n_images: the number of packed images, to check against the index; None skips the check.

    Raises:
        SplitError: the tensors, the index and the split come from different runs.
    """
    if n_images is not None and n_images != len(image_index):
        raise SplitError(
            f"image_tensors has {n_images} images but image_index {len(image_index)} rows: "
            "they come from different runs. Run the ingestion pipeline again."
        )
    if (
        len(data_split) != len(image_index)
        or not (data_split["path"].to_numpy() == image_index["path"].to_numpy()).all()
    ):
        raise SplitError(
            f"data_split ({len(data_split)} rows) does not match image_index ({len(image_index)} rows): "
            "they come from different runs. Run the preprocessing pipeline again after ingestion."
        )
    return np.flatnonzero(data_split["subset"].isin(subsets).to_numpy())
