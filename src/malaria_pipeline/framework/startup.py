"""What the project sets up before Kedro runs anything: readable logs, and no warnings a user cannot act on.

:func:`init` is the project's ``kedro.init`` entry point (``pyproject.toml``): the ``kedro`` command
calls it before it loads its plugins, so it comes before any of their import-time warnings.
``settings.py`` calls :func:`filter_known_warnings` too, for sessions created from Python (notebooks,
tests, the benchmark).
"""

from __future__ import annotations

import copy
import logging
import os
import re
import sys
import warnings

# Third-party notices that a user of this project cannot act on, by message: each is the library's
# own business (Kedro and kedro-mlflow call OmegaConf's deprecated API; kedro-mlflow's PythonModel has
# no type hints; the served model has an explicit signature, on purpose no input example, which MLflow
# would run at logging time). Every other warning still shows.
KNOWN_WARNINGS = (
    (r"register_new_resolver\(\) is deprecated", UserWarning),
    (r".*Add type hints to the `predict` method", UserWarning),
    (r".*An input example was not provided when logging the model", UserWarning),
    # PySpark 4.2 on pandas 3 (batch_inference's tests pass on it)
    (r"PySpark does not yet fully support pandas", FutureWarning),
)
# The same, where the project itself is the cause, by message and module: the cross-validation's pooling
# node reads each fold's outputs by the names Kedro's namespaces give them (cv_fold_3.out_of_fold), which
# Kedro flags for any node outside that namespace. Elsewhere the warning still shows.
KNOWN_PROJECT_WARNINGS = (
    (
        r"One or more dataset names contain '\.' characters",
        UserWarning,
        r"malaria_pipeline\.pipelines\.cross_validation\.pipeline",
    ),
)

# Log records of libraries that a user cannot act on either, by logger and message. mlflow.pytorch warns
# on every training run that the network is pickled: it is, on purpose (conf/base/catalog.yml,
# mlflow_model: MLflow's pt2 format needs an input example of the profile's image size at logging time),
# and the served model does not load it. mlflow.pyfunc warns on every batch_inference run that spark_udf's
# env_manager="local" does not rebuild the training environment: on purpose, the workers run the project's
# .venv (spark.pyspark.python), which has the model's pinned requirements.
KNOWN_LOG_RECORDS = (
    ("mlflow.pytorch", r"Saving pytorch model by Pickle or CloudPickle format"),
    ("mlflow.pyfunc", r'Calling `spark_udf\(\)` with `env_manager="local"` does not recreate'),
)

TERMINAL_HANDLERS = "terminal_handlers"


def init() -> None:
    """The ``kedro.init`` entry point: filters the known warnings, sends the others to the log as one
    line each, and logs through rich on a terminal (elsewhere MLflow's progress bars stay off too:
    each would be one long line of carriage returns)."""
    filter_known_warnings()
    log_warnings()
    terminal = sys.stdout.isatty()
    if not terminal:
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    use_terminal_handlers(terminal)


def filter_known_warnings() -> None:
    """Ignores the warnings of :data:`KNOWN_WARNINGS`, each by its message, and drops the log records of
    :data:`KNOWN_LOG_RECORDS`."""
    for message, category in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for message, category, module in KNOWN_PROJECT_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name, message in KNOWN_LOG_RECORDS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, KnownRecords) and f.message.pattern == message for f in logger.filters):
            logger.addFilter(KnownRecords(message))


class KnownRecords(logging.Filter):
    """Drops the records whose message matches ``message``."""

    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = re.compile(message)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.message.search(record.getMessage())


class WarningRecords(logging.Filter):
    """On the ``py.warnings`` logger: drops the known warnings, and keeps the first line of the others.

    A warning filter alone does not hold: MLflow shows its own warnings inside
    ``warnings.catch_warnings()`` with ``simplefilter("once")``, which overrides ours.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if any(re.search(message, text, re.IGNORECASE) for message, _ in KNOWN_WARNINGS):
            return False
        # "file:line: Category: message" and then the source line: keep the first.
        record.msg, record.args = text.strip().splitlines()[0] if text.strip() else text, None
        return True


def log_warnings() -> None:
    """Sends warnings to the log (``py.warnings``), as Kedro's rich handler does, through :class:`WarningRecords`."""
    logging.captureWarnings(True)
    logger = logging.getLogger("py.warnings")
    if not any(isinstance(f, WarningRecords) for f in logger.filters):
        logger.addFilter(WarningRecords())


def use_terminal_handlers(is_terminal: bool) -> bool:
    """On a terminal, replaces the root logger's handlers by the ``terminal_handlers`` of the
    logging configuration (``conf/logging.yml``); elsewhere, and for a configuration without them,
    leaves the logging as it is.

    Returns:
        Whether the handlers were replaced.
    """
    from kedro.framework.project import LOGGING, configure_logging

    config = copy.deepcopy(dict(LOGGING))
    terminal = config.get(TERMINAL_HANDLERS)
    if not is_terminal or not terminal:
        return False
    config["handlers"] = {**config.get("handlers", {}), **terminal}
    config.setdefault("root", {})["handlers"] = list(terminal)
    configure_logging(config)
    logging.getLogger(__name__).debug("Logging through %s on this terminal", ", ".join(terminal))
    return True
