# The README's commands (demo, test) and lint. Each builds .venv from the pinned
# lock file first, so they work on a fresh machine with only Python 3.11.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo daily-demo test test-dist install lint

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/activate
	$(BIN)/pip install --quiet -c requirements.lock -e '.[test,dask]'

demo: install
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh

# Three generated days of the daily loop (README, "Daily loop in three days").
daily-demo: install
	$(BIN)/python scripts/daily_demo.py --workdir daily_out

# `test` is every test but the multi-process ones (TF_CONFIG training, Beam worker
# processes, the DaskRunner on a LocalCluster, the three-day daily loop: marker `dist`), which `test-dist` runs;
# CI (.ci/run) runs both.
test: install
	$(BIN)/python -m pytest -q -m "not dist" --durations=20

test-dist: install
	$(BIN)/python -m pytest -q -m dist

# ruff (pyproject [tool.ruff]) and mypy (pyproject [tool.mypy]) over the three packages.
LINT_PATHS := pipeline trainer serving
lint: install
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/mypy $(LINT_PATHS)

# Airflow (orchestration/, BUILD.md "Orchestration") in its own venv, pinned by
# orchestration/constraints.txt: it never touches .venv or requirements.lock.
AIRFLOW_VENV := .venv-airflow
.PHONY: airflow test-airflow

$(AIRFLOW_VENV)/bin/airflow: orchestration/requirements.txt orchestration/constraints.txt
	$(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/pip install --quiet --upgrade pip
	$(AIRFLOW_VENV)/bin/pip install --quiet -c orchestration/constraints.txt -r orchestration/requirements.txt
	touch $@

airflow: $(AIRFLOW_VENV)/bin/airflow

# The DAG for three logical days with `airflow dags test` (tests/orchestration); CI runs it.
test-airflow: install airflow
	CTR_AIRFLOW_VENV=$(CURDIR)/$(AIRFLOW_VENV) $(BIN)/python -m pytest -q tests/orchestration --durations=10
