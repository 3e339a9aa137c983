"""The Model Registry flow on a SQLite store in a temporary folder: register with the challenger alias,
promote the first, refuse a worse one with its reason, promote a better or forced one, score a model
trained on every patient on its cross-validation run.

The served model of a real training run, registered, promoted and served as ``@champion``, is tested in
tests/pipelines/inference/test_served_model.py.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest

from malaria_pipeline.framework import registry
from malaria_pipeline.framework.tracking import CROSS_VALIDATION_RUN_TAG

NAME = "malaria-cell-classifier"
MARGINS = {"sensitivity": 0.005, "roc_auc": 0.002}


class Constant(mlflow.pyfunc.PythonModel):
    """A served model that answers one number: enough to tell versions apart."""

    def __init__(self, value: float):
        self.value = value

    def predict(self, context, model_input, params=None):
        return pd.Series([self.value] * len(model_input))


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    mlflow.set_experiment("malaria-pipeline")
    yield mlflow.MlflowClient()
    mlflow.set_registry_uri("")


def training_run(value: float, metrics: dict[str, float], tags: dict[str, str] | None = None) -> str:
    """A finished run that logged a served model ``model`` and ``metrics``, as a training run does."""
    with mlflow.start_run() as run:
        mlflow.pyfunc.log_model(name="model", python_model=Constant(value))
        mlflow.log_metrics(metrics)
        mlflow.set_tags(tags or {})
    return run.info.run_id


def register(run_id: str, card: str = "") -> int:
    return int(registry.register_run_model(run_id, NAME, "challenger", card).version)


def promote(**kwargs):
    return registry.promote(
        NAME, "challenger", "champion", {**MARGINS, **kwargs.pop("margins", {})}, **kwargs
    )


def champion_answer(client) -> float:
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    return float(model.predict(pd.DataFrame({"image": ["x"]}))[0])


def test_each_run_is_a_new_version_with_the_challenger_alias_and_its_card(store):
    first = register(
        training_run(1.0, {"test.sensitivity": 0.95, "test.roc_auc": 0.99}), card="# Model card: one"
    )
    second = register(training_run(2.0, {"test.sensitivity": 0.95, "test.roc_auc": 0.99}))
    assert (first, second) == (1, 2)
    assert int(store.get_model_version_by_alias(NAME, "challenger").version) == 2
    assert store.get_model_version(NAME, "1").description == "# Model card: one"
    assert (
        float(mlflow.pyfunc.load_model(f"models:/{NAME}@challenger").predict(pd.DataFrame({"x": [0]}))[0])
        == 2.0
    )


def test_the_first_challenger_becomes_champion_and_a_worse_one_does_not(store):
    register(training_run(1.0, {"test.sensitivity": 0.950, "test.roc_auc": 0.990}))
    report = promote()
    assert (
        report["promoted"]
        and report["champion"] == 1
        and report["reason"] == "no version held the champion alias"
    )
    assert champion_answer(store) == 1.0

    # sensitivity 0.940 < 0.950 - 0.005: refused, and the reason says which metric and both scores
    run = training_run(2.0, {"test.sensitivity": 0.940, "test.roc_auc": 0.995})
    register(run)
    report = promote()
    assert not report["promoted"] and report["champion"] == 1
    assert report["reason"].startswith(
        "the challenger is worse than the champion beyond the margin on sensitivity: "
        "sensitivity 0.9400 vs 0.9500 (margin 0.005); roc_auc 0.9950 vs 0.9900"
    )
    assert f"the test subset of run {run}" in report["reason"]
    assert report["challenger"]["scores"] == {"sensitivity": 0.94, "roc_auc": 0.995}
    assert champion_answer(store) == 1.0

    # within the margin (0.946 >= 0.945) on both: promoted
    register(training_run(3.0, {"test.sensitivity": 0.946, "test.roc_auc": 0.989}))
    report = promote()
    assert report["promoted"] and report["champion"] == 3 and champion_answer(store) == 3.0
    assert store.get_model_version(NAME, "3").tags[registry.PROMOTED_TAG] == report["reason"]
    # promoting the champion again changes nothing
    assert promote()["reason"] == "version 3 is the champion already"


def test_a_challenger_exactly_at_the_champion_minus_the_margin_is_promoted_and_a_hair_below_is_not(store):
    # "at least the champion's score minus the margin": values exact in binary (31/32 - 1/32 = 30/32), so
    # the boundary is the boundary and not a rounding of it.
    margins = {"sensitivity": 1 / 32, "roc_auc": 1 / 32}
    register(training_run(1.0, {"test.sensitivity": 31 / 32, "test.roc_auc": 31 / 32}))
    promote(margins=margins)
    register(training_run(2.0, {"test.sensitivity": np.nextafter(30 / 32, 0), "test.roc_auc": 31 / 32}))
    assert not promote(margins=margins)["promoted"]
    register(training_run(3.0, {"test.sensitivity": 30 / 32, "test.roc_auc": 30 / 32}))
    report = promote(margins=margins)
    assert report["promoted"] and report["champion"] == 3 and champion_answer(store) == 3.0


def test_force_promotes_a_worse_one_and_says_what_it_overrode(store):
    register(training_run(1.0, {"test.sensitivity": 0.95, "test.roc_auc": 0.99}))
    promote()
    register(training_run(2.0, {"test.sensitivity": 0.80, "test.roc_auc": 0.90}))
    report = promote(force=True)
    assert report["promoted"] and report["forced"] and champion_answer(store) == 2.0
    assert report["reason"].startswith("forced (promote.force=true), although: the challenger is worse")
    # and an older version by number
    report = promote(version=1, force=True)
    assert report["champion"] == 1 and champion_answer(store) == 1.0


def test_a_model_trained_on_every_patient_is_scored_on_its_cross_validation(store):
    register(training_run(1.0, {"test.sensitivity": 0.95, "test.roc_auc": 0.99}))
    promote()
    cv = training_run(
        0.0, {"cv.sensitivity.mean": 0.948, "cv.roc_auc.mean": 0.9914, "cv.accuracy.mean": 0.96}
    )
    register(
        training_run(2.0, {}, {CROSS_VALIDATION_RUN_TAG: cv})
    )  # no test subset: its claim is the CV run's
    report = promote()
    assert report["challenger"]["source"] == f"cross-validation run {cv}"
    assert report["challenger"]["scores"] == {"sensitivity": 0.948, "roc_auc": 0.9914}
    assert report["promoted"] and report["champion"] == 2


def test_a_version_without_scores_is_not_promoted_unless_forced(store):
    register(training_run(1.0, {"test.sensitivity": 0.95, "test.roc_auc": 0.99}))
    promote()
    register(training_run(2.0, {"test.sensitivity": 0.99}))
    report = promote()
    assert not report["promoted"] and report["reason"].startswith("no score to compare: roc_auc of version 2")
    assert promote(force=True)["champion"] == 2


def test_no_registered_model_says_what_to_run(store):
    with pytest.raises(
        ValueError,
        match=r"has no version with the alias challenger of malaria-cell-classifier .*"
        r"run `kedro run --pipelines training` first",
    ):
        promote()
