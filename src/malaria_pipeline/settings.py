"""Project settings. There is no need to edit this file unless you want to change values
from the Kedro defaults. For further information, including these default values, see
https://docs.kedro.org/en/stable/configure/configuration_basics/#configuration"""

from malaria_pipeline.framework.startup import filter_known_warnings

# For sessions created from Python (notebooks, tests); `kedro` itself filters them earlier.
filter_known_warnings()

# Instantiated project hooks. Hooks are executed in a Last-In-First-Out (LIFO) order.
from malaria_pipeline.framework.hooks import (  # noqa: E402 - after the warning filter
    BuildFoldsFromParameters,
    CheckTrainingParameters,
    EndInterruptedMlflowRun,
    LogArtifactsToMlflow,
    LogHardwareProfile,
    LogServedModel,
    MarkDeadMlflowRunsKilled,
    NestFoldRuns,
    RegisterModelVersion,
    StartCheckpointsAfresh,
    TagAccuracyClaim,
)
from malaria_pipeline.framework.spark import SparkHooks  # noqa: E402
from malaria_pipeline.pipelines.inference.served_model import log_served_model  # noqa: E402

HOOKS = (
    BuildFoldsFromParameters(),
    EndInterruptedMlflowRun(),
    NestFoldRuns(),
    LogArtifactsToMlflow(),
    LogServedModel(log_served_model),
    MarkDeadMlflowRunsKilled(),
    LogHardwareProfile(),
    CheckTrainingParameters(),
    StartCheckpointsAfresh(),
    TagAccuracyClaim(),
    RegisterModelVersion(),
    SparkHooks(),
)

# Installed plugins for which to disable hook auto-registration.
# DISABLE_HOOKS_FOR_PLUGINS = ("kedro-viz",)

# Class that manages the KedroSession.
# from kedro.framework.session import KedroSession
# SESSION_CLASS = KedroSession

# Class that manages storing KedroSession data.
# from kedro.framework.session.store import BaseSessionStore
# SESSION_STORE_CLASS = BaseSessionStore
# Keyword arguments to pass to the `SESSION_STORE_CLASS` constructor.
# SESSION_STORE_ARGS = {
#     "path": "./sessions"
# }

# Directory that holds configuration.
# CONF_SOURCE = "conf"

# Class that manages how configuration is loaded.
# from kedro.config import OmegaConfigLoader

# CONFIG_LOADER_CLASS = OmegaConfigLoader

# Keyword arguments to pass to the `CONFIG_LOADER_CLASS` constructor. Defined in framework/, where the
# project's own config loaders read conf/ with the same; settings.py imports, and is imported by nothing.
from malaria_pipeline.framework.config_loader import CONFIG_LOADER_ARGS  # noqa: E402, F401 - read by Kedro

# Class that manages Kedro's library components.
# from kedro.framework.context import KedroContext
# CONTEXT_CLASS = KedroContext

# Class that manages the Data Catalog.
# from kedro.io import DataCatalog
# DATA_CATALOG_CLASS = DataCatalog
