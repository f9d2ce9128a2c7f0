# Two entry points a newcomer needs: `make example` and `make test`.
# Only python3 (3.11+), pip, make and git are assumed; uv is installed into .tools/ when absent.
SHELL := /bin/bash
PYTHON ?= python3
TOOLS := .tools
UV := $(or $(shell command -v uv 2>/dev/null),$(TOOLS)/bin/uv)
VENV := .venv
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: example test lint typecheck pytest sync docs

example: sync
	$(VENV)/bin/python examples/hello.py

test: sync lint typecheck pytest

lint: sync
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: sync
	$(VENV)/bin/mypy

pytest: sync
	$(VENV)/bin/pytest $(PYTEST_ARGS)

docs: sync
	$(VENV)/bin/python docs/plugins/build_hook_reference.py

sync: $(UV)
	$(UV) sync --quiet --all-packages --all-extras --python $(PYTHON)

$(TOOLS)/bin/uv:
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv
