# Two commands set everything up on a fresh machine:
#   make run    install, train on the built-in digits data, export the bundle to models/, serve it on :8000
#   make test   install, lint, run the test suite
# Each creates .venv when it is missing and (re)installs when pyproject.toml changes.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MODELS ?= models
HOST ?= 127.0.0.1
PORT ?= 8000
# On a machine without an NVIDIA GPU, pin torch to its CPU build (constraints/cpu.txt).
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
CONSTRAINTS := $(if $(HAS_GPU),,-c constraints/cpu.txt)
# Optional extra index for torch, e.g. https://download.pytorch.org/whl/cpu on a CPU machine elsewhere.
TORCH_INDEX ?=
PIP_INDEX := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX),)
STAMP := $(VENV)/.installed

.PHONY: install run train test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml constraints/cpu.txt | $(BIN)/python
	@echo "installing into $(VENV) ($(if $(HAS_GPU),GPU found: default torch build,no GPU: CPU torch from constraints/cpu.txt))"
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(CONSTRAINTS) $(PIP_INDEX) -e '.[train,serve,dev]'
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(BIN)/vae-train --data builtin:digits --name digits --out $(MODELS)

run: train
	$(BIN)/vae-serve --host $(HOST) --port $(PORT) --repository $(MODELS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
