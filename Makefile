# zen_async: `make run` (the main job) and `make test` (lint, types, the whole suite) set up
# everything they need on a fresh machine, starting with the virtualenv in .venv.
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help venv run health demo test lint typecheck unit bench reliability clean

help:
	@echo "make run    - the MCP server over HTTP on the embedded server (sets up .venv first)"
	@echo "make health - zen-async health against the configured (or embedded) server"
	@echo "make test   - ruff, mypy --strict and the whole test suite (sets up .venv first)"
	@echo "make demo   - 1000 simulated agents through full lifecycles, with invariant checks"
	@echo "              (configured or embedded server; DEMO_ARGS='--agents 200' to change)"
	@echo "make reliability - the faults under a 1000-agent load; refreshes docs/reliability.md"
	@echo "make bench  - every module in benchmarks/: results, summary, plots, README table"
	@echo "              (BENCH_ARGS='--quick' for a smoke run, '--only core,agents')"

# (Re)create the virtualenv when it is missing or pyproject.toml changed.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

# The main job: the MCP server over streamable HTTP on 127.0.0.1, on the embedded server.
run: $(STAMP)
	REDIS_EMBEDDED=true $(BIN)/zen-async serve --transport http

health: $(STAMP)
	$(BIN)/zen-async health

# The 1000-agent demo, in a tenant of its own on the configured (or embedded) server.
demo: $(STAMP)
	$(BIN)/zen-async demo $(DEMO_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check zen_async tests benchmarks
	$(BIN)/ruff format --check zen_async tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q

test: lint typecheck unit

# The failover-under-load fault tests, writing their table into docs/reliability.md.
reliability: $(STAMP)
	WRITE_RELIABILITY_DOCS=1 $(BIN)/pytest -q tests/faults/test_failover_load.py

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
