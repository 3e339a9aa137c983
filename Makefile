# Set-up and the two everyday commands. Each target creates .venv on first use and reuses it after:
# the install runs again only when pyproject.toml or requirements.lock changes.
#   make train   runs the main job:  kedro run --pipelines training
#   make test    checks the format and lint (ruff), then runs the test suite in a random order
# Extra arguments go through ARGS, e.g.  make train ARGS='--params "ingestion.source=/data/cell_images.zip"'

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
AIRFLOW_VENV := .venv-airflow
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.installed
LABEL_STUDIO_VENV := .venv-label-studio
LABEL_STUDIO_STAMP := $(LABEL_STUDIO_VENV)/.installed
LABEL_STUDIO_PORT ?= 8080

# Kedro's telemetry never asks and never sends from this project.
export DO_NOT_TRACK := 1
# The project's logging: one plain line per record in a file, a pipe or CI; rich on a terminal.
export KEDRO_LOGGING_CONFIG := $(CURDIR)/conf/logging.yml

.PHONY: install train test test-slow java chromium clean-venv airflow-install dags label-studio-install label-studio

install: $(STAMP)

# The constraints file pins every transitive package, so pip can't pick the CPU-only torch 2.13.0 file
# that some machines have locally (torchvision's compiled ops don't import against it).
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --constraint requirements.lock --editable ".[test]"
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/kedro run --pipelines training $(ARGS)

# The formatter and the linter first (ruff, configured in pyproject.toml), then the tests, in a random
# order that pytest-randomly prints at the top ("Using --randomly-seed=N"; ARGS='--randomly-seed=N'
# repeats it, ARGS='-p no:randomly' keeps the file order).
# The end-to-end tests marked slow (20 s or more each: the shared images, the notebook, the benchmark,
# two-machine training, a failing distributed run, a second registered run, logging into a pipe, two
# training runs, the staged training, Airflow, the review queue in Label Studio and in a browser) run in
# make test-slow, which installs Airflow's and Label Studio's environments and Chromium first; CI
# (.ci/run) runs both.
test: $(STAMP) java
	$(BIN)/ruff format --check
	$(BIN)/ruff check
	$(BIN)/python -m pytest -m "not slow" $(ARGS)

test-slow: $(STAMP) java $(AIRFLOW_STAMP) $(LABEL_STUDIO_STAMP) chromium
	$(BIN)/python -m pytest -m slow $(ARGS)

# Airflow 3 in an environment of its own (.venv-airflow; its fastapi pin clashes with the project's): its
# DAGs run each task with the project's .venv (docs/orchestration.md). Only make test-slow and a user of
# Airflow install it.
airflow-install: $(AIRFLOW_STAMP)
$(AIRFLOW_STAMP): airflow/requirements.lock
	test -x $(AIRFLOW_VENV)/bin/python || $(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/python -m pip install --quiet --constraint airflow/requirements.lock apache-airflow
	touch $(AIRFLOW_STAMP)

# The DAGs of airflow/dags/, written anew by kedro-airflow from airflow/dag_template.j2 (then formatted):
# training (a task per stage) and cross_validation (a task per fold, cross_validation.folds of conf/local).
dags: $(STAMP)
	$(BIN)/kedro airflow create --pipelines training,cross_validation --group-by namespace --env local \
		--jinja-file airflow/dag_template.j2 --target-dir airflow/dags
	$(BIN)/ruff format --quiet airflow/dags
	$(BIN)/ruff check --fix --quiet airflow/dags

# Label Studio, where a microscopist reviews the queue of the review pipeline (docs/review.md), in an
# environment of its own (.venv-label-studio: its pins are not the project's; about 1 GB). The pipelines
# talk to it through its SDK, run by that environment's interpreter.
label-studio-install: $(LABEL_STUDIO_STAMP)
$(LABEL_STUDIO_STAMP): label_studio/requirements.lock
	test -x $(LABEL_STUDIO_VENV)/bin/python || $(PYTHON) -m venv $(LABEL_STUDIO_VENV)
	$(LABEL_STUDIO_VENV)/bin/python -m pip install --quiet --constraint label_studio/requirements.lock label-studio
	touch $(LABEL_STUDIO_STAMP)

# Starts it on http://127.0.0.1:$(LABEL_STUDIO_PORT), its data in .label-studio/ (SQLite; PostgreSQL with its
# DJANGO_DB and POSTGRE_* variables), with the account and token of conf/local/credentials.yml or the
# environment (LABEL_STUDIO_USERNAME, LABEL_STUDIO_PASSWORD, LABEL_STUDIO_API_KEY). Ctrl-C stops it.
label-studio: $(STAMP) $(LABEL_STUDIO_STAMP)
	$(BIN)/python -m malaria_pipeline.framework.label_studio_server --port $(LABEL_STUDIO_PORT)

# The browser test of the review queue drives Debian's Chromium (headless) with Playwright.
chromium:
	@test -x /usr/bin/chromium || { command -v apt-get >/dev/null 2>&1 && apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } || { echo "The browser test needs Chromium at /usr/bin/chromium: apt install chromium (Debian/Ubuntu)"; exit 1; }

# Spark (batch_inference and its tests) runs on a JVM.
java:
	@command -v java >/dev/null 2>&1 || { echo "Spark needs Java 17 or 21 and there is no java on the PATH: install a JDK (Debian/Ubuntu: apt install openjdk-17-jre-headless; macOS: brew install openjdk@17)"; exit 1; }

clean-venv:
	rm -rf $(VENV)
