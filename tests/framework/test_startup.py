"""Readable logs: one plain line per record off a terminal, rich on one, known warnings filtered."""

from __future__ import annotations

import copy
import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import mlflow.pyfunc
import mlflow.pytorch
import pytest

from malaria_pipeline.framework import startup

# time level logger: message (MLflow formats its own loggers' time as 2026/11/22 05:17:34)
PLAIN_LINE = re.compile(
    r"^\d{4}[-/]\d\d[-/]\d\d \d\d:\d\d:\d\d(,\d{3})? (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: "
)


@pytest.mark.slow
def test_a_run_into_a_pipe_logs_one_plain_line_per_record(kedro_project, cell_folder):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("KEDRO_LOGGING_CONFIG", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    }
    params = (
        f"ingestion.source={cell_folder},ingestion.image_size=16,training.width=4,training.epochs=2,"
        "training.batch_size=8,preprocessing.split.strategy=stratified,preprocessing.split.fractions.train=0.5,"
        "preprocessing.split.fractions.validation=0.25,preprocessing.split.fractions.test=0.25"
    )
    # The `kedro` command itself, not KedroProject.run: what is tested is what the CLI prints into a pipe.
    done = subprocess.run(
        [sys.executable, "-m", "kedro", "run", "--pipelines", "training", "--params", params],
        cwd=kedro_project.root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    lines = done.stdout.splitlines()
    # no wrapped fragment, no bare warning, no progress bar (MLflow logs the model's artifacts)
    assert [line for line in lines if not PLAIN_LINE.match(line)] == []
    assert "\x1b[" not in done.stdout and "Warning" not in done.stdout and "\r" not in done.stdout
    (indexed,) = [line for line in lines if "Indexed" in line]
    assert re.search(
        r" INFO malaria_pipeline\.pipelines\.ingestion\.nodes: Indexed 42 images of 6 patients from "
        r".*\(Parasitized: 16, Uninfected: 26\); skipped 0 of 42 files",
        indexed,
    )
    epochs = [
        line
        for line in lines
        if re.search(r"malaria_pipeline\.ml\.train: +\d+ +full +[\d.]+ +[\d.]+ +[\d.]+ ", line)
    ]
    assert len(epochs) == 2


@pytest.fixture
def project_logging():
    from kedro.framework.project import LOGGING, configure_logging

    saved = copy.deepcopy(dict(LOGGING))
    configure_logging(
        {
            **saved,
            "root": {"handlers": []},
            "handlers": {},
            startup.TERMINAL_HANDLERS: {
                "rich": {"class": "kedro.logging.RichHandler", "rich_tracebacks": False}
            },
        }
    )
    yield
    configure_logging(saved)


def test_on_a_terminal_the_root_logger_goes_through_rich(project_logging):
    from kedro.logging import RichHandler

    assert not startup.use_terminal_handlers(False)
    assert not any(isinstance(h, RichHandler) for h in logging.getLogger().handlers)
    assert startup.use_terminal_handlers(True)
    assert [type(h) for h in logging.getLogger().handlers] == [RichHandler]


def test_known_warnings_are_dropped_and_others_kept_on_one_line():
    record = logging.makeLogRecord(
        {
            "name": "py.warnings",
            "msg": "%s",
            "args": (
                "/x/mlflow/data_validation.py:187: UserWarning: \x1b[33mAdd type hints to the `predict` method to ...\n  warn(\n",
            ),
        }
    )
    assert not startup.WarningRecords().filter(record)
    other = logging.makeLogRecord(
        {
            "name": "py.warnings",
            "msg": "%s",
            "args": ("/x/y.py:3: RuntimeWarning: overflow encountered\n  a * b\n",),
        }
    )
    assert startup.WarningRecords().filter(other)
    assert other.getMessage() == "/x/y.py:3: RuntimeWarning: overflow encountered"


def test_the_known_warning_filters_match_the_libraries_messages():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        startup.filter_known_warnings()
        warnings.warn("register_new_resolver() is deprecated and will be removed", UserWarning)
        warnings.warn("something else", UserWarning)
    assert [str(w.message) for w in caught] == ["something else"]


def test_mlflow_pytorchs_pickle_notice_is_dropped_from_the_log_and_its_other_records_kept(caplog):
    # The notice as mlflow.pytorch logs it (its source holds the text), and another record of that logger.
    source = Path(mlflow.pytorch.__file__).read_text()
    assert "Saving pytorch model by Pickle or CloudPickle format requires exercising" in source
    startup.filter_known_warnings()
    pytorch_logger = logging.getLogger("mlflow.pytorch")
    with caplog.at_level(logging.INFO, logger="mlflow.pytorch"):
        pytorch_logger.warning(
            "Saving pytorch model by Pickle or CloudPickle format requires exercising caution"
        )
        pytorch_logger.warning("Something else about a pytorch model")
    assert [r.getMessage() for r in caplog.records if r.name == "mlflow.pytorch"] == [
        "Something else about a pytorch model"
    ]


def test_mlflow_pyfuncs_notice_on_spark_udfs_local_environment_is_dropped(caplog):
    source = Path(mlflow.pyfunc.__file__).read_text()
    notice = 'Calling `spark_udf()` with `env_manager="local"` does not recreate the same '
    assert notice in source  # MLflow's own words (the message goes on in the next string literal)
    startup.filter_known_warnings()
    with caplog.at_level(logging.INFO, logger="mlflow.pyfunc"):
        logging.getLogger("mlflow.pyfunc").warning(notice + "environment that was used during training")
        logging.getLogger("mlflow.pyfunc").warning("Another notice")
    assert [r.getMessage() for r in caplog.records if r.name == "mlflow.pyfunc"] == ["Another notice"]


def test_each_known_record_of_a_logger_gets_its_filter_once(monkeypatch):
    # two notices of one logger: both dropped, and filtering again adds no second copy of either
    name = "tests.known_records"
    monkeypatch.setattr(startup, "KNOWN_LOG_RECORDS", ((name, "first notice"), (name, "second notice")))
    logger = logging.getLogger(name)
    try:
        startup.filter_known_warnings()
        startup.filter_known_warnings()
        assert sorted(f.message.pattern for f in logger.filters) == ["first notice", "second notice"]
    finally:
        for known in list(logger.filters):
            logger.removeFilter(known)
