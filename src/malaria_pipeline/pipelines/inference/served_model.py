"""The MLflow model that every ``training`` run logs: raw image files in, labels out.

kedro-mlflow's ``pipeline_ml_factory`` binds the ``training`` pipeline to the served pipeline
(``pipelines/inference/pipeline.py``); at the end of each run its hook logs, as the run's pyfunc model
``model``, that pipeline with the run's ``model`` bundle and ``inference`` parameters. The MLflow
model also carries this package's code (``code_paths``), so loading it needs no project checkout:
only the packages of :func:`pip_requirements`.
"""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path
from typing import Any

from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

import malaria_pipeline
from malaria_pipeline.assess.columns import probability_column

MODEL_NAME = "model"

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "image")]),  # base64-encoded PNG or JPEG file bytes
    outputs=Schema(
        [
            ColSpec("string", "label", required=False),  # Parasitized | Uninfected; None where error is set
            ColSpec("double", probability_column("Parasitized"), required=False),
            ColSpec("string", "error", required=False),  # None, or "row <index>: <why it was not classified>"
        ]
    ),
)

# What the served pipeline imports, pinned to the versions that trained the model.
REQUIREMENTS = (
    "kedro",
    "kedro-datasets",
    "kedro-mlflow",
    "torch",
    "torchvision",
    "numpy",
    "pandas",
    "pillow",
    "tqdm",
    "fsspec",
)


def pip_requirements() -> list[str]:
    return [f"{name}=={version(name)}" for name in REQUIREMENTS]


def log_model_kwargs() -> dict[str, Any]:
    """The arguments of ``mlflow.pyfunc.log_model`` for ``pipeline_ml_factory``."""
    return {
        "name": MODEL_NAME,
        "signature": SIGNATURE,
        "code_paths": [str(Path(malaria_pipeline.__file__).resolve().parent)],  # the whole package
        "pip_requirements": pip_requirements(),
    }
