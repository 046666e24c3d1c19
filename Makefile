# batchline — every command the README shows lives here.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin

.PHONY: setup run demo test test-unit test-integration test-e2e lint format bench clean

## setup: create .venv and install batchline with the local stack and dev tools
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[local,dev]'
	@touch $@

## run: start the local stack, run the examples, show results, stay up until Ctrl-C
run: setup
	$(BIN)/batchline demo --stay

## demo: the same, non-interactive; exits non-zero unless every example is right
demo: setup
	$(BIN)/batchline demo

## test: unit, integration (emulators) and end-to-end (whole local stack) tests
test: setup
	$(PY) -m pytest

test-unit: setup
	$(PY) -m pytest tests/unit

test-integration: setup
	$(PY) -m pytest tests/integration

test-e2e: setup
	$(PY) -m pytest tests/e2e

## lint: ruff (lint + format check) and mypy --strict on the package
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## bench: submit/collect throughput, peak RSS and cold import; writes bench/RESULTS.md
bench: setup
	$(PY) bench/run.py

clean:
	rm -rf .batchline .pytest_cache .mypy_cache .ruff_cache bench/.data
