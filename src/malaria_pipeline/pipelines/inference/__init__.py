"""Inference: classify new cell images with a trained model, from the pipeline or an MLflow model."""


def __getattr__(name: str):
    # The MLflow model imports this package's nodes without Kedro (which it does not require): the
    # pipeline, which imports Kedro, is loaded only when asked for.
    if name == "create_pipeline":
        from .pipeline import create_pipeline

        return create_pipeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
