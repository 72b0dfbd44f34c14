# Two entry points that work on a fresh machine with only Python 3.11+, make and git:
#   make demo   sets up .venv and runs the main job
#   make test   sets up .venv and runs lint, type checks, the whole test suite and the docs build
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ACCEL := $(VENV)/.accelerator
# Tests that exercise the codecs, listings and engines once more on the
# pure-Python path (the property tests in test_accelerator.py compare both).
PURE_TESTS := tests/test_keys.py tests/test_values.py tests/test_kv_facade.py \
	tests/test_kv_stateful.py tests/test_sqlite_hostile_rows.py tests/test_hostile_values.py \
	tests/test_orm_listing.py

.PHONY: demo test lint typecheck pytest pytest-pure docs docs-serve browse-screenshots bench torture clean

# The editable install is in setuptools' "compat" mode: a plain path entry for
# the repository in site-packages, which mypy and other static tools follow
# (the default mode installs an import hook that they cannot see through).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,web,cli,docs,deno,connect,browse]' --config-settings editable_mode=compat
	touch $(STAMP)

# The compiled accelerator, rebuilt in place whenever its source changes (the
# editable install built it once). Without a C compiler this warns and leaves
# kvmodel on its pure-Python code.
$(ACCEL): $(STAMP) kvmodel/_speedups.pyx setup.py
	$(BIN)/python setup.py -q build_ext --inplace
	touch $(ACCEL)

demo: $(STAMP) $(ACCEL)
	$(BIN)/python -m kvmodel demo

test: $(STAMP) lint typecheck docs pytest pytest-pure

lint: $(STAMP)
	$(BIN)/ruff check kvmodel tests benchmarks docs/hooks
	$(BIN)/ruff format --check kvmodel

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) $(ACCEL)
	$(BIN)/pytest -q

pytest-pure: $(STAMP)
	KVMODEL_PURE_PYTHON=1 $(BIN)/pytest -q -p no:cacheprovider $(PURE_TESTS)

# The documentation site, built into site/; --strict turns every warning (a
# broken link, an unknown reference, a page missing from the navigation) into a failure.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

docs-serve: $(STAMP)
	$(BIN)/mkdocs serve

# The screenshots of docs/how-to/browse-your-data.md, taken with headless Chromium
# (Debian's chromium and chromium-driver packages) on a demo store.
browse-screenshots: $(STAMP)
	$(BIN)/python -m kvmodel.cli.browse.screenshots --out docs/img

bench: $(STAMP) $(ACCEL)
	$(BIN)/python benchmarks/kv_bench.py

torture: $(STAMP)
	KVMODEL_TORTURE=long $(BIN)/pytest -q -s tests/torture

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache site build
	rm -f kvmodel/_speedups.c kvmodel/_speedups.*.so
