"""The registered pipelines: Kedro namespaces that kedro-viz draws as groups, over unchanged dataset names."""

import pytest

from malaria_pipeline.pipeline_registry import register_pipelines

STAGES = ("ingestion", "preprocessing", "model_training", "evaluation")

# The catalog names and parameters of each pipeline as they were before the namespaces: a user's
# catalog.load("image_index") or --params "training.epochs=1" must keep working.
DATASETS = {
    "ingestion": {
        "cell_images",
        "image_index",
        "image_tensors",
        "ingestion_report",
        "label_corrections_to_apply",
        "params:ingestion",
    },
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
        "onnx_check",
        "onnx_int8_check",
        "onnx_int8_model",
        "onnx_model",
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
        "evaluation_review_workload",
        "evaluation_scores",
        "explanations_plot",
        "image_index",
        "image_tensors",
        "ingestion_report",
        "mlflow_model",
        "model",
        "model_card",
        "onnx_check",
        "parameters",
        "params:evaluation",
        "params:review",
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
    "review": {
        "inference_model",
        "inference_summary",
        "label_issues_to_exclude",
        "params:review",
        "patient_predictions",
        "predictions",
        "review_archive_images",
        "review_archive_index",
        "review_images",
        "review_label_issue_cells",
        "review_label_issue_overlays",
        "review_overlays",
        "review_patient_cells",
        "review_patient_overlays",
        "review_patients",
        "review_queue",
        "review_tasks",
    },
    "batch_review": {
        "batch_model",
        "batch_patients",
        "batch_predictions_table",
        "batch_review_images",
        "label_issues_to_exclude",
        "params:batch_inference",
        "params:review",
        "review_archive_images",
        "review_archive_index",
        "review_label_issue_cells",
        "review_label_issue_overlays",
        "review_overlays",
        "review_patient_cells",
        "review_patient_overlays",
        "review_patients",
        "review_queue",
        "review_tasks",
    },
    "collect_reviews": {
        "final_calls",
        "label_corrections",
        "label_corrections_to_apply",
        "previous_reviewed_cells",
        "review_patients",
        "review_queue",
        "review_report",
        "review_tasks",
        "reviewed_cells",
    },
    "training": {
        "cell_images",
        "claimed_cv_patient_settings",
        "confusion_matrix_plot",
        "data_split",
        "evaluation_metrics",
        "evaluation_patients",
        "evaluation_patients_plot",
        "evaluation_predictions",
        "evaluation_review_workload",
        "evaluation_scores",
        "explanations_plot",
        "image_index",
        "image_tensors",
        "ingestion_report",
        "label_corrections_to_apply",
        "label_issues_to_exclude",
        "mlflow_model",
        "model",
        "model_card",
        "normalization_stats",
        "onnx_check",
        "onnx_int8_check",
        "onnx_int8_model",
        "onnx_model",
        "parameters",
        "params:evaluation",
        "params:ingestion",
        "params:preprocessing.split",
        "params:review",
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


@pytest.mark.parametrize("name", ["lr_finder", "inference", "promote", "review", "collect_reviews"])
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


def test_each_cross_validation_fold_is_a_namespace_of_the_training_pipelines_own_node_functions():
    from malaria_pipeline.pipelines.cross_validation import nodes as cv_nodes
    from malaria_pipeline.pipelines.cross_validation.pipeline import create_pipeline

    training_functions = {node.func for node in register_pipelines()["training"].nodes}
    pipeline = create_pipeline(folds=3)
    tops = {node.namespace.split(".")[0] for node in pipeline.nodes}
    assert tops == {"cv_folds", "cv_fold_1", "cv_fold_2", "cv_fold_3", "cross_validation"}
    for fold in (1, 2, 3):
        nodes = pipeline.only_nodes_with_namespaces([f"cv_fold_{fold}"]).nodes
        shared = {node.func for node in nodes} & training_functions
        assert {f.__name__ for f in shared} == {
            "compute_normalization_stats",
            "train_model",
            "calibrate_model",
            "predict_subsets",
        }
        own = [node.func for node in nodes if node.func not in training_functions]
        assert [(f.func, f.keywords) for f in own] == [  # the fold's split and score, for this fold
            (cv_nodes.split_fold, {"fold": fold}),
            (cv_nodes.score_fold, {"fold": fold}),
        ]
        # each fold writes datasets of its own, and reads the ingestion's and the parameters as they are
        outputs = {o for node in nodes for o in node.outputs}
        assert outputs and all(o.startswith(f"cv_fold_{fold}.") for o in outputs)
        assert {"image_tensors", "image_index", "cv_folds", "params:training", "params:evaluation"} <= {
            i for node in nodes for i in node.inputs
        }


def test_the_fold_count_of_the_registered_cross_validation_is_that_of_the_parameters(tmp_path, monkeypatch):
    from malaria_pipeline.framework import parameters

    monkeypatch.setattr(parameters, "_folds", {"session": None, "built": None})
    folds = {n.namespace.split(".")[0] for n in register_pipelines()["cross_validation"].nodes}
    assert sorted(f for f in folds if f.startswith("cv_fold_")) == [f"cv_fold_{k}" for k in range(1, 6)]
    parameters.remember_folds({"cross_validation": {"folds": 2}})  # what the hook does for --params
    folds = {n.namespace.split(".")[0] for n in register_pipelines()["cross_validation"].nodes}
    assert sorted(f for f in folds if f.startswith("cv_fold_")) == ["cv_fold_1", "cv_fold_2"]


def test_only_model_training_trains_a_model():
    import subprocess

    from tests.helpers import PROJECT_ROOT

    found = subprocess.run(
        ["git", "grep", "-l", "train_classifier", "--", "src/"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    assert found and all(
        path.startswith("src/malaria_pipeline/ml/")
        or path == "src/malaria_pipeline/pipelines/model_training/nodes.py"
        for path in found
    ), found
