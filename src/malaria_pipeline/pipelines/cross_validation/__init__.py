"""Cross-validation: patient-grouped k-fold training and out-of-fold predictions, their metrics, and
an audit of the labels (cleanlab) on those predictions."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
