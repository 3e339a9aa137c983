"""Wiring of the evaluation pipeline."""

from kedro.pipeline import Node, Pipeline

from malaria_pipeline.plots import plot_training_curves

from .nodes import (
    compute_metrics,
    confusion_matrix_figure,
    explanations_figure,
    package_model,
    predict_subsets,
    reliability_diagram_figure,
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
            Node(predict_subsets, ["model", "image_tensors", "image_index", "data_split", params],
                 "evaluation_predictions", name="predict_subsets_node"),
            Node(compute_metrics, ["evaluation_predictions", "model", params], ["evaluation_metrics", "evaluation_scores"],
                 name="compute_metrics_node"),
            Node(package_model, "model", "mlflow_model", name="package_model_node"),
            Node(write_model_card, ["model", "evaluation_metrics", "ingestion_report", "image_index", "data_split",
                                    "image_tensors", "parameters"], "model_card", name="write_model_card_node"),
            Node(confusion_matrix_figure, ["evaluation_predictions", params], "confusion_matrix_plot",
                 name="plot_confusion_matrix_node"),
            Node(roc_curve_figure, ["evaluation_predictions", params], "roc_curve_plot", name="plot_roc_curve_node"),
            Node(reliability_diagram_figure, ["evaluation_predictions", params], "reliability_diagram_plot",
                 name="plot_reliability_diagram_node"),
            Node(plot_training_curves, "training_history", "training_curves_plot", name="plot_training_curves_node"),
            Node(top_losses_figure, ["evaluation_predictions", "image_tensors", "model", params], "top_losses_plot",
                 name="plot_top_losses_node"),
            Node(explanations_figure, ["evaluation_predictions", "image_tensors", "model", params], "explanations_plot",
                 name="plot_explanations_node"),
            Node(sample_images_figure, ["image_tensors", "image_index", params], "sample_images_plot",
                 name="plot_sample_images_node"),
        ],
        namespace=NAMESPACE,
        prefix_datasets_with_namespace=False,
    )
