"""The model code of malaria-pipeline: image decoding, networks, augmentation, training, LR finder, and
the exported graph on ONNX Runtime.

Nothing in this subpackage imports Kedro, so it can be tested, benchmarked and run on a GPU machine
on its own; the Kedro nodes are thin adapters over it. Importing the subpackage imports no torch:
:mod:`.images` and :mod:`.onnx_runtime` answer without it (the served model and Spark's workers on
ONNX Runtime), and ``CellClassifier`` and ``load_model`` import it when first named.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from malaria_pipeline.ml.model_io import CellClassifier, load_model

__all__ = ["CellClassifier", "load_model"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from malaria_pipeline.ml import model_io

        return getattr(model_io, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
