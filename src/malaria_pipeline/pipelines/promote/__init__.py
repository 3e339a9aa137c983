"""Promote: move the registered model's champion alias to the challenger when it is not worse."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
