"""Review: the cells of the patients the model could not call, queued in Label Studio for a microscopist."""

from .pipeline import create_batch_pipeline, create_pipeline

__all__ = ["create_batch_pipeline", "create_pipeline"]
