"""Project pipelines."""

from __future__ import annotations

from kedro.pipeline import Pipeline

from malaria_pipeline.pipelines import evaluation, inference, ingestion, lr_finder, model_training, preprocessing


def register_pipelines() -> dict[str, Pipeline]:
    """Registers the project's pipelines.

    Each pipeline is built explicitly rather than with ``find_pipelines()``: since Kedro 1.7 that
    loads only the folders named by ``--pipelines``, and ``training`` is composed of several folders.

    Returns:
        A mapping from pipeline names to ``Pipeline`` objects: ``ingestion``, ``preprocessing``,
        ``model_training``, ``evaluation`` and ``lr_finder`` (each on the latest outputs of the one
        before), ``inference`` (new images, the latest model), and ``training``: the whole chain from
        the archive to an evaluated model, also ``__default__``.
    """
    parts = {
        "ingestion": ingestion.create_pipeline(),
        "preprocessing": preprocessing.create_pipeline(),
        "model_training": model_training.create_pipeline(),
        "lr_finder": lr_finder.create_pipeline(),
        "evaluation": evaluation.create_pipeline(),
        "inference": inference.create_pipeline(),
    }
    training = parts["ingestion"] + parts["preprocessing"] + parts["model_training"] + parts["evaluation"]
    return {**parts, "training": training, "__default__": training}
