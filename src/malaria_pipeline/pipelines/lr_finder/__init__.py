"""Learning-rate finder: sweep the LR over a few hundred batches and suggest the one-cycle max LR."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
