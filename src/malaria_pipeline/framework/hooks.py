"""Project hooks."""

from __future__ import annotations

import atexit
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
from kedro.framework.hooks import hook_impl

from malaria_pipeline.framework import kedro_private, registry, tracking
from malaria_pipeline.framework.parameters import remember_folds, training_config
from malaria_pipeline.framework.profiles import choose_profile
from malaria_pipeline.ml.distributed import DistributedConfig

logger = logging.getLogger(__name__)


class MarkDeadMlflowRunsKilled:
    """Tags each MLflow run with the process that owns it, and ends the runs of dead processes.

    A run whose process was killed (SIGKILL, out of memory, a closed laptop) stays ``RUNNING`` for
    ever. When a run starts, the runs of this experiment left ``RUNNING`` by a process of this host
    that no longer exists are marked ``KILLED``, with a tag saying why.
    """

    @hook_impl
    def before_pipeline_run(self) -> None:
        # kedro-mlflow, registered after the project's hooks, has started its run by now.
        run = mlflow.active_run()
        if run is None:
            return
        tracking.set_tags(tracking.owner_tags())
        tracking.mark_dead_runs_killed(run.info.experiment_id, run.info.run_id)


class CheckTrainingParameters:
    """Refuses an unknown key of the ``training`` parameters when the session starts, before any run:
    ``--params "training.max_Lr=0.1"`` fails at once, naming ``max_lr``, instead of training with the
    default."""

    @hook_impl
    def after_context_created(self, context) -> None:
        training = context.params.get("training", {})
        training_config(training)
        DistributedConfig.from_params(training["distributed"])


class BuildFoldsFromParameters:
    """Builds the cross-validation pipeline with the session's ``cross_validation.folds``, ``conf/<env>`` and
    ``--params`` included: the registry builds one namespace per fold, and Kedro reads the pipelines once the
    context exists (``kedro run``, ``kedro viz``, ``kedro airflow create``). Pipelines built earlier in the
    process with another count (a notebook, a test) are built again (``tryfirst``: before the hooks that read
    the parameters, which load the pipelines to check them)."""

    @hook_impl(tryfirst=True)
    def after_context_created(self, context) -> None:
        if remember_folds(context.config_loader["parameters"]):
            from kedro.framework.project import PACKAGE_NAME, pipelines

            pipelines.configure(f"{PACKAGE_NAME}.pipeline_registry")


class NestFoldRuns:
    """Runs the nodes of each cross-validation fold (namespace ``cv_fold_<k>``) in a nested MLflow run of
    their own, under the run of ``kedro run`` (kedro-mlflow's, or the ``MLFLOW_RUN_ID`` an Airflow DAG run
    shares): the fold's parameters, per-epoch history and held-out metrics, tagged ``fold``. Every node of a
    fold logs into the same nested run, found by its tag, also from another process (a fold run alone, an
    Airflow task, a resumed run).

    Opened after kedro-mlflow reopens the parent for the node (``trylast``), ended when the node ends, before
    its outputs are saved (a fold's datasets are not MLflow artifacts); on Ctrl-C, by
    :class:`EndInterruptedMlflowRun`.
    """

    def __init__(self) -> None:
        self._parent: str | None = None
        self._runs: dict[int, str] = {}

    @hook_impl
    def before_pipeline_run(self) -> None:
        self._parent, self._runs = tracking.active_run_id(), {}

    @hook_impl(trylast=True)
    def before_node_run(self, node, inputs: dict[str, Any]) -> None:
        fold = tracking.fold_of(node.namespace)
        if fold is None or self._parent is None or tracking.active_run_id() != self._parent:
            return
        params = {
            name.removeprefix("params:"): value
            for name, value in inputs.items()
            if name.startswith("params:")
        }
        self._runs[fold] = tracking.start_fold_run(self._parent, fold, params, self._runs.get(fold))

    @hook_impl
    def after_node_run(self, node) -> None:
        self._end(node, "FINISHED")

    @hook_impl
    def on_node_error(self, node) -> None:
        self._end(node, "FAILED")

    def _end(self, node, status: str) -> None:
        fold = tracking.fold_of(node.namespace)
        if fold is not None and fold in self._runs and tracking.active_run_id() == self._runs[fold]:
            mlflow.end_run(status=status)


