"""Preprocessing: split the images into subsets and compute normalization statistics."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
