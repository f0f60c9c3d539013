# zen_async: `make run` (the main job) and `make test` (lint, types, the whole suite) set up
# everything they need on a fresh machine, starting with the virtualenv in .venv, installed
# from the lock in requirements/ (`make lock` refreshes it).
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

LOCK := requirements
# pip reads this machine's own configuration (on CI machines: a local wheel of torch's CPU build).
PIP := $(BIN)/python -m pip install --quiet --require-hashes

.PHONY: help venv run health demo test test-latest lint typecheck unit bench reliability soak lock clean

help:
	@echo "make run    - the MCP server over HTTP on the embedded server (sets up .venv first)"
	@echo "make health - zen-async health against the configured (or embedded) server"
	@echo "make test   - ruff, mypy --strict and the whole test suite (sets up .venv first)"
	@echo "make test-latest - the same in .venv-latest, on the newest releases pyproject allows"
	@echo "make lock   - recompile requirements/*.txt (the lock) from pyproject.toml"
	@echo "make demo   - 1000 simulated agents through full lifecycles, with invariant checks"
	@echo "              (configured or embedded server; DEMO_ARGS='--agents 200' to change)"
	@echo "make reliability - the faults under a 1000-agent load; refreshes docs/reliability.md"
	@echo "make soak   - the randomized outage checker over SEEDS=500 seeds (about 1.7 h)"
	@echo "make bench  - every module in benchmarks/: results, summary, plots"
	@echo "              (BENCH_ARGS='--quick' for a smoke run, '--only core,agents', '--write-readme')"

# (Re)create the virtualenv from the lock when it is missing or the lock changed: every
# package at the version and hash requirements/dev.txt names, then zen_async itself.
$(STAMP): pyproject.toml $(LOCK)/dev.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) -r $(LOCK)/dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
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

# The suite on the newest releases the ranges in pyproject.toml allow (no lock), in a venv of
# its own: an upstream release that breaks us is found here first (CONTRIBUTING.md).
LATEST := .venv-latest
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager -e '.[dev]'
	$(LATEST)/bin/python -m pip list --format=freeze > $(LATEST)/versions.txt
	@grep -iE '^(redis|hiredis|mcp|pydantic|anyio|numpy)==' $(LATEST)/versions.txt
	$(LATEST)/bin/ruff check zen_async tests benchmarks
	$(LATEST)/bin/mypy
	$(LATEST)/bin/pytest -q

# The lock: requirements/{base,dev,bench}.txt for every platform, embeddings.txt (dev plus
# the embeddings extra) for Linux x86_64 with torch's CPU build from this machine's wheels.
UV_COMPILE := $(BIN)/uv pip compile pyproject.toml --quiet --generate-hashes \
	--python-version 3.11 --custom-compile-command 'make lock'
lock: $(STAMP)
	$(UV_COMPILE) --universal -o $(LOCK)/base.txt
	$(UV_COMPILE) --universal --extra dev -o $(LOCK)/dev.txt
	$(UV_COMPILE) --universal --extra bench -o $(LOCK)/bench.txt
	$(UV_COMPILE) --extra dev --extra embeddings --python-platform x86_64-manylinux_2_28 \
		--find-links /opt/wheels -c $(LOCK)/torch-cpu.txt -o $(LOCK)/embeddings.txt

# The randomized outage checker over more seeds than CI's fixed set (SEEDS=500: standalone
# seeds 1-500 and Sentinel seeds 1-20, about 1.7 h on 2 cores); WRITE_RELIABILITY_DOCS=1 also
# refreshes its table in docs/reliability.md.
SEEDS ?= 500
soak: $(STAMP)
	ZEN_SOAK_SEEDS=$(SEEDS) $(BIN)/pytest -q -p no:cacheprovider tests/faults/test_outage_checker.py

# The failover-under-load fault tests, writing their table into docs/reliability.md.
reliability: $(STAMP)
	WRITE_RELIABILITY_DOCS=1 $(BIN)/pytest -q tests/faults/test_failover_load.py

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(LATEST) .mypy_cache .pytest_cache .ruff_cache
