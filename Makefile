# `make demo` and `make test` bootstrap .venv themselves and are fast when it is already up to date.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kdbench-installed
# What this machine's local wheels provide; users elsewhere may install any torch>=2.4 instead.
TORCH := torch==2.14.1 torchvision==0.29.1
# Test processes (pytest-xdist); many tests wait on subprocesses, Slurm jobs or files, so 2 suit even 2 cores.
TEST_WORKERS ?= 2

.PHONY: demo test lint install clean-results

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/kdbench run experiments/demo.yaml
	$(BIN)/kdbench report experiments/demo.yaml --format all

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check kdbench methods tests benchmarks

clean-results:
	rm -rf results/*
