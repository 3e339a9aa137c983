"""Wiring of the batch_inference pipeline (``kedro run --pipelines batch_inference``)."""

from kedro.pipeline import Node, Pipeline

from malaria_pipeline.framework.spark import SPARK_TAG

from .nodes import score_images, summarize_folders, summarize_patients

NAMESPACE = "batch_inference"


def create_pipeline(**kwargs) -> Pipeline:
    """The image files of ``batch_inference.source`` (Spark's binaryFile source), scored by the MLflow
    model ``batch_inference.model_uri`` in Spark's Python workers, written as Parquet partitioned by
    folder, then a summary per folder and the patient table. Its nodes are tagged ``spark``: SparkHooks starts the session
    of ``conf/base/spark.yml`` before they run."""
    return Pipeline(
        [
            Node(
                func=score_images,
                inputs=["batch_images", "params:batch_inference"],
                outputs="batch_predictions",
                name="score_images_node",
                tags=[SPARK_TAG],
            ),
            Node(
                func=summarize_folders,
                inputs=["batch_predictions", "params:batch_inference"],
                outputs="batch_summary",
                name="summarize_folders_node",
                tags=[SPARK_TAG],
            ),
            Node(
                func=summarize_patients,
                inputs=["batch_predictions", "params:batch_inference"],
                outputs="batch_patients",
                name="summarize_patients_node",
                tags=[SPARK_TAG],
            ),
        ],
        namespace=NAMESPACE,
        prefix_datasets_with_namespace=False,
    )
