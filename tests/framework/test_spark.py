"""The Spark hook without a JVM: which pipelines start a session, and what a machine without Java is told."""

import pytest
from kedro.pipeline import Node, Pipeline

from malaria_pipeline.framework import spark
from malaria_pipeline.pipeline_registry import register_pipelines


def _identity(x):
    return x


@pytest.fixture
def started(monkeypatch):
    calls = []
    monkeypatch.setattr(spark, "spark_session", calls.append)
    return calls


def test_only_a_pipeline_with_spark_nodes_starts_a_session_with_spark_yml(started):
    hooks = spark.SparkHooks()
    hooks._settings = {"spark.master": "local[2]"}
    pipelines = register_pipelines()
    for name in ("training", "inference", "cross_validation", "promote"):
        hooks.before_pipeline_run(pipelines[name])
    assert started == []
    hooks.before_pipeline_run(pipelines["batch_inference"])
    assert started == [{"spark.master": "local[2]"}]
    hooks.before_pipeline_run(Pipeline([Node(_identity, "a", "b", tags=["spark"])]))
    assert len(started) == 2


def test_without_java_spark_stops_with_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no java on it
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(
        RuntimeError, match=r"Spark needs Java 17 or 21 .* apt install openjdk-17-jre-headless"
    ):
        spark.check_java()
    home = tmp_path / "jdk"
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "java").write_text("#!/bin/sh\n")
    (home / "bin" / "java").chmod(0o755)
    monkeypatch.setenv("JAVA_HOME", str(home))
    spark.check_java()  # a JDK in JAVA_HOME is enough
