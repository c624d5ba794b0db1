# Every target creates .venv when missing; `make test` and `make demo` are all a fresh machine needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCAL_STAMP := $(VENV)/.installed-local
# Where the real model (490 MB, assembled from PyPI) is kept between runs; ignored by git.
export XZATOMA_CACHE_DIR ?= $(CURDIR)/.cache

.PHONY: demo demo-local test test-real lint typecheck pytest package-check bench clean

# Extra arguments for pytest or the benchmarks: `make pytest ARGS="-k quota"`, `make bench ARGS=--quick`.
ARGS ?=

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[prometheus,otlp,cli,redis,ray,mcp,service,dev]'
	touch $(STAMP)

$(LOCAL_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[prometheus,otlp,cli,redis,ray,mcp,service,dev,local]'
	touch $(LOCAL_STAMP)

demo: $(STAMP)
	$(BIN)/xzatoma demo

# The demo's scenario on a real model served by llama.cpp on this machine (downloads it once).
demo-local: $(LOCAL_STAMP)
	$(BIN)/xzatoma demo --local

lint: $(STAMP)
	$(BIN)/ruff check xzatoma tests examples bench
	$(BIN)/ruff format --check xzatoma tests examples bench

typecheck: $(STAMP)
	$(BIN)/mypy --strict xzatoma tests

pytest: $(STAMP)
	./.ci/ensure-prometheus
	./.ci/ensure-redis
	$(BIN)/pytest $(ARGS)

# The sdist and wheel built, checked (twine check --strict), installed in a fresh virtualenv
# (not editable) and run from outside the checkout: .ci/package-check. About 30 s.
package-check: $(STAMP)
	$(BIN)/python .ci/package-check

test: lint typecheck pytest package-check

# The real small model in the test suite (tests/test_real_model.py); CI runs it after `make test`.
test-real: $(LOCAL_STAMP)
	$(BIN)/pytest -m real_model -rP tests/test_real_model.py tests/test_local_model.py $(ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench $(ARGS)
	$(BIN)/python bench/load_metrics.py --requests 5000 --clients 50 --subagents 1000
	$(BIN)/python bench/http_bench.py
	./.ci/ensure-redis
	$(BIN)/python bench/distributed.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build dist  # .cache (the model) stays
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
