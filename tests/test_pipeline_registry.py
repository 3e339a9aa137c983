"""The registered pipelines: Kedro namespaces that kedro-viz draws as groups, over unchanged dataset names."""

import pytest

from malaria_pipeline.pipeline_registry import register_pipelines

STAGES = ("ingestion", "preprocessing", "model_training", "evaluation")

# The catalog names and parameters of each pipeline as they were before the namespaces: a user's
# catalog.load("image_index") or --params "training.epochs=1" must keep working.
DATASETS = {
    "ingestion": {"cell_images", "image_index", "image_tensors", "ingestion_report", "params:ingestion"},
    "preprocessing": {
        "data_split",
        "image_index",
        "image_tensors",
        "normalization_stats",
        "params:preprocessing.split",
    },
    "model_training": {
        "claimed_cv_patient_settings",
        "data_split",
        "image_index",
        "image_tensors",
        "label_issues_to_exclude",
        "model",
        "normalization_stats",
        "params:evaluation",
        "params:training",
        "trained_model",
        "training_checkpoint",
        "training_history",
    },
    "lr_finder": {
        "data_split",
        "image_index",
        "image_tensors",
        "lr_finder_plot",
        "lr_finder_result",
        "normalization_stats",
        "params:lr_finder",
        "params:training",
    },
    "evaluation": {
        "confusion_matrix_plot",
        "data_split",
        "evaluation_metrics",
        "evaluation_patients",
        "evaluation_patients_plot",
        "evaluation_predictions",
        "evaluation_scores",
        "explanations_plot",
        "image_index",
        "image_tensors",
        "ingestion_report",
        "mlflow_model",
        "model",
        "model_card",
        "parameters",
        "params:evaluation",
        "reliability_diagram_plot",
        "roc_curve_plot",
        "sample_images_plot",
        "top_losses_plot",
        "training_curves_plot",
        "training_history",
    },
    "inference": {
        "explanation_overlays",
        "inference_images",
        "inference_model",
        "inference_summary",
        "params:inference",
        "patient_predictions",
        "predictions",
    },
    "promote": {"params:promote", "promotion_report"},
    "training": {
        "cell_images",
        "claimed_cv_patient_settings",
        "confusion_matrix_plot",
        "data_split",
        "evaluation_metrics",
        "evaluation_patients",
        "evaluation_patients_plot",
        "evaluation_predictions",
        "evaluation_scores",
        "explanations_plot",
        "image_index",
        "image_tensors",
        "ingestion_report",
        "label_issues_to_exclude",
        "mlflow_model",
        "model",
        "model_card",
        "normalization_stats",
        "parameters",
        "params:evaluation",
        "params:ingestion",
        "params:preprocessing.split",
        "params:training",
        "reliability_diagram_plot",
        "roc_curve_plot",
        "sample_images_plot",
        "top_losses_plot",
        "trained_model",
        "training_checkpoint",
        "training_curves_plot",
        "training_history",
    },
}


def test_every_training_node_is_in_the_namespace_of_its_stage():
    pipelines = register_pipelines()
    training = pipelines["training"]
    assert {node.namespace for node in training.nodes} == set(STAGES)
    for stage in STAGES:
        stage_nodes = set(pipelines[stage].nodes)
        assert stage_nodes and {node.namespace for node in stage_nodes} == {stage}
        assert set(training.only_nodes_with_namespaces([stage]).nodes) == stage_nodes
    assert all(node.name == f"{node.namespace}.{node._name}" for node in training.nodes)


@pytest.mark.parametrize("name", ["lr_finder", "inference", "promote"])
def test_the_other_pipelines_have_their_own_namespace(name):
    assert {node.namespace for node in register_pipelines()[name].nodes} == {name}


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_the_namespaces_leave_every_dataset_and_parameter_name_as_it_was(name):
    pipeline = register_pipelines()[name]
    assert pipeline.datasets() == pipeline.all_inputs() | pipeline.all_outputs() == DATASETS[name]


def test_registry_names_the_pipelines_and_training_is_the_default():
    pipelines = register_pipelines()
    assert {
        "ingestion",
        "preprocessing",
        "model_training",
        "evaluation",
        "lr_finder",
        "training",
        "__default__",
    } <= pipelines.keys()
    assert pipelines["__default__"] is pipelines["training"]
    parts = ("ingestion", "preprocessing", "model_training", "evaluation")
    assert set(pipelines["training"].nodes) == {n for part in parts for n in pipelines[part].nodes}
