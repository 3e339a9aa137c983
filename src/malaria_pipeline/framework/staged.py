"""The training pipeline as kedro-mlflow's ``PipelineML``, whose stages also run alone.

An orchestrator runs one task per namespace (``kedro run --pipelines training --namespaces
ingestion``, then ``preprocessing``, ``model_training``, ``evaluation``: kedro-airflow's
``--group-by namespace``). kedro-mlflow's ``PipelineML.filter`` keeps every filtered part a
``PipelineML`` and refuses a part that doesn't produce the model ("The following inputs are free for the
inference pipeline"). Here a part is a ``PipelineML``, and logs the MLflow model, only when it packages
the model (``mlflow_model``, in the evaluation stage); any other part is a plain ``Pipeline``. So the
four stages run in turn log one MLflow model, from the run that evaluates it, as one ``training`` run
does.
"""

from __future__ import annotations

import logging

from kedro.pipeline import Pipeline
from kedro_mlflow.pipeline.pipeline_ml import PipelineML

logger = logging.getLogger(__name__)

# The dataset of the node that packages the trained model for MLflow: the stage that has it logs the
# MLflow model too.
PACKAGED_MODEL = "mlflow_model"


class StagedPipelineML(PipelineML):
    """``PipelineML`` whose filtered parts without ``mlflow_model`` among their outputs are plain
    pipelines (no MLflow model logged), so each namespace runs alone."""

    def _turn_pipeline_to_ml(self, pipeline: Pipeline) -> Pipeline:
        if PACKAGED_MODEL not in pipeline.all_outputs():
            logger.info(
                "This part of the training pipeline does not package the model (%s): it runs without "
                "logging an MLflow model",
                PACKAGED_MODEL,
            )
            return Pipeline(pipeline.nodes)
        return StagedPipelineML(
            nodes=pipeline.nodes,
            inference=self.inference,
            input_name=self.input_name,
            kpm_kwargs=self.kpm_kwargs,
            log_model_kwargs=self.log_model_kwargs,
        )
