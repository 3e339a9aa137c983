"""Model training: a ResNet on the packed images, with a one-cycle schedule, on GPU or CPU."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
