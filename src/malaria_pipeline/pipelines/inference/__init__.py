"""Inference: classify new cell images with a trained model, from the pipeline or an MLflow model."""

from .pipeline import SERVED_INPUT, create_pipeline, create_served_pipeline

__all__ = ["SERVED_INPUT", "create_pipeline", "create_served_pipeline"]
