# One entry per routine task. A newcomer needs two of them:
#   make run    install everything, then serve the app on SQLite + the bundled model
#   make test   install everything, then run the whole default test suite
#
# Installation is cached: .venv/.installed is rebuilt only when pyproject.toml (or the system
# dependency script) changes, so a second `make test` goes straight to pytest.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Extra pytest arguments, e.g. `make test PYTEST_ARGS="-x tests/test_packaging.py"`.
PYTEST_ARGS ?=
LINT_PATHS := $(wildcard app ml tests bench)

.PHONY: help install system-deps run test test-slow lint format bench clean

help:
	@echo "make run        install, then start the app (cxr-review serve) on CXR_HOST:CXR_PORT"
	@echo "make test       install, then run the test suite (everything except slow tests)"
	@echo "make test-slow  run only the slow tests"
	@echo "make lint       ruff check, ruff format --check, mypy"
	@echo "make format     apply ruff format and ruff's safe fixes"
	@echo "make bench      run every bench/*.py benchmark (prints numbers)"
	@echo "make install    create $(VENV) with $(PYTHON) and install the project with [dev] extras"
	@echo "make clean      remove $(VENV) and build/cache folders"

# Cheap when everything is present (dpkg queries only), so it runs on every install/test/run:
# a machine that lost a package gets it back without rebuilding the venv.
system-deps:
	@PYTHON=$(PYTHON) scripts/install-system-deps.sh

install: system-deps $(STAMP)

# torch/torchvision resolve from the package index (torch>=2.14 in pyproject.toml), never from a
# local wheel directory: no --find-links here on purpose.
$(STAMP): pyproject.toml scripts/install-system-deps.sh
	@if [[ ! -x $(BIN)/python ]]; then echo "creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); fi
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(STAMP)

run: install
	$(BIN)/cxr-review serve

test: install
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

test-slow: install
	$(BIN)/pytest -m slow $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy app ml

format: install
	$(BIN)/ruff format $(LINT_PATHS)
	$(BIN)/ruff check --fix $(LINT_PATHS)

bench: install
	@shopt -s nullglob; scripts=(bench/[!_]*.py); \
	if [[ $${#scripts[@]} -eq 0 ]]; then echo "no bench/*.py scripts"; exit 1; fi; \
	for script in "$${scripts[@]}"; do echo "== $$script"; $(BIN)/python "$$script"; done

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