class StartCheckpointsAfresh:
    """Removes, when a run that does not resume (``training.resume: false``) starts, the checkpoints of the
    training nodes it runs (every ``…training_checkpoint`` it reads): each fold of a cross-validation has one
    (``cv_fold_<k>.training_checkpoint``), and a run killed in fold 3 would otherwise leave folds 4 and 5 the
    checkpoints of an earlier run, which its resume (``training.resume=true``) would take for its own."""

    @hook_impl
    def before_pipeline_run(self, pipeline, catalog) -> None:
        names = sorted(name for name in pipeline.inputs() if name.endswith("training_checkpoint"))
        if not names or catalog.load("params:training")["resume"]:
            return
        removed = [name for name in names if catalog.load(name).clear()]
        if removed:
            logger.info(
                "Not resuming (training.resume is false): removed the checkpoints of %s", ", ".join(removed)
            )


class LogHardwareProfile:
    """Says in one log line which hardware profile a training run trains, and why, and tags the MLflow run."""

    @hook_impl
    def before_pipeline_run(self, pipeline, catalog) -> None:
        if "params:training" not in pipeline.inputs():
            return
        params = catalog.load("parameters")
        profile, reason = choose_profile(params.get("profile", "auto"))
        other = "cpu" if profile == "gpu" else "gpu"
        training = params["training"]
        logger.info(
            "%s: training the %s profile (%s-pixel images, %s width %s, %s epochs); set "
            '--params "profile=%s" or profile: %s in conf/local/globals.yml to change it',
            reason,
            profile,
            params["ingestion"]["image_size"],
            training["architecture"],
            training["width"],
            training["epochs"],
            other,
            other,
        )
        tracking.set_tags({tracking.PROFILE_TAG: profile})


class EndInterruptedMlflowRun:
    """Ends the MLflow run of a ``kedro run`` that was interrupted in this Python process, as ``KILLED``.

    Kedro calls ``on_pipeline_error`` for exceptions but not for Ctrl-C (``KeyboardInterrupt``), so
    kedro-mlflow leaves that run open: in a notebook the next session would log into it and fail on
    changed parameters (``training.resume=true``, say), and when ``kedro`` exits, MLflow's own exit
    handler would end it as ``FINISHED``. So the next session of the process ends it, and so does an
    exit handler that runs before MLflow's. A run that the user opened around ``kedro run`` on purpose
    is left alone: only the one started by the interrupted session is ended.
    """

    def __init__(self) -> None:
        self._open_run_id: str | None = None
        self._exit_handler_registered = False

    @hook_impl(tryfirst=True)
    def after_context_created(self) -> None:
        self._end_interrupted_run()
        self._open_run_id = None

    @hook_impl
    def before_pipeline_run(self) -> None:
        # kedro-mlflow, registered after the project's hooks, has started its run by now.
        run = mlflow.active_run()
        self._open_run_id = run.info.run_id if run is not None else None
        if not self._exit_handler_registered:
            # Registered after MLflow's (at its import), so it runs before it.
            atexit.register(self._end_interrupted_run)
            self._exit_handler_registered = True

    def _end_interrupted_run(self) -> None:
        run = mlflow.active_run()
        while (
            run is not None
            and self._open_run_id is not None
            and run.data.tags.get("mlflow.parentRunId") == self._open_run_id
        ):
            mlflow.end_run(status="KILLED")  # a fold's nested run (NestFoldRuns), open when Ctrl-C came
            run = mlflow.active_run()
        if run is not None and run.info.run_id == self._open_run_id:
            logger.warning(
                "Ending MLflow run %s, left open by an interrupted kedro run, as KILLED", run.info.run_id
            )
            mlflow.end_run(status="KILLED")

    @hook_impl
    def after_pipeline_run(self) -> None:
        self._open_run_id = None

    @hook_impl
    def on_pipeline_error(self) -> None:
        self._open_run_id = None


