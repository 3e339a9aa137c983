"""After training, on held-out images that choose (a validation subset, never the test subset): temperature
scaling and the clinical operating threshold. The training pipeline and each fold of cross-validation
call the same :func:`calibrate`, so that cross-validation measures what a trained model does.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from malaria_pipeline.assess.metrics import sensitivity_at_specificity, threshold_for_sensitivity
from malaria_pipeline.ml.calibration import fit_temperature
from malaria_pipeline.ml.models import CellClassifier, probabilities

logger = logging.getLogger(__name__)


def calibrate(
    classifier: CellClassifier,
    view_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    fit: bool,
    positive_class: str,
    target_sensitivity: float,
    target_specificity: float | None = None,
) -> dict[str, Any] | None:
    """Sets ``classifier.temperature`` (fitted on the logits of the images as they are when ``fit``, else 1)
    and returns the operating point chosen on them: the threshold on P(positive_class), predicted as
    evaluation and inference predict (the temperature; test-time augmentation when ``view_logits`` holds
    the 8 views), that reaches ``target_sensitivity`` at the best specificity; or, with a
    ``target_specificity``, the one that reaches it and finds the most positive cells.

    Args:
        view_logits: ``V×N×classes``, :meth:`~malaria_pipeline.ml.models.CellClassifier.view_logits` of
            held-out images that may choose (validation): V = 8 with test-time augmentation, else 1.
        labels: ``int64, N`` their class indices in ``classifier.class_names``.

    Returns:
        ``threshold``, the ``sensitivity`` and ``specificity`` it gives on ``images``, ``positive_class``,
        ``tta``, and the target it was chosen for (``target_sensitivity``, or ``target_specificity`` with
        ``target_sensitivity`` None); None when the images are all of one class (nothing to choose on), or
        when no threshold reaches ``target_specificity`` on them.
    """
    classifier.temperature = (
        fit_temperature(view_logits[0], labels) if fit else 1.0
    )  # [0]: the images as they are
    is_positive = labels.numpy() == classifier.class_names.index(positive_class)
    if is_positive.all() or not is_positive.any():
        logger.warning("The %d held-out images are all of one class: no operating threshold", len(labels))
        return None
    p_positive = probabilities(view_logits, classifier.temperature)[
        :, classifier.class_names.index(positive_class)
    ]
    p_positive = p_positive.numpy().astype(np.float64)
    if target_specificity is None:
        point = threshold_for_sensitivity(is_positive, p_positive, target_sensitivity)
        targets = {"target_sensitivity": float(target_sensitivity)}
    else:
        point = sensitivity_at_specificity(is_positive, p_positive, target_specificity)
        if point["threshold"] is None:
            logger.warning(
                "Only calling none of the %d held-out images %s reaches specificity %s: no operating threshold "
                "(evaluation.target_specificity)",
                len(labels),
                positive_class,
                target_specificity,
            )
            return None
        point = {name: point[name] for name in ("threshold", "sensitivity", "specificity")}
        targets = {"target_sensitivity": None, "target_specificity": float(target_specificity)}
    logger.info(
        "Operating threshold %.4f on P(%s): sensitivity %.4f, specificity %.4f on the %d held-out images (%s)",
        point["threshold"],
        positive_class,
        point["sensitivity"],
        point["specificity"],
        len(labels),
        ", ".join(
            f"{name.replace('_', ' ')} {value}" for name, value in targets.items() if value is not None
        ),
    )
    return {
        **point,
        "positive_class": positive_class,
        "tta": len(view_logits) > 1,
        **targets,
        "positives": int(is_positive.sum()),
        "negatives": int((~is_positive).sum()),
    }


def rate_interval(rate: float, cells: int, level: float = 0.95) -> list[float]:
    """The Wilson ``level`` interval of a sensitivity or specificity measured on ``cells`` cells (scipy)."""
    from scipy.stats import binomtest

    hits = round(rate * cells)
    interval = binomtest(hits, cells).proportion_ci(confidence_level=level, method="wilson")
    return [float(interval.low), float(interval.high)]


def operating_point_doubts(point: dict[str, Any], checks: dict[str, Any]) -> list[str]:
    """Why an operating point should not be trusted, if it should not: chosen on fewer than
    ``checks["min_cells_per_class"]`` cells of a class, or giving a sensitivity or specificity below
    ``checks["min_rate"]`` where it was chosen. Each reason gives the rate with its 95% Wilson interval.
    A point stored before the counts were kept (no ``positives``) is judged on its rates alone."""
    doubts = []
    for rate, count, cells in (
        ("sensitivity", "positives", "parasitized"),
        ("specificity", "negatives", "uninfected"),
    ):
        value, n = point.get(rate), point.get(count)
        if value is None:
            continue
        low, high = rate_interval(value, n) if n else (None, None)
        shown = f"{rate} {value:.3f}" + (f" (95% interval {low:.3f} to {high:.3f})" if n else "")
        if n is not None and n < checks["min_cells_per_class"]:
            doubts.append(
                f"chosen on only {n} {cells} cells (fewer than evaluation.operating_point_checks."
                f"min_cells_per_class, {checks['min_cells_per_class']}): {shown}"
            )
        elif value < checks["min_rate"]:
            doubts.append(
                f"{shown} where it was chosen, below evaluation.operating_point_checks.min_rate "
                f"({checks['min_rate']})"
            )
    return doubts
