"""batch_inference's patient table (``batch_patients``) on a local Spark session, from predictions whose
counts are worked out by hand: a cell at the counting threshold, the configured level, the model's spread,
and the rule of ``batch_inference.patients.call`` for a model that keeps none. No trained model: the served
model's patient settings come from a bundle written here."""

import shutil

import pandas as pd
import pytest
from scipy.stats import betabinom

from malaria_pipeline.pipelines.batch_inference import nodes
from malaria_pipeline.pipelines.inference.served_model import ServedModel
from tests.helpers import HAND_SPREAD, REFERENCE_CELLS, interval_by_hand

pytest.importorskip("pyspark")
if shutil.which("java") is None:
    pytest.skip("Spark needs Java: no java on the PATH", allow_module_level=True)


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession

    from malaria_pipeline.framework.spark import spark_session

    started = SparkSession.getActiveSession() is None
    session = spark_session(
        {
            "spark.master": "local[1]",
            "spark.driver.host": "127.0.0.1",
            "spark.driver.bindAddress": "127.0.0.1",
        }
    )
    yield session
    if started:
        session.stop()


@pytest.fixture
def served(monkeypatch):
    """The served model of a bundle that keeps rates and a spread but no call rule; its training run's
    inference parameters call with another rule (at least 60 cells) than batch_inference's."""
    model = ServedModel()
    model.bundle = {"reference_cells": REFERENCE_CELLS, "patient_spread": HAND_SPREAD}
    model.params = {
        "threshold": 0.5,
        "positive_class": "Parasitized",
        "tta": False,
        "patients": {"level": 0.95, "call": {"healthy_below": 0.001, "negative_below": 0.5, "min_cells": 60}},
    }
    monkeypatch.setattr(nodes, "served_model", lambda uri: model)
    return model


def predictions(spark):
    # P1: 10 cells exactly at the counting threshold 0.5, 40 below it, 1 file not classified;
    # P2: 1 of 40 at the threshold.
    rows = (
        [("P1", "a", 0.5, None)] * 10
        + [("P1", "a", 0.1, None)] * 40
        + [("P1", "a", None, "truncated")]
        + [("P2", "b", 0.5, None)]
        + [("P2", "b", 0.1, None)] * 39
    )
    frame = pd.DataFrame(rows, columns=["patient", "folder", "p_parasitized", "error"])
    return spark.createDataFrame(
        frame, schema="patient string, folder string, p_parasitized double, error string"
    )


def test_batch_patients_count_a_cell_at_the_threshold_at_the_configured_level_with_the_spread_and_rule(
    spark, served
):
    params = {
        "group_by": "prefix",
        "positive_class": "Parasitized",
        "model_uri": "runs:/0123/model",
        "patients": {"level": 0.9, "call": {"healthy_below": 0.01, "negative_below": 0.02, "min_cells": 40}},
    }
    table = nodes.summarize_patients(predictions(spark), params).set_index("patient")
    assert table[["cells", "parasitized", "errors"]].values.tolist() == [[50, 10, 1], [40, 1, 0]]
    between = (0.9 * 0.1 * 0.01, 0.05 * 0.95 * 0.02)  # each rate's mean (1 - mean) rho
    for patient, called, cells in (("P1", 10, 50), ("P2", 1, 40)):
        assert table.loc[patient, ["fraction_low", "fraction_high"]].tolist() == pytest.approx(
            interval_by_hand(called, cells, (90, 100), (95, 100), 0.9, *between), abs=1e-12
        )
        assert table.loc[patient, "healthy_chance"] == pytest.approx(
            betabinom.sf(called - 1, cells, 0.05 * 49, 0.95 * 49), rel=1e-9
        )
    # batch_inference.patients.call, not the training run's: P1's chance 0.0088 is below 0.01, and P2's
    # fraction (0.025 observed, below 1 - Sp) clips to 0, below 0.02; both have at least 40 cells
    assert table["call"].tolist() == ["positive", "negative"]