class LogArtifactsToMlflow:
    """Logs the file of each saved dataset whose catalog ``metadata`` has ``mlflow_artifact_path``, and
    sets the tag ``mlflow_tag`` names to the path of each one that has that key.

    kedro-mlflow's ``MlflowArtifactDataset`` can't wrap a versioned dataset under Kedro 1.7: Kedro gives
    the wrapped dataset its own save version, which the catalog then refuses. So the datasets stay
    plain and versioned, and this hook sends the version just saved to the active MLflow run (the one
    kedro-mlflow opened), under the folder that ``mlflow_artifact_path`` names ("" for the top).
    """

    def __init__(self) -> None:
        self._catalog = None

    @hook_impl
    def after_catalog_created(self, catalog) -> None:
        self._catalog = catalog

    @hook_impl
    def after_dataset_saved(self, dataset_name: str) -> None:
        if self._catalog is None or mlflow.active_run() is None:
            return
        dataset = self._catalog.get(dataset_name)
        metadata = getattr(dataset, "metadata", None) or {}
        folder, tag = metadata.get("mlflow_artifact_path"), metadata.get("mlflow_tag")
        if folder is None and tag is None:
            return
        # The load path of a versioned dataset is its latest version: the one just saved.
        path = kedro_private.load_path(dataset)
        if tag is not None:  # too large to copy (batch_predictions): where it is
            mlflow.set_tag(tag, str(Path(path).resolve()))
        if folder is not None and Path(path).stat().st_size:  # an empty file says nothing was kept
            mlflow.log_artifact(str(path), folder or None)


# The dataset of the node that packages the trained network for MLflow (the evaluation stage's): a run
# whose pipeline writes it logs the served MLflow model too, and registers it.
PACKAGED_MODEL = "mlflow_model"


class LogServedModel:
    """Logs the served MLflow model ``model`` of each run whose pipeline packages the trained model
    (``mlflow_model``: a ``training`` run, or its ``evaluation`` stage run alone), before kedro-mlflow
    ends the run (``tryfirst``).

    ``log_model(bundle_path, inference_params, graphs)`` logs it
    (:func:`malaria_pipeline.pipelines.inference.served_model.log_served_model`, given in ``settings.py``):
    the version of ``model`` that the run wrote or, for a stage run alone, read (the latest), the latest
    ONNX graphs (``onnx_model``, ``onnx_int8_model``; ``log_model`` keeps those of the bundle's weights),
    and the run's ``inference`` parameters.
    """

    GRAPHS = {"onnx": "onnx_model", "onnx_int8": "onnx_int8_model"}

    def __init__(self, log_model: Callable[..., None]) -> None:
        self._log_model = log_model

    @hook_impl(tryfirst=True)
    def after_pipeline_run(self, pipeline, catalog) -> None:
        if PACKAGED_MODEL not in pipeline.all_outputs() or mlflow.active_run() is None:
            return
        bundle = kedro_private.load_path(catalog.get("model"))
        graphs = {
            runtime: kedro_private.load_path(catalog.get(name))
            for runtime, name in self.GRAPHS.items()
            if name in catalog and catalog.get(name).exists()
        }
        graphs = {runtime: path for runtime, path in graphs.items() if Path(path).stat().st_size}
        self._log_model(bundle, catalog.load("params:inference"), graphs)
        logger.info("Logged the MLflow model 'model' of this run, with %s", bundle)


