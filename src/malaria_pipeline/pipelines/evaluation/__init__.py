"""Evaluation: metrics and figures of the trained model on the validation and test subsets, for MLflow."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
