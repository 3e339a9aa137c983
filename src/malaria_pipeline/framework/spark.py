"""The Spark session of the pipelines that need one, from ``conf/<env>/spark.yml``, as Kedro's
``spaceflights-pyspark`` starter makes it, but started only for a pipeline with Spark nodes.

``spark.master`` is ``local[*]`` in ``conf/base/spark.yml``: set it to ``spark://host:7077``, ``yarn`` or
``k8s://...`` there or in ``conf/local/spark.yml`` for a cluster (docs/batch-inference.md).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from typing import Any

from kedro.framework.hooks import hook_impl

logger = logging.getLogger(__name__)

# Nodes tagged so need the session (those of malaria_pipeline.pipelines.batch_inference).
SPARK_TAG = "spark"


class SparkHooks:
    """Starts the Spark session before a pipeline with nodes tagged ``spark`` runs; other pipelines
    start no JVM."""

    def __init__(self) -> None:
        self._settings: dict[str, Any] = {}

    @hook_impl
    def after_context_created(self, context) -> None:
        try:
            self._settings = dict(context.config_loader["spark"])
        except KeyError:  # no spark.yml in this environment
            self._settings = {}

    @hook_impl
    def before_pipeline_run(self, pipeline) -> None:
        if any(SPARK_TAG in node.tags for node in pipeline.nodes):
            spark_session(self._settings)


def spark_session(settings: dict[str, Any]):
    """The Spark session of ``settings`` (``spark.yml``'s keys): the running one when its master is the
    same, else a new one (a running session of another master is stopped first).

    Spark's Python workers run ``spark.pyspark.python`` (default: this interpreter, the project's
    ``.venv``): PySpark reads it from ``PYSPARK_PYTHON`` when the session starts, so it is set for that
    moment only.

    Raises:
        RuntimeError: no ``java`` on the PATH or in ``JAVA_HOME``, with what to install.
    """
    from pyspark.sql import SparkSession

    check_java()
    settings = {key: str(value) for key, value in settings.items() if value is not None}
    python = settings.pop("spark.pyspark.python", sys.executable)
    master = settings.get("spark.master", "local[*]")
    active = SparkSession.getActiveSession()
    if active is not None:
        if active.sparkContext.master == master:
            return active
        logger.info("Stopping the Spark session of %s to start one on %s", active.sparkContext.master, master)
        active.stop()
    # A Builder of its own: SparkSession.builder is one shared object that keeps every earlier .config().
    # (A second session in one process may still inherit SQL settings that the JVM kept from the first.)
    builder = SparkSession.Builder().appName(settings.pop("spark.app.name", "malaria-pipeline"))
    for key, value in settings.items():
        builder = builder.config(key, value)
    saved = {name: os.environ.get(name) for name in ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON")}
    os.environ["PYSPARK_PYTHON"] = os.environ["PYSPARK_DRIVER_PYTHON"] = python
    try:
        spark = builder.getOrCreate()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    spark.sparkContext.setLogLevel(settings.get("spark.log.level", "WARN"))
    logger.info(
        "Spark %s session on %s (default parallelism %d), Python workers: %s",
        spark.version,
        spark.sparkContext.master,
        spark.sparkContext.defaultParallelism,
        python,
    )
    return spark


def check_java() -> None:
    """Spark runs on a JVM: stops with what to install when there is none."""
    home = os.environ.get("JAVA_HOME")
    if shutil.which("java") is None and not (home and os.access(os.path.join(home, "bin", "java"), os.X_OK)):
        raise RuntimeError(
            "Spark needs Java 17 or 21 and there is no java on the PATH (nor JAVA_HOME): install a JDK "
            "(Debian/Ubuntu: apt install openjdk-17-jre-headless; macOS: brew install openjdk@17)"
        )
