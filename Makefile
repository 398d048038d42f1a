# Two commands for users: `make compare` and `make test`. Both set everything up first and are
# idempotent: the virtualenv is (re)installed only when pyproject.toml changes.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
PROFILE ?= quick
EXPERIMENT ?= fashion-mnist
BUDGET ?= none
CLUSTER ?= none
PIPELINES ?= all
# The embedded default: a SQLite tracking store beside the project (MLflow's own default too).
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow.db
export TF_CPP_MIN_LOG_LEVEL ?= 3

.PHONY: setup data compare plan test clean

setup: $(STAMP) data

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# An existing verified copy, else the Debian package (as root), else the canonical download.
data: $(STAMP)
	$(BIN)/python -m study data

compare: setup
	@# the store is created under a lock first: two first-time compares must not race mlflow's migrations
	$(BIN)/python -m study store
	PATH="$(BIN):$$PATH" mlflow run . -e compare --env-manager local \
		--experiment-name $(EXPERIMENT) -P profile=$(PROFILE) -P pipelines=$(PIPELINES) \
		-P budget_minutes=$(BUDGET) -P cluster=$(CLUSTER)

# The plan `make compare` would follow (BUDGET=N, or none: the profile's recipe) with its
# expected minutes on this machine, in seconds; not through `mlflow run`, which creates a run.
plan: setup
	MLFLOW_EXPERIMENT_NAME=$(EXPERIMENT) $(BIN)/python -m study compare --plan-only --profile $(PROFILE) --pipelines $(PIPELINES) \
		--budget-minutes $(BUDGET) --cluster $(CLUSTER)

# Test files side by side, one worker per core (pytest-xdist): most tests wait on processes,
# servers and stores, so on 2 cores two workers cut the suite from 21.9 to 16.4-18.0 minutes
# (an AVX2-only host). A file stays on one worker, so a module's shared fixture (the end-to-end
# smoke compare) is built once. `pytest tests/x.py` alone still runs in one process.
# First the layers (pyproject.toml's [tool.importlinter]): an import up a layer or a cycle
# fails the suite in seconds, before any test runs.
test: setup
	$(BIN)/lint-imports --no-logo --no-cache
	$(BIN)/python -m pytest -n auto --dist loadfile --durations=40

clean:
	rm -rf mlruns mlflow.db mlflow.db.lock optuna.journal .pytest_cache
