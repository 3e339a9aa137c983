"""Ingestion: read the archive, validate and index its images, pack them into one tensor."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
