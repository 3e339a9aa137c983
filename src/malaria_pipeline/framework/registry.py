"""The MLflow Model Registry: each training run's served model as a version of one registered model, the
alias ``challenger`` on the newest, and ``champion`` moved to a challenger that is not worse.

Aliases, not stages: MLflow deprecated stages in 2.9. The store is the tracking URI's (SQLite here) unless
``mlflow.yml`` names a registry URI.
"""

from __future__ import annotations

import logging
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException

from malaria_pipeline.framework.tracking import CROSS_VALIDATION_RUN_TAG

logger = logging.getLogger(__name__)

# The served MLflow model that every training run logs (hooks.LogServedModel, served_model.MODEL_NAME).
SERVED_MODEL = "model"
# Version tags: where the version came from, and why the champion alias moved to it.
PROMOTED_TAG = "promotion"


def register_run_model(run_id: str, model_name: str, alias: str, description: str | None = None):
    """Registers the served model of run ``run_id`` as a new version of ``model_name`` (created if new),
    gives it ``alias`` (moved from the version that held it) and ``description`` (the model card).

    The client's calls, not ``mlflow.register_model``, which prints to the console past the log.

    Returns:
        The ``ModelVersion``.
    """
    client = mlflow.MlflowClient()
    try:
        client.create_registered_model(model_name)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    logged = _logged_model(run_id)
    version = client.create_model_version(
        model_name,
        source=logged.model_uri if logged else f"runs:/{run_id}/{SERVED_MODEL}",
        run_id=run_id,
        model_id=logged.model_id if logged else None,
        description=description or None,
    )
    client.set_registered_model_alias(model_name, alias, version.version)
    logger.info(
        "Registered the model of run %s as version %s of %s, alias %s: serve it with mlflow models serve -m "
        '"models:/%s@%s"',
        run_id,
        version.version,
        model_name,
        alias,
        model_name,
        alias,
    )
    return version


def _logged_model(run_id: str):
    """The served model that run ``run_id`` logged (in MLflow 3 a LoggedModel, outside the run's
    artifacts), or None."""
    run = mlflow.MlflowClient().get_run(run_id)
    logged = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        output_format="list",
        filter_string=f"source_run_id = '{run_id}' AND name = '{SERVED_MODEL}'",
    )
    return logged[0] if logged else None


def version_scores(version, metrics: tuple[str, ...]) -> dict[str, Any]:
    """What a version is judged on: the means of the cross-validation run that its training run names
    (tag ``cross_validation_run_id``) where there is one, else its run's test-subset metrics.

    Returns:
        ``{"version", "run_id", "source", "scores": {metric: value or None}}``.
    """
    client = mlflow.MlflowClient()
    run = client.get_run(version.run_id)
    claim = run.data.tags.get(CROSS_VALIDATION_RUN_TAG)
    if claim:
        values = client.get_run(claim).data.metrics
        source, keys = f"cross-validation run {claim}", {m: f"cv.{m}.mean" for m in metrics}
    else:
        values = run.data.metrics
        source, keys = f"the test subset of run {version.run_id}", {m: f"test.{m}" for m in metrics}
    return {
        "version": int(version.version),
        "run_id": version.run_id,
        "source": source,
        "scores": {m: values.get(key) for m, key in keys.items()},
    }


def promote(
    model_name: str,
    challenger_alias: str,
    champion_alias: str,
    margins: dict[str, float],
    force: bool = False,
    version: int | None = None,
) -> dict[str, Any]:
    """Moves ``champion_alias`` to the challenger (the version holding ``challenger_alias``, or ``version``)
    when, on every metric of ``margins``, it scores at least the champion's score minus the margin; or
    always with ``force``. The first challenger becomes champion.

    Returns:
        What was compared and decided: ``promoted``, ``reason``, ``challenger``, ``champion_before``,
        ``champion`` (the version that holds the alias now).

    Raises:
        ValueError: no such registered model, alias or version.
    """
    client = mlflow.MlflowClient()
    try:
        challenger = (
            client.get_model_version(model_name, str(version))
            if version is not None
            else client.get_model_version_by_alias(model_name, challenger_alias)
        )
    except MlflowException as error:
        which = f"version {version}" if version is not None else f"version with the alias {challenger_alias}"
        raise ValueError(
            f"The registry of {mlflow.get_registry_uri()} has no {which} of {model_name} ({error.message}): "
            "run `kedro run --pipelines training` first (each run registers a version), or give "
            "promote.version an existing version"
        ) from error
    champion = _by_alias(client, model_name, champion_alias)
    metrics = tuple(margins)
    report = {
        "model_name": model_name,
        "margins": dict(margins),
        "forced": bool(force),
        "challenger": version_scores(challenger, metrics),
        "champion_before": version_scores(champion, metrics) if champion else None,
    }
    promoted, reason = _decide(report["challenger"], report["champion_before"], margins)
    if force and not promoted and not (champion and champion.version == challenger.version):
        promoted, reason = True, f"forced (promote.force=true), although: {reason}"
    if promoted:
        client.set_registered_model_alias(model_name, champion_alias, challenger.version)
        client.set_model_version_tag(model_name, challenger.version, PROMOTED_TAG, reason[:5000])
    report.update(
        promoted=promoted,
        reason=reason,
        champion=int(challenger.version) if promoted else (int(champion.version) if champion else None),
    )
    logger.info(
        "%s version %s of %s to %s: %s",
        "Promoted" if promoted else "Did not promote",
        challenger.version,
        model_name,
        champion_alias,
        reason,
    )
    return report


def _by_alias(client, model_name: str, alias: str):
    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return None


def _decide(
    challenger: dict[str, Any], champion: dict[str, Any] | None, margins: dict[str, float]
) -> tuple[bool, str]:
    if champion is None:
        return True, "no version held the champion alias"
    if champion["version"] == challenger["version"]:
        return False, f"version {challenger['version']} is the champion already"
    missing = [
        f"{m} of version {side['version']}"
        for side in (challenger, champion)
        for m in margins
        if side["scores"][m] is None
    ]
    if missing:
        return (
            False,
            f"no score to compare: {', '.join(missing)} ({challenger['source']}; {champion['source']})",
        )
    worse = [m for m in margins if challenger["scores"][m] < champion["scores"][m] - margins[m]]
    compared = "; ".join(
        f"{m} {challenger['scores'][m]:.4f} vs {champion['scores'][m]:.4f} (margin {margins[m]})"
        for m in margins
    )
    sources = f"challenger from {challenger['source']}, champion from {champion['source']}"
    if worse:
        return (
            False,
            f"the challenger is worse than the champion beyond the margin on {', '.join(worse)}: {compared} ({sources})",
        )
    return (
        True,
        f"the challenger is not worse than version {champion['version']} beyond the margins: {compared} ({sources})",
    )
