"""The ``training`` parameter group, read strictly: the loop's configuration and the pipelines' switches.

The group holds the knobs of the training loop (:class:`~malaria_pipeline.ml.config.TrainConfig`) and
three switches that the pipelines read around the loop, in the nodes that use them. Every caller reads
the group through :func:`training_config`, so a typo of any key fails, naming the nearest one.
"""

from __future__ import annotations

from typing import Any

from malaria_pipeline.ml.config import TrainConfig

# exclude_label_issues: the training nodes leave the label audit's suspects out of the training images.
# calibrate: calibrate_model (and each cross-validation fold) fits temperature scaling after training.
# distributed: train_model starts malaria_pipeline.ml.distributed (DistributedConfig) for more than one process.
PIPELINE_SWITCHES = ("exclude_label_issues", "calibrate", "distributed")


def training_config(params: dict[str, Any]) -> TrainConfig:
    """The loop's configuration from the whole ``training`` group, which must also hold :data:`PIPELINE_SWITCHES`.

    Raises:
        ValueError: a key is unknown (the message names the nearest known one) or missing, or a value is out of range.
    """
    return TrainConfig.from_params(params, read_elsewhere=PIPELINE_SWITCHES)
