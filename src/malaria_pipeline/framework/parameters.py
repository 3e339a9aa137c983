"""The ``training`` parameter group, read strictly: the loop's configuration and the pipelines' switches.

The group holds the knobs of the training loop (:class:`~malaria_pipeline.ml.config.TrainConfig`) and
four switches that the pipelines read around the loop, in the nodes that use them. Every caller reads
the group through :func:`training_config`, so a typo of any key fails, naming the nearest one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from malaria_pipeline.framework.config_loader import config_loader
from malaria_pipeline.ml.config import TrainConfig

# exclude_label_issues: the training nodes leave the label audit's suspects out of the training images.
# calibrate: calibrate_model (and each cross-validation fold) fits temperature scaling after training.
# distributed: train_model starts malaria_pipeline.ml.distributed (DistributedConfig) for more than one process.
# onnx: export_onnx_model's check of the exported graph (tolerance, check_cells) and quantize_onnx_model's int8.
PIPELINE_SWITCHES = ("exclude_label_issues", "calibrate", "distributed", "onnx")


def training_config(params: dict[str, Any]) -> TrainConfig:
    """The loop's configuration from the whole ``training`` group, which must also hold :data:`PIPELINE_SWITCHES`.

    Raises:
        ValueError: a key is unknown (the message names the nearest known one) or missing, or a value is out of range.
    """
    return TrainConfig.from_params(params, read_elsewhere=PIPELINE_SWITCHES)


def differing_from_base(parameters: dict[str, Any], env: str | None = None) -> dict[str, Any]:
    """The run's parameters that differ from the project's ``conf/base`` (and ``conf/<env>``'s when
    ``env`` is given), as dotted keys: what the command line and ``conf/local`` changed, for a command that
    reproduces the run. ``conf/base`` is read with the run's profile, so that ``${by_profile:…}`` values
    the profile implies do not count; ``profile`` itself does when it differs.

    Returns:
        ``{"training.epochs": 6, …}``, sorted; empty outside a Kedro project.
    """
    conf = _project_conf()
    if conf is None:
        return {}
    loader = config_loader(
        conf,
        default_run_env=env if env and (conf / env).is_dir() else "base",
        runtime_params={"profile": parameters.get("profile", "auto")},
    )
    base = _dotted(loader["parameters"])
    run = _dotted(parameters)
    return {key: value for key, value in sorted(run.items()) if key not in base or base[key] != value}


def _project_conf() -> Path | None:
    """The ``conf`` folder of the Kedro project around the working directory; None outside one."""
    from kedro.utils import find_kedro_project

    project = find_kedro_project(Path.cwd())
    return None if project is None else Path(project) / "conf"


def _dotted(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_dotted(value, f"{prefix}{key}."))
    return {key.rstrip("."): value for key, value in flat.items()}


# cross_validation.folds, which the pipeline registry reads to build one namespace per fold: that of the
# session's parameters (conf/<env> and --params) once a session has created its context (the hook
# BuildFoldsFromParameters), else that of the configuration on disk.
_folds = {"session": None, "built": None}


def remember_folds(parameters: dict[str, Any]) -> bool:
    """Keeps ``cross_validation.folds`` of a session's parameters for :func:`cross_validation_folds`.

    Returns:
        True when the pipelines were built with another fold count (the registry must build them again).
    """
    folds = (parameters.get("cross_validation") or {}).get("folds")
    _folds["session"] = None if folds is None else int(folds)
    return _folds["built"] is not None and _folds["session"] not in (None, _folds["built"])


def cross_validation_folds() -> int:
    """``cross_validation.folds`` of the session (:func:`remember_folds`); before any session has created its
    context (``kedro registry``, a notebook), that of ``conf/base`` and ``conf/$KEDRO_ENV`` (``local`` by
    default), read with the project's config loader settings. Recorded as the count the pipelines are built with.
    """
    folds = _folds["session"]
    if folds is None:
        conf = _project_conf()
        if conf is None:
            folds = 5
        else:
            parameters = config_loader(conf, env=os.environ.get("KEDRO_ENV"))["parameters"]
            folds = int(parameters["cross_validation"]["folds"])
    _folds["built"] = folds
    return folds
