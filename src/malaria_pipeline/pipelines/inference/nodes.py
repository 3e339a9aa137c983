"""Nodes of the inference pipeline."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from malaria_pipeline.archive import ArchiveError, ImageArchive, check_source, image_members
from malaria_pipeline.ml.device import pick_device
from malaria_pipeline.ml.model_io import load_model
from malaria_pipeline.packing import pack_images

logger = logging.getLogger(__name__)


def predict_images(
    inference_images: ImageArchive, model: dict[str, Any], params: dict[str, Any]
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Classifies every image of a folder or zip with the trained model.

    The images go through exactly the training preprocessing: decoded once, 3 channels, fitted to the
    model's image size as in ingestion, normalized with the model's statistics. A file that is not a
    decodable image is skipped and listed with its reason.

    Args:
        inference_images: the new images (PNG or JPEG, any size, grayscale or RGB, any folders).
        model: the bundle of a training run (the catalog's latest ``model`` by default).
        params: ``source``, ``threshold`` (P(Parasitized) at or above it is Parasitized),
            ``batch_size``, ``workers`` and ``device``.

    Returns:
        ``predictions``: file, predicted label and probability of Parasitized per image;
        ``inference_summary``: counts per class, fraction parasitized, skipped files with reasons.
    """
    check_source(params.get("source"), inference_images, "inference.source", "inference_source")
    classifier = load_model(model, device=pick_device(params.get("device", "auto")))
    if "Parasitized" not in classifier.class_names or len(classifier.class_names) != 2:
        raise ValueError(f"The model's classes are {classifier.class_names}: inference needs Parasitized and one other")
    negative = next(name for name in classifier.class_names if name != "Parasitized")

    candidates, skipped = image_members(inference_images.members())
    packed = pack_images(inference_images, candidates, classifier.image_size, params.get("workers"))
    skipped = sorted(skipped + packed.skipped)
    if not packed.members:
        raise ArchiveError(f"{inference_images.source} holds no decodable PNG or JPEG image ({len(skipped)} files skipped)")
    probabilities = classifier.predict_proba(packed.images, batch_size=params["batch_size"])
    p_parasitized = probabilities[:, classifier.class_names.index("Parasitized")].numpy()
    labels = np.where(p_parasitized >= params["threshold"], "Parasitized", negative)
    predictions = pd.DataFrame({"file": packed.members, "label": labels, "p_parasitized": p_parasitized})

    counts = predictions["label"].value_counts()
    summary = {
        "source": inference_images.source,
        "model": {"architecture": model["architecture"], "image_size": model["image_size"]},
        "threshold": params["threshold"],
        "images": len(predictions),
        "per_class": {name: int(counts.get(name, 0)) for name in ("Parasitized", negative)},
        "fraction_parasitized": float((labels == "Parasitized").mean()),
        "skipped": [{"path": member, "reason": reason} for member, reason in skipped],
    }
    logger.info("Classified %d images of %s: %s; %.1f%% parasitized; skipped %d files", len(predictions),
                inference_images.source, summary["per_class"], 100 * summary["fraction_parasitized"], len(skipped))
    for member, reason in skipped:
        logger.warning("Skipped %s: %s", member, reason)
    return predictions, summary
