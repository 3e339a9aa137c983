"""How the project reads ``conf/``: the arguments of Kedro's ``OmegaConfigLoader``, given to Kedro by
``settings.py`` (which imports :data:`CONFIG_LOADER_ARGS` from here) and to the loaders the project
makes itself (:func:`config_loader`), so that both read ``conf/`` alike. Here, not in ``settings.py``: Kedro
reads ``settings.py`` from the top of the house, and no module below it imports it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from malaria_pipeline.framework.profiles import by_profile

CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # An environment (conf/local) overrides single keys of base, not whole top-level groups.
    "merge_strategy": {"parameters": "soft", "globals": "soft"},
    # ${by_profile:<gpu value>, <cpu value>} in the parameters: the value of the hardware profile
    # (malaria_pipeline.framework.profiles).
    "custom_resolvers": {"by_profile": by_profile},
    # conf/<env>/spark.yml: the Spark session of batch_inference (malaria_pipeline.framework.spark)
    "config_patterns": {"spark": ["spark*", "spark*/**"]},
}


def config_loader(conf: Path, **overrides: Any):
    """Kedro's ``OmegaConfigLoader`` of ``conf`` with the project's :data:`CONFIG_LOADER_ARGS` (the soft
    merge of an environment, ``${by_profile:…}``), also where Kedro has not configured them, and
    ``overrides``."""
    from kedro.config import OmegaConfigLoader

    return OmegaConfigLoader(str(conf), **{**CONFIG_LOADER_ARGS, **overrides})
