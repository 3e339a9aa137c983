"""Batch inference on Spark: every image file of a folder tree scored by a registered MLflow model
through ``mlflow.pyfunc.spark_udf``."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
