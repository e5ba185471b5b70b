# One command each, on a fresh machine with Python 3.11:
#   make run         set up, make the model if models/ has none, serve the page
#   DEMO=1 make run  the same on random test weights, where ImageNet's cannot be had
#   make test        set up and run the tests
#   make test-fast   the tests but the slow ones (conversions, emulation, browser, balancer)
#   make lock        refresh requirements.txt and requirements-dev.txt from the .in lists
#   make arm64-root  prepare the ARM64 emulation (Debian, root): tests and int8 gate use it
SHELL := bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL := models/inception_v3.onnx
DEMO_MODEL := .demo/inception_v3.onnx
ARM64_ROOT ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/slim-inception/arm64
# `make lock LOCK_FLAGS=--upgrade` moves every package to its newest release;
# `LOCK_FLAGS="--upgrade-package starlette"` one. Without, pins stay where they are.
LOCK_FLAGS ?=
LOCK := $(PY) -m uv pip compile --quiet --universal --generate-hashes \
	--python-version $(shell cat .python-version) --custom-compile-command "make lock" $(LOCK_FLAGS)

.PHONY: run test test-fast lint lock arm64-root

# Every package pinned and hashed: pip refuses anything the lock does not name.
$(VENV)/.runtime: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r requirements.txt
	$(PY) -m pip check
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(PY) -m pip install --quiet --require-hashes -r requirements-dev.txt
	$(PY) -m pip check
	touch $@

# The dev lock takes the runtime lock as constraints: both install the same versions.
lock: $(VENV)/.dev
	$(LOCK) requirements.in -o requirements.txt
	$(LOCK) requirements-dev.in --constraint requirements.txt -o requirements-dev.txt

arm64-root: $(VENV)/.dev
	ARM64_ROOT=$(ARM64_ROOT) $(PY) -m conversion.arm64_root

$(MODEL): | $(VENV)/.dev
	$(PY) convert_model.py --output $@ || { \
	  echo "No model was made. For a demo on random test weights instead: DEMO=1 make run" >&2; \
	  exit 1; }

# Random weights never go into models/: the demo model lives in .demo/ (git-ignored).
$(DEMO_MODEL): | $(VENV)/.dev
	$(PY) convert_model.py --weights random --seed 0 --output $@

ifeq ($(DEMO),1)
run: $(VENV)/.runtime $(DEMO_MODEL)
	MODEL_PATH=$(DEMO_MODEL) $(PY) app.py
else
run: $(VENV)/.runtime $(MODEL)
	$(PY) app.py
endif

test: $(VENV)/.dev
	$(PY) -m pytest

test-fast: $(VENV)/.dev
	$(PY) -m pytest -m "not slow"

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
