"""Collect reviews: the reviewers' verdicts from Label Studio, the final calls and the label corrections."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
