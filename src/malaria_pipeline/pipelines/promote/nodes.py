"""Nodes of the promote pipeline."""

from __future__ import annotations

from typing import Any

from malaria_pipeline.framework import registry


def promote_challenger(params: dict[str, Any]) -> dict[str, Any]:
    """Compares the challenger with the champion of the registered model and moves the champion alias
    when the challenger is not worse beyond the margins (:func:`malaria_pipeline.framework.registry.promote`).

    Args:
        params: ``model_name``, ``challenger_alias``, ``champion_alias``, ``margins`` ({metric: margin}),
            ``force`` and ``version`` (null: the challenger).

    Returns:
        ``promotion_report``: both versions' scores and where they come from, the decision and why.
    """
    return registry.promote(
        params["model_name"],
        params["challenger_alias"],
        params["champion_alias"],
        params["margins"],
        force=params["force"],
        version=params["version"],
    )
