"""Nodes of the batch_inference pipeline: Spark DataFrames in and out (the catalog's SparkDatasets).

The model is the MLflow model that a training run logs (the ``inference`` pipeline's node behind
``mlflow.pyfunc``), run by ``mlflow.pyfunc.spark_udf`` in Spark's Python workers: the same decoding,
limits and threshold as ``kedro run --pipelines inference`` and ``mlflow models serve``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pandas as pd

# Imported at run time, not only for type checkers: Kedro reads each node's type hints when it builds the
# pipeline, and warned on every run that it could not resolve DataFrame (0.1 s of import, no JVM).
from pyspark.sql import DataFrame

from malaria_pipeline.assess.columns import probability_column
from malaria_pipeline.assess.patients import PATIENT_COLUMNS, table_of_counts
from malaria_pipeline.framework.datasets import registered_version
from malaria_pipeline.pipelines.inference.nodes import NO_PREFIX, log_patient_rows, wants_patient_table

logger = logging.getLogger(__name__)

# The file-name prefix before _IMG_ names the patient (malaria_pipeline.cells.archive.patient_id).
_PATIENT = r"^(.+?)_IMG_"


def score_images(images: DataFrame, params: dict[str, Any]) -> DataFrame:
    """``batch_predictions``: one row per image file, scored by the MLflow model ``params["model_uri"]``.

    A file that can't be decoded, or is past the model's image limits, keeps its row with the reason in
    ``error`` (the model answers each row on its own): it never fails a partition or the job.

    Args:
        images: Spark's ``binaryFile`` rows (``path``, ``content``, ...) of the image files.
        params: ``batch_inference``: ``source`` (the folder read), ``model_uri`` (``models:/...`` or
            ``runs:/...``), ``positive_class``, ``runtime`` (``inference.runtime``: ONNX Runtime or torch in
            Spark's workers), ``threads`` (the runtime's threads in each of Spark's Python workers; null: ``spark.task.cpus``, the cores Spark gives each task) and ``batch_size`` (the rows each
            worker classifies at once; null: the model's ``inference.batch_size``).

    Returns:
        A lazy DataFrame of ``path``, ``folder`` (relative to the source, ``.`` at its top), ``patient``
        (the file-name prefix before ``_IMG_``, null without one), ``label``, ``p_<positive class>``,
        ``error``, ``model_name``, ``model_version`` and ``model_run_id``: the catalog writes it, which
        is when Spark scores.
    """
    import mlflow
    from pyspark.sql import functions as F

    uri = params["model_uri"]
    model = describe_model(uri)
    column = probability_column(params["positive_class"])
    # each Python worker runs one task at a time: the runtime gets the cores Spark gives a task
    threads = params["threads"] or int(images.sparkSession.conf.get("spark.task.cpus", "1"))
    predict = mlflow.pyfunc.spark_udf(
        images.sparkSession,
        uri,
        env_manager="local",
        result_type=f"label string, {column} double, error string",
        # the threads, and the batch that is fastest on them (docs/batch-inference.md)
        extra_env={"OMP_NUM_THREADS": str(threads)},
        params={"batch_size": params["batch_size"]} if params["batch_size"] else None,
        model_config={"runtime": params["runtime"]},
    )
    root = re.escape(source_root(params["source"]))
    logger.info(
        "Scoring the image files of %s with %s (model %s version %s, run %s) in Spark, on %s",
        params["source"],
        uri,
        model["model_name"],
        model["model_version"],
        model["model_run_id"],
        params["runtime"],
    )
    files = with_empty_files(images)
    name = F.regexp_extract("path", r"([^/]*)$", 1)
    folder = F.regexp_extract("path", rf"{root}/(.*)/[^/]*$", 1)
    answer = predict(F.base64("content").alias("image"))
    return files.select(
        "path",
        F.when(folder == "", ".").otherwise(folder).alias("folder"),
        F.nullif(F.regexp_extract(name, _PATIENT, 1), F.lit("")).alias("patient"),
        answer.alias("answer"),
    ).select(
        "path",
        "folder",
        "patient",
        # spark_udf casts a string column that mixes None and text with numpy's str: None becomes "None"
        F.nullif("answer.label", F.lit("None")).alias("label"),
        f"answer.{column}",
        # the model names a row by its place in its Arrow batch: here the path names the file
        F.regexp_replace(F.nullif("answer.error", F.lit("None")), r"^row \d+: ", "").alias("error"),
        *(F.lit(value).cast("string").alias(key) for key, value in model.items()),
    )


def with_empty_files(images: DataFrame) -> DataFrame:
    """``path`` and ``content`` of every listed file, empty ones included (as no bytes).

    Spark's file sources split a file into ranges of its length, so a file of 0 bytes gives no row; the
    model must still answer it (with an error). The listing (``inputFiles``, on the driver, as Spark
    lists them anyway) less the paths read (no content is read for that) are those files.
    """
    from pyspark.sql import functions as F

    spark = images.sparkSession
    listed = spark.createDataFrame([(path,) for path in images.inputFiles()], "path string").select(
        F.regexp_replace("path", "^file:///", "file:/").alias("path")  # as binaryFile writes a path
    )
    empty = listed.join(images.select("path"), "path", "left_anti")
    return images.select("path", "content").unionByName(
        empty.select("path", F.lit(b"").cast("binary").alias("content"))
    )


def summarize_folders(predictions: DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    """``batch_summary``: per folder, its cells (files), those called the positive class, and those that
    could not be classified, read back from the written ``batch_predictions``."""
    from pyspark.sql import functions as F

    positive = params["positive_class"]
    summary = (
        predictions.groupBy("folder")
        .agg(
            F.count("*").alias("cells"),
            F.sum((F.col("label") == positive).cast("int")).alias(positive.lower()),
            F.sum(F.col("error").isNotNull().cast("int")).alias("errors"),
        )
        .orderBy("folder")
        .toPandas()
    )
    summary = summary.astype({"cells": int, positive.lower(): int, "errors": int})
    for row in summary.itertuples(index=False):
        logger.info("%s: %d cells, %d %s, %d not classified", *row[:2], row[2], positive, row[3])
    logger.info(
        "batch_predictions: %d files in %d folders, %d %s, %d not classified",
        summary["cells"].sum(),
        len(summary),
        summary[positive.lower()].sum(),
        positive,
        summary["errors"].sum(),
    )
    return summary


def summarize_patients(predictions: DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    """``batch_patients``: the patient table of ``batch_predictions``, one row per patient (the file-name
    prefix, ``(no prefix)`` without one) or per folder (``batch_inference.group_by``), with the columns
    and numbers of the ``inference`` pipeline's ``patient_predictions`` for the same files.

    Spark counts each group's classified cells, those at or above the model's counting threshold and the
    files it could not classify; the driver makes the table of those counts with the one function that
    every patient table comes from (:func:`~malaria_pipeline.assess.patients.table_of_counts`), the
    model's rates, spread and call rule (read from the MLflow model, as the served model reads them) and
    ``batch_inference.patients.level``. ``group_by: null``: an empty table.
    """
    from pyspark.sql import functions as F

    group_by = params["group_by"]
    if not wants_patient_table(group_by, "batch_inference.group_by"):
        return pd.DataFrame(columns=PATIENT_COLUMNS)
    settings = served_model(params["model_uri"]).patient_settings(params["patients"]["call"])
    group = F.coalesce("patient", F.lit(NO_PREFIX)) if group_by == "prefix" else F.col("folder")
    classified = F.col("error").isNull()
    called = classified & (F.col(probability_column(params["positive_class"])) >= settings.threshold)
    counts = (
        predictions.groupBy(group.alias("patient"))
        .agg(
            F.sum(classified.cast("int")).alias("cells"),
            F.sum(called.cast("int")).alias("parasitized"),
            F.sum((~classified).cast("int")).alias("errors"),
        )
        .orderBy("patient")
        .toPandas()
        .astype({"cells": int, "parasitized": int, "errors": int})
    )
    table = table_of_counts(
        counts, settings.rates, settings.rule, params["patients"]["level"], settings.spread
    )
    log_patient_rows(table, group_by, params["positive_class"])
    return table


def served_model(uri: str):
    """The Python model of the MLflow model ``uri`` (:class:`~malaria_pipeline.pipelines.inference.served_model.ServedModel`),
    loaded on the driver for its patient settings.

    Raises:
        ValueError: a model logged before models answered per patient (kedro-mlflow's pipeline model).
    """
    import mlflow

    from malaria_pipeline.pipelines.inference.served_model import ServedModel

    model = mlflow.pyfunc.load_model(uri, model_config={"runtime": "onnx"}).unwrap_python_model()
    if not isinstance(model, ServedModel):
        raise ValueError(
            f"batch_inference.model_uri {uri} is a model of an older training run ({type(model).__name__}), "
            "which keeps no patient settings that Spark can read: retrain it with `kedro run --pipelines "
            "training`, or set batch_inference.group_by to null for no patient table"
        )
    return model


def describe_model(uri: str) -> dict[str, str | None]:
    """The registered name, version and run id of an MLflow model URI (name and version None for a
    ``runs:/`` URI).

    Raises:
        ValueError: a URI that is neither ``models:/<name>@<alias>``, ``models:/<name>/<version>`` nor
            ``runs:/<run id>/<path>``.
    """
    if match := re.fullmatch(r"runs:/([0-9a-f]+)/.+", uri):
        return {"model_name": None, "model_version": None, "model_run_id": match.group(1)}
    registered = registered_version(uri)
    if registered is None:
        raise ValueError(
            f"batch_inference.model_uri is {uri!r}: give a registered model (models:/<name>@<alias> or "
            "models:/<name>/<version>) or a training run's (runs:/<run id>/model)"
        )
    return {
        "model_name": registered["name"],
        "model_version": str(registered["version"]),
        "model_run_id": registered["run_id"],
    }


def source_root(source: str) -> str:
    """The folder ``source`` as Spark's binaryFile source writes it in ``path`` (``file:/abs/folder``
    for a local folder; a URI with a scheme as given), without a trailing slash."""
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", source):
        return source.rstrip("/")
    return "file:" + Path(source).resolve().as_posix()
