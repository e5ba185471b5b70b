# One command each, on a fresh machine with Python 3.11:
#   make run         set up, make the model if models/ has none, serve the page
#   DEMO=1 make run  the same on random test weights, where ImageNet's cannot be had
#   make test        set up and run the tests
SHELL := bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL := models/inception_v3.onnx
DEMO_MODEL := .demo/inception_v3.onnx

.PHONY: run test lint

$(VENV)/.runtime: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

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

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