class RegisterModelVersion:
    """Registers the served MLflow model of each ``training`` run as a new version of ``registry.model_name``
    with the alias ``registry.challenger_alias``, and the run's model card as the version's description.

    :class:`LogServedModel` logs that model, and kedro-mlflow ends the run, in ``after_pipeline_run``: this
    one runs after both (``trylast``) and registers by run id. ``kedro run --pipelines promote`` then decides whether
    the challenger becomes champion.
    """

    def __init__(self) -> None:
        self._run_id: str | None = None

    @hook_impl
    def before_pipeline_run(self, pipeline) -> None:
        self._run_id = tracking.active_run_id() if PACKAGED_MODEL in pipeline.all_outputs() else None

    @hook_impl(trylast=True)
    def after_pipeline_run(self, pipeline, catalog) -> None:
        run_id, self._run_id = self._run_id, None
        settings = catalog.load("parameters").get("registry") or {}
        if not run_id or not settings.get("register"):
            return
        card = catalog.load("model_card") if "model_card" in pipeline.all_outputs() else None
        try:
            registry.register_run_model(run_id, settings["model_name"], settings["challenger_alias"], card)
        except mlflow.exceptions.MlflowException as error:
            raise RuntimeError(
                f"Run {run_id} finished and logged its model, but registering it as {settings['model_name']} failed "
                f"({error.message}). Register it by hand: mlflow.register_model('runs:/{run_id}/model', "
                f"'{settings['model_name']}'), or set registry.register=false."
            ) from error

    @hook_impl
    def on_pipeline_error(self) -> None:
        self._run_id = None


class TagAccuracyClaim:
    """Tags a training run with the cross-validation run whose figures are its accuracy claim.

    A model trained on every patient (``kedro run --pipelines training --env all_patients``) has no
    held-out images: its accuracy is the one that cross-validation of the same configuration measured.
    The parameter ``cross_validation_run_id`` names that run (``latest``: the newest finished
    ``cross_validation`` run of the experiment). The run is checked (it exists, finished, holds
    cross-validation metrics) and the training run gets the tag ``cross_validation_run_id`` and, in
    ``accuracy_claim``, its mean ± std accuracy. A run id that is not such a run fails the run at once.
    """

    @hook_impl
    def before_pipeline_run(self, pipeline, catalog) -> None:
        if "params:training" not in pipeline.inputs() or mlflow.active_run() is None:
            return
        wanted = catalog.load("parameters").get("cross_validation_run_id")
        if not wanted:
            return
        try:
            run = tracking.cross_validation_run(str(wanted), mlflow.active_run().info.experiment_id)
        except ValueError:
            mlflow.end_run(status="FAILED")
            raise
        metrics = run.data.metrics
        claim = (
            f"cross-validation accuracy {metrics['cv.accuracy.mean']:.4f} ± {metrics['cv.accuracy.std']:.4f}"
        )
        tracking.set_tags({tracking.CROSS_VALIDATION_RUN_TAG: run.info.run_id, "accuracy_claim": claim})
        logger.info("The accuracy claim of this model is run %s's: %s", run.info.run_id, claim)
        evaluation = catalog.load("params:evaluation") if "params:evaluation" in pipeline.inputs() else {}
        for advice in claim_mismatches(catalog.load("params:training"), evaluation, metrics):
            logger.warning(
                "%s (cross-validation run %s) for the model that claim is about", advice, run.info.run_id
            )


def claim_mismatches(training: dict, evaluation: dict, metrics: dict[str, float]) -> list[str]:
    """What a model trained on every patient should set to be the one its cross-validation measured: the
    epoch count the folds kept, and the temperature and operating threshold they chose (the medians,
    ``cv.recommended_*``), where the parameters differ from them.
    """
    advice = []
    epochs = metrics.get("cv.recommended_epochs")
    if epochs is not None and int(epochs) != training["epochs"]:
        advice.append(
            f"training.epochs is {training['epochs']} but the folds kept {int(epochs)} epochs (median): "
            f"set training.epochs={int(epochs)}"
        )
    given = evaluation.get("without_validation") or {}
    for name in ("temperature", "operating_threshold"):
        chosen = metrics.get(f"cv.recommended_{name}")
        if chosen is not None and (given.get(name) is None or abs(given[name] - chosen) > 5e-4):
            advice.append(
                f"evaluation.without_validation.{name} is {given.get(name)} but the folds chose {chosen:.4f} "
                f"(median): set evaluation.without_validation.{name}={chosen:.4f}"
            )
    return advice
