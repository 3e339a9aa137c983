"""Project pipelines."""

from __future__ import annotations

from kedro.pipeline import Pipeline

from malaria_pipeline.framework.parameters import cross_validation_folds
from malaria_pipeline.pipelines import (
    batch_inference,
    collect_reviews,
    cross_validation,
    evaluation,
    inference,
    ingestion,
    lr_finder,
    model_training,
    preprocessing,
    promote,
    review,
)


def register_pipelines() -> dict[str, Pipeline]:
    """Registers the project's pipelines.

    Each pipeline is built explicitly rather than with ``find_pipelines()``: since Kedro 1.7 that
    loads only the folders named by ``--pipelines``, and ``training`` is composed of several folders.

    Returns:
        A mapping from pipeline names to ``Pipeline`` objects: ``ingestion``, ``preprocessing``,
        ``model_training``, ``evaluation`` and ``lr_finder`` (each on the latest outputs of the one
        before), ``inference`` (new images, the latest model), ``batch_inference`` (a folder tree of images
        scored on Spark by a registered MLflow model), ``review`` (the patients that inference sent to review,
        queued in Label Studio; ``batch_review``: those of batch_inference), ``collect_reviews`` (the reviewers' verdicts back: final calls and label
        corrections), ``promote`` (the registered
        model's champion alias to the challenger when it is not worse), ``cross_validation`` (ingestion, then
        patient-grouped k-fold cross-validation of the training configuration and a label audit: one namespace
        ``cv_fold_<k>`` per fold, ``cross_validation.folds`` of them, each the training stages' own nodes), and ``training``: the whole chain from
        the archive to an evaluated model, also ``__default__``. Each ``training`` run logs an MLflow model that
        takes raw image files (:mod:`malaria_pipeline.pipelines.inference.served_model`, logged by the hook
        ``LogServedModel``). Its stages also run alone, in turn, as an orchestrator runs them
        (``--namespaces ingestion``, then ``preprocessing``, ``model_training``, ``evaluation``): only the
        evaluation stage, which packages the model, logs the MLflow model.

        Each folder's nodes are in the Kedro namespace of its name (``ingestion.index_images_node``),
        which kedro-viz draws as a group that opens on click; the datasets and parameters keep their
        catalog names (``prefix_datasets_with_namespace=False``).
    """
    parts = {
        "ingestion": ingestion.create_pipeline(),
        "preprocessing": preprocessing.create_pipeline(),
        "model_training": model_training.create_pipeline(),
        "lr_finder": lr_finder.create_pipeline(),
        "evaluation": evaluation.create_pipeline(),
        "inference": inference.create_pipeline(),
        "batch_inference": batch_inference.create_pipeline(),
        "promote": promote.create_pipeline(),
        "review": review.create_pipeline(),
        "batch_review": review.create_batch_pipeline(),
        "collect_reviews": collect_reviews.create_pipeline(),
    }
    training = parts["ingestion"] + parts["preprocessing"] + parts["model_training"] + parts["evaluation"]
    cv = parts["ingestion"] + cross_validation.create_pipeline(folds=cross_validation_folds())
    return {**parts, "cross_validation": cv, "training": training, "__default__": training}
