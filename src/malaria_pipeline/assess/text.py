"""The plain-text pieces of the reports that the pipelines log, one record a line: a figure or ``n/a``, and
the table of mean ± std over folds with the pooled figure beside it. No Kedro, no MLflow.

Written once here, so that cross-validation's tables, evaluation's lines, the review workload and the model
card show a figure the same way.
"""

from __future__ import annotations

from typing import Any

NOT_AVAILABLE = "n/a"


def number(value: float | None, digits: int = 4) -> str:
    """``value`` to ``digits`` decimals, or ``n/a`` where there is none (a figure that one class leaves undefined)."""
    return NOT_AVAILABLE if value is None else f"{value:.{digits}f}"


def mean_std_header(first: str, width: int = 30) -> str:
    """The header of :func:`mean_std_lines`: ``first``, ``mean ± std``, ``pooled``."""
    return f"{first:<{width}} {'mean ± std':>17} {'pooled':>8}"


def mean_std_lines(mean_std: dict[str, Any], pooled: dict[str, Any], width: int = 30) -> list[str]:
    """One line per figure of ``mean_std`` (``{name: {"mean", "std"}}``): its mean ± std over the folds and
    its pooled value (blank where ``pooled`` has none)."""
    lines = []
    for name, values in mean_std.items():
        value = pooled.get(name)
        lines.append(
            f"{name:<{width}} {values['mean']:>8.4f} ± {values['std']:.4f} {'' if value is None else f'{value:.4f}':>8}"
        )
    return lines


def per_fold_line(per_fold: list[dict[str, Any]], names: tuple[str, ...]) -> str:
    """The figures of each fold, in fold order: ``  folds 1-5: name a/b/c/d/e; …`` (4 significant digits)."""
    shown = "; ".join(
        f"{name} "
        + "/".join(NOT_AVAILABLE if fold[name] is None else f"{fold[name]:.4g}" for fold in per_fold)
        for name in names
    )
    return f"  folds 1-{len(per_fold)}: {shown}"
