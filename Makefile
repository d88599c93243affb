# Two commands on a fresh machine: `make run` and `make test`. Everything else is set up on the way.
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.9
UV := .tools/bin/uv
VENV := .venv
GRAPH ?= graphs/default.yaml
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: run test lint typecheck pytest setup bench-setup bench clean schema

# uv lives in its own small venv so that `uv sync` (which makes .venv exactly match the lock) never removes it.
$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.synced: $(UV) uv.lock pyproject.toml
	$(UV) sync --frozen
	@touch $@

setup: $(VENV)/.synced

run: setup
	$(VENV)/bin/ah run $(GRAPH)

test: setup lint typecheck pytest

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: setup
	$(VENV)/bin/mypy

pytest: setup
	$(VENV)/bin/pytest

schema: setup
	$(VENV)/bin/ah schema --write schemas/graph.schema.json

# The engine benchmark runs Pipecat beside ah; Pipecat comes only with the bench extra, in its own venv
# so that `uv sync` for the tests (which makes .venv match the lock exactly) never removes it.
.venv-bench/.synced: $(UV) uv.lock pyproject.toml
	UV_PROJECT_ENVIRONMENT=.venv-bench $(UV) sync --frozen --extra bench
	@touch $@

bench-setup: .venv-bench/.synced

bench: bench-setup
	.venv-bench/bin/python experiments/engine_bench.py

clean:
	rm -rf .venv .venv-bench .tools .mypy_cache .ruff_cache .pytest_cache
