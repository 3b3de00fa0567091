# Two commands set everything up on a fresh machine:
#   make run    install, train on the built-in digits data, export the bundle to models/, serve it on :8000
#   make test   install (and Debian's Chromium for the page tests, where apt-get can), lint, run the test suite
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

.PHONY: install run train test lint browser clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml constraints/cpu.txt | $(BIN)/python
	@echo "installing into $(VENV) ($(if $(HAS_GPU),GPU found: default torch build,no GPU: CPU torch from constraints/cpu.txt))"
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(CONSTRAINTS) $(PIP_INDEX) -e '.[train,serve,dev]'
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(BIN)/vae-train --data builtin:digits --name digits --out $(MODELS) --resume auto

run: train
	$(BIN)/vae-serve --host $(HOST) --port $(PORT) --repository $(MODELS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The page tests drive a headless Chromium; they skip when none is installed. Installed here when missing and
# apt-get can (root on Debian/Ubuntu); anywhere else, install a chromium package by hand to run them.
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian's chromium for the page tests"; \
		{ DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "could not install chromium: the page tests will skip"; \
	else echo "no chromium and no apt-get as root: the page tests will skip"; fi

test: lint browser
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
