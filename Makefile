# Two entry points that work on a fresh machine with only Python 3.11+, make and git:
#   make demo   sets up .venv and runs the main job
#   make test   sets up .venv and runs lint, type checks and the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest bench torture clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,web]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m kvmodel demo

test: $(STAMP) lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check kvmodel tests examples benchmarks
	$(BIN)/ruff format --check kvmodel

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/kv_bench.py

torture: $(STAMP)
	KVMODEL_TORTURE=long $(BIN)/pytest -q -s tests/torture

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
