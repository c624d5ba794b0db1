# Every target creates .venv when missing; `make test` and `make demo` are all a fresh machine needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest bench clean

# Extra arguments for pytest or the benchmarks: `make pytest ARGS="-k quota"`, `make bench ARGS=--quick`.
ARGS ?=

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[prometheus,cli,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/xzatoma demo

lint: $(STAMP)
	$(BIN)/ruff check xzatoma tests examples bench
	$(BIN)/ruff format --check xzatoma tests examples bench

typecheck: $(STAMP)
	$(BIN)/mypy --strict xzatoma tests

pytest: $(STAMP)
	./.ci/ensure-prometheus
	$(BIN)/pytest $(ARGS)

test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/python -m bench $(ARGS)
	$(BIN)/python bench/load_metrics.py --requests 5000 --clients 50 --subagents 1000

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build dist
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
