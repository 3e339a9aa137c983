"""Inference: classify new cell images with the trained model."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
