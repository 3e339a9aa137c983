"""The code of the MLflow model that each ``training`` run logs (MLflow's models-from-code): MLflow runs
this file to build the model, with the package from the model's ``code_paths``."""

from mlflow.models import set_model

from malaria_pipeline.pipelines.inference.served_model import ServedModel

set_model(ServedModel())
