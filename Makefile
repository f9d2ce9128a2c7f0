# Two entry points a newcomer needs: `make example` and `make test`.
# Only python3 (3.11+), pip, make and git are assumed; uv is installed into .tools/ when absent.
SHELL := /bin/bash
PYTHON ?= python3
TOOLS := .tools
UV := $(or $(shell command -v uv 2>/dev/null),$(TOOLS)/bin/uv)
VENV := .venv
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: example test lint typecheck pytest sync docs docs-serve reliability-doc bench bench-quick bench-env bench-kubernetes

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

# The documentation site (mkdocs.yml): regenerate the generated pages, then build site/
# with --strict (a broken link or an unresolved reference fails). `make docs-serve` previews.
docs: sync
	$(VENV)/bin/python docs/plugins/build_hook_reference.py
	$(VENV)/bin/python docs/build_api_reference.py
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

docs-serve: docs
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

# Runs the fault matrix (tests/test_fault_matrix.py, a few minutes) and rewrites
# docs/reliability.md from its outcomes.
reliability-doc: sync
	$(VENV)/bin/python docs/build_reliability.py $(PYTEST_ARGS)

sync: $(UV)
	$(UV) sync --quiet --all-packages --all-extras --python $(PYTHON)

$(TOOLS)/bin/uv:
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv

# Benchmarks (bench/): Ray, Dask, joblib, moto and py-spy go into their own environment,
# bench/.venv, never into Skyward's dependencies. `make bench` rewrites docs/performance.md;
# `make bench-quick` runs the same code paths in under 2 minutes (BENCH_ARGS="--out x.md").
BENCH_VENV := bench/.venv

bench: bench-env bench-kubernetes
	$(BENCH_VENV)/bin/python bench/run.py $(BENCH_ARGS)

# The Kubernetes provider against SSH hosts (bench/kubernetes_vs_ssh.py, about 10 minutes): the
# test control plane and fake kubelets run from Skyward's own environment.
bench-kubernetes: sync
	bash tests/kube_build.sh >/dev/null
	$(VENV)/bin/python bench/kubernetes_vs_ssh.py

bench-quick: bench-env
	$(BENCH_VENV)/bin/python bench/run.py --quick $(BENCH_ARGS)

bench-env: $(BENCH_VENV)/.installed

$(BENCH_VENV)/.installed: bench/requirements.txt skyward-core/pyproject.toml skyward-aws/pyproject.toml skyward-integrations/pyproject.toml | $(UV)
	$(UV) venv --quiet --allow-existing --python $(PYTHON) $(BENCH_VENV)
	$(UV) pip install --quiet --python $(BENCH_VENV)/bin/python \
		-r bench/requirements.txt -e skyward-core -e skyward-aws -e skyward-integrations
	touch $@
