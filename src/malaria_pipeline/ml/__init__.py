"""The torch code of malaria-pipeline: image decoding, networks, augmentation, training, LR finder.

Nothing in this subpackage imports Kedro, so it can be tested, benchmarked and run on a GPU machine
on its own; the Kedro nodes are thin adapters over it.
"""

from malaria_pipeline.ml.model_io import CellClassifier, load_model

__all__ = ["CellClassifier", "load_model"]
