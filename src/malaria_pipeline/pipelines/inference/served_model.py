"""The MLflow model that every ``training`` run logs: raw image files in, one answer per cell or per
patient out.

A ``PythonModel`` logged from code (MLflow's models-from-code: :mod:`.mlflow_model` is the file MLflow
runs to build it; nothing is pickled). It holds the run's ``model`` bundle, its ONNX graph (``onnx``, and
``onnx_int8`` where the run kept one) and its ``inference`` parameters, and calls the ``inference``
pipeline's node functions: per cell
:func:`~.nodes.predict_encoded_images`, per patient :func:`~.nodes.served_patients`, which ends in the
same patient table as ``kedro run --pipelines inference``. No Kedro run per call: from Spark's
``spark_udf`` each Python worker loads it for a partition (a bundle of about 2 MB and a JSON file) and
answers each Arrow batch directly.

The model also carries this package's code (``code_paths``), so loading it needs no project checkout:
only the packages of :func:`pip_requirements`.

What answers is ``inference.runtime`` (the training run's, or ``model_config={"runtime": ...}`` when it is
loaded): on ONNX Runtime (``onnx``, the default) the model loads the graph alone and never imports torch.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

import malaria_pipeline
from malaria_pipeline.assess.columns import probability_column
from malaria_pipeline.assess.patients import PatientSettings
from malaria_pipeline.ml.onnx_runtime import GRAPH_KEYS, check_runtime

from .classifiers import onnx_classifier
from .nodes import (
    PER,
    operating_threshold,
    predict_encoded_images,
    served_patients,
    served_settings,
)

logger = logging.getLogger(__name__)

MODEL_NAME = "model"
# The artifacts of the MLflow model: the bundle keeps this name, which TrainedModelDataset reads.
BUNDLE_ARTIFACT = "model"
PARAMETERS_ARTIFACT = "parameters"
# Chooses the runtime where the model is loaded, over its model_config: for `mlflow models serve`, whose
# command line takes no model configuration (MALARIA_PIPELINE_RUNTIME=torch mlflow models serve ...).
RUNTIME_VARIABLE = "MALARIA_PIPELINE_RUNTIME"
# The ONNX graphs, by runtime: the artifacts keep the runtime's name.
GRAPH_ARTIFACTS = tuple(GRAPH_KEYS)

INPUTS = Schema(
    [
        ColSpec("string", "image"),  # base64-encoded PNG or JPEG file bytes
        ColSpec("string", "patient", required=False),  # per patient: whose cell it is
    ]
)
OUTPUTS = Schema(  # per cell; per patient, the columns of patient_predictions (docs/serving.md)
    [
        ColSpec("string", "label", required=False),  # Parasitized | Uninfected; None where error is set
        ColSpec("double", probability_column("Parasitized"), required=False),
        ColSpec("string", "error", required=False),  # None, or "row <index>: <why it was not classified>"
    ]
)


def signature(batch_size: int) -> ModelSignature:
    """The inputs, outputs and params of the model: ``per`` (``cell`` or ``patient``) and ``batch_size``
    (the rows decoded and classified at once, by default ``inference.batch_size`` of the training run:
    Spark's workers, one thread each, ask for their own)."""
    return ModelSignature(
        inputs=INPUTS,
        outputs=OUTPUTS,
        params=ParamSchema([ParamSpec("per", "string", PER[0]), ParamSpec("batch_size", "long", batch_size)]),
    )


# What the model imports, pinned to the versions that trained it.
REQUIREMENTS = (
    "onnxruntime",
    "torch",
    "torchvision",
    "numpy",
    "pandas",
    "pillow",
    "scipy",
    "scikit-learn",
    "tqdm",
)


class ServedModel(mlflow.pyfunc.PythonModel):
    """The run's classifier and its ``inference`` parameters, answering per cell or per patient."""

    def load_context(self, context) -> None:
        self.params = json.loads(Path(context.artifacts[PARAMETERS_ARTIFACT]).read_text())
        config = getattr(context, "model_config", None) or {}
        runtime = check_runtime(
            os.environ.get(RUNTIME_VARIABLE) or config.get("runtime") or self.params.get("runtime", "onnx"),
            RUNTIME_VARIABLE if os.environ.get(RUNTIME_VARIABLE) else "inference.runtime",
        )
        run = f"MLflow run {self.params.get('run_id', '(unknown)')}"
        graphs = {}  # the graphs the model carries, keyed as inference_model keys them
        for name, key in GRAPH_KEYS.items():
            if name in context.artifacts and runtime != "torch":
                path = context.artifacts[name]
                graphs.update({key: Path(path).read_bytes(), f"{key}_source": path})
        self.classifier = onnx_classifier(graphs, runtime, run)
        if self.classifier is not None:
            self.bundle = {**self.classifier.model, "source": self.classifier.path}
            self.params = {**self.params, "runtime": self.classifier.runtime}
            return
        import torch

        # Spark's Python workers are started once and reused, torch already imported: the threads that
        # batch_inference gives each (spark_udf's extra_env) are set here, where the model is loaded.
        if (threads := os.environ.get("OMP_NUM_THREADS", "")).isdigit() and int(threads) > 0:
            torch.set_num_threads(int(threads))
        self.bundle = torch.load(context.artifacts[BUNDLE_ARTIFACT], weights_only=True, map_location="cpu")
        self.params = {**self.params, "runtime": "torch"}

    def predict(
        self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """``params={"per": "cell"}`` (the default): one row per input row; ``"patient"``: one row per
        patient (the ``patient`` column; without one, every row is one patient). ``batch_size``: the rows
        decoded and classified at once (the answers do not depend on it)."""
        params = params or {}
        per, batch_size = params.get("per", PER[0]), params.get("batch_size", self.params["batch_size"])
        if per not in PER:
            _refuse(
                f"params per is {per!r}: give one of {', '.join(PER)} (one answer per cell, or per patient)"
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            _refuse(f"params batch_size is {batch_size!r}: give a number of rows, e.g. 64")
        inference = {**self.params, "batch_size": batch_size}
        cells = predict_encoded_images(model_input, self.bundle, inference, self.classifier)
        if per == "cell":
            return cells
        return served_patients(model_input, cells, self.bundle, inference)

    def patient_settings(self, default_call: dict[str, Any] | None = None) -> PatientSettings:
        """What the patient tables of this model take (counting threshold, rates, spread, rule);
        ``default_call`` for a bundle that keeps no rule (else the one of its parameters)."""
        params = self.params if default_call is None else {**self.params, "patients": {"call": default_call}}
        return served_settings(self.bundle, operating_threshold(self.bundle, self.params), params)


def _refuse(message: str) -> None:
    from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException

    # the scoring server answers an MlflowException as HTTP 400, with its message alone
    raise MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def pip_requirements() -> list[str]:
    return [f"{name}=={version(name)}" for name in REQUIREMENTS]


def log_served_model(
    bundle_path: str | Path, inference_params: dict[str, Any], graphs: dict[str, str | Path] | None = None
) -> None:
    """Logs the MLflow model ``model`` of the active run: the bundle at ``bundle_path``, the ONNX graphs
    ``graphs`` (by runtime: ``onnx``, ``onnx_int8``) and ``inference_params`` (the run's ``params:inference``,
    with the run's id) as its artifacts, :mod:`.mlflow_model` as its code, with the signature and an input
    example of one cell of one patient, asked per patient."""
    with tempfile.TemporaryDirectory() as folder:
        parameters = Path(folder) / "parameters.json"
        parameters.write_text(
            json.dumps({**inference_params, "run_id": mlflow.active_run().info.run_id}, indent=2)
        )
        artifacts = {BUNDLE_ARTIFACT: str(bundle_path), PARAMETERS_ARTIFACT: str(parameters)}
        artifacts.update(
            {runtime: str(path) for runtime, path in _graphs_of(bundle_path, graphs or {}).items()}
        )
        mlflow.pyfunc.log_model(
            name=MODEL_NAME,
            python_model=str(Path(__file__).with_name("mlflow_model.py")),
            artifacts=artifacts,
            # what answers, changed where it is loaded: mlflow.pyfunc.load_model(..., model_config=...),
            # spark_udf(..., model_config=...); mlflow models serve keeps the training run's
            model_config={"runtime": inference_params.get("runtime", "onnx")},
            signature=signature(int(inference_params["batch_size"])),
            input_example=(_example_input(), {"per": "patient"}),
            code_paths=[str(Path(malaria_pipeline.__file__).resolve().parent)],  # the whole package
            pip_requirements=pip_requirements(),
        )


def _graphs_of(bundle_path: str | Path, graphs: dict[str, str | Path]) -> dict[str, str | Path]:
    """The graphs exported from the bundle's own weights (an older one, of another model, is left out with
    a line that says so: the served model then answers with PyTorch)."""
    import onnx
    import torch

    from malaria_pipeline.ml.model_io import weights_sha256
    from malaria_pipeline.ml.onnx_runtime import WEIGHTS_KEY

    if not graphs:
        return {}
    digest = weights_sha256(torch.load(bundle_path, weights_only=True, map_location="cpu"))
    kept = {}
    for runtime, path in graphs.items():
        metadata = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        if metadata.get(WEIGHTS_KEY) == digest:
            kept[runtime] = path
        else:
            logger.info("%s is not the ONNX graph of %s: the MLflow model leaves it out", path, bundle_path)
    return kept


def _example_input() -> pd.DataFrame:
    """One grey 50×50 PNG (the archive's smallest cells are about that size) of patient ``C1P1``: the
    shape of a request, not a cell."""
    from PIL import Image

    png = io.BytesIO()
    Image.new("L", (50, 50), 128).save(png, format="PNG")
    return pd.DataFrame({"image": [base64.b64encode(png.getvalue()).decode("ascii")], "patient": ["C1P1"]})
