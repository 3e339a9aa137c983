"""Wiring of the evaluation pipeline."""

from kedro.pipeline import Node, Pipeline

from malaria_pipeline.assess.plots import plot_training_curves

from .nodes import (
    compute_metrics,
    confusion_matrix_figure,
    explanations_figure,
    judge_patient_subsets,
    package_model,
    patient_fractions_figure,
    predict_subsets,
    reliability_diagram_figure,
    review_workload_of_test,
    roc_curve_figure,
    sample_images_figure,
    top_losses_figure,
    write_model_card,
)

# The group that kedro-viz draws these nodes in (node names become f"{NAMESPACE}.{name}"); the
# datasets and parameters keep their catalog names (prefix_datasets_with_namespace=False).
NAMESPACE = "evaluation"


def create_pipeline(**kwargs) -> Pipeline:
    params = "params:evaluation"
    return Pipeline(
        [
            Node(
                func=predict_subsets,
                inputs=["model", "image_tensors", "image_index", "data_split", params],
                outputs="evaluation_predictions",
                name="predict_subsets_node",
            ),
            Node(
                func=judge_patient_subsets,
                inputs=["evaluation_predictions", "model", params],
                outputs="evaluation_patients",
                name="judge_patient_subsets_node",
            ),
            Node(
                func=review_workload_of_test,
                inputs=["evaluation_predictions", "evaluation_patients", params, "params:review"],
                outputs="evaluation_review_workload",
                name="measure_review_workload_node",
            ),
            Node(
                func=compute_metrics,
                inputs=["evaluation_predictions", "evaluation_patients", "model", params],
                outputs=["evaluation_metrics", "evaluation_scores"],
                name="compute_metrics_node",
            ),
            Node(func=package_model, inputs="model", outputs="mlflow_model", name="package_model_node"),
            Node(
                func=write_model_card,
                inputs=[
                    "model",
                    "evaluation_metrics",
                    "evaluation_patients",
                    "ingestion_report",
                    "image_index",
                    "data_split",
                    "image_tensors",
                    "parameters",
                    "onnx_check",
                ],
                outputs="model_card",
                name="write_model_card_node",
            ),
            *_figure_nodes(params),
        ],
        namespace=NAMESPACE,
        prefix_datasets_with_namespace=False,
    )


def _figure_nodes(params: str) -> list[Node]:
    """The figures of the evaluation, each a versioned ``<name>_plot`` logged to the MLflow run."""
    return [
        Node(
            func=confusion_matrix_figure,
            inputs=["evaluation_predictions", params],
            outputs="confusion_matrix_plot",
            name="plot_confusion_matrix_node",
        ),
        Node(
            func=patient_fractions_figure,
            inputs="evaluation_patients",
            outputs="evaluation_patients_plot",
            name="plot_patient_fractions_node",
        ),
        Node(
            func=roc_curve_figure,
            inputs=["evaluation_predictions", params],
            outputs="roc_curve_plot",
            name="plot_roc_curve_node",
        ),
        Node(
            func=reliability_diagram_figure,
            inputs=["evaluation_predictions", params],
            outputs="reliability_diagram_plot",
            name="plot_reliability_diagram_node",
        ),
        Node(
            func=plot_training_curves,
            inputs="training_history",
            outputs="training_curves_plot",
            name="plot_training_curves_node",
        ),
        Node(
            func=top_losses_figure,
            inputs=["evaluation_predictions", "image_tensors", "model", params],
            outputs="top_losses_plot",
            name="plot_top_losses_node",
        ),
        Node(
            func=explanations_figure,
            inputs=["evaluation_predictions", "image_tensors", "model", params],
            outputs="explanations_plot",
            name="plot_explanations_node",
        ),
        Node(
            func=sample_images_figure,
            inputs=["image_tensors", "image_index", params],
            outputs="sample_images_plot",
            name="plot_sample_images_node",
        ),
    ]
