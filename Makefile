# Omni: `make run` (embedded, no servers) and `make test` (everything, real Kafka/PostgreSQL/Redis).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: bench-full bench-smoke help lint mutation run run-kafka test test-unit soak services-up services-down tools bench clean
.DEFAULT_GOAL := help

help:  ## This list (every target with what it does)
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:[^#]*## /\t/' | awk -F'\t' '{printf "%-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)  ## Embedded mode on http://127.0.0.1:8000 (state in $OMNI_DATA_DIR, default .omni-data)
	$(BIN)/omni serve --host 127.0.0.1 --port 8000

services-up:  ## Kafka, PostgreSQL, Redis and stripe-mock, unless their URLs point at running ones
	bash ops/services/up.sh

tools:  ## What tests drive besides the services: headless Chromium (Debian's package) for the pages Omni serves, promtool for the rules
	bash ops/services/chromium.sh
	bash ops/services/promtool.sh >/dev/null

services-down:  ## Stop the services services-up started (the data stays in .run/ for the next start)
	bash ops/services/down.sh

lint: $(STAMP)  ## ruff: the lint rules and the formatting of pyproject.toml
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# Bytecode caches are kept even where PYTHONDONTWRITEBYTECODE is set: each worker collects in 9 s, not
# 21, and each of the hundreds of processes the tests start imports Omni without compiling it.
test: $(STAMP) lint services-up tools  ## Lint, then the whole suite against real services
	eval "$$(bash ops/services/env.sh)" && unset PYTHONDONTWRITEBYTECODE && OMNI_REQUIRE_SERVICES=1 $(BIN)/python -m pytest -q -p no:cacheprovider -n 3 --dist loadfile --no-loadscope-reorder --durations=15

soak: $(STAMP) services-up  ## Long fault-injection runs (OMNI_SOAK_EVENTS, OMNI_SOAK_KILLS)
	eval "$$(bash ops/services/env.sh)" && OMNI_REQUIRE_SERVICES=1 $(BIN)/python -m pytest -q -p no:cacheprovider -m soak

test-unit: $(STAMP)  ## The unit tests alone (no services)
	$(BIN)/python -m pytest -q tests/unit

run-kafka: $(STAMP) services-up  ## Kafka mode: relay and worker in the background, API in the foreground
	eval "$$(bash ops/services/env.sh)" && export OMNI_MODE=kafka && \
	  mkdir -p .omni-data && { test -s .omni-data/gdpr_master_key || (umask 077; $(BIN)/omni gdpr-master-key > .omni-data/gdpr_master_key); } && \
	  chmod 600 .omni-data/gdpr_master_key && export OMNI_GDPR_MASTER_KEY=$$(cat .omni-data/gdpr_master_key) && \
	  { test -s .omni-data/admin_key || (umask 077; $(BIN)/omni admin-key --new > .omni-data/admin_key); } && \
	  chmod 600 .omni-data/admin_key && export OMNI_ADMIN_KEY=$$(cat .omni-data/admin_key) && \
	  ( $(BIN)/omni relay & OMNI_WORKER_METRICS_PORT=9400 $(BIN)/omni worker & trap 'kill 0' EXIT; $(BIN)/omni serve --host 127.0.0.1 --port 8000 )

bench: $(STAMP) services-up  ## Benchmarks (not part of `make test`), at sizes that take about 10 minutes
	eval "$$(bash ops/services/env.sh)" && $(BIN)/python -m ops.bench.run

bench-smoke: $(STAMP) services-up  ## Every benchmark at a tiny size, reports to a temporary folder (about a minute)
	eval "$$(bash ops/services/env.sh)" && OMNI_REQUIRE_SERVICES=1 $(BIN)/python -m pytest -q -p no:cacheprovider -m bench_smoke

bench-full: $(STAMP) services-up  ## Benchmarks at the sizes the README reports (10M-event queries, 1M-event replay and close; about 60 minutes)
	eval "$$(bash ops/services/env.sh)" && BENCH_QUERY_LATENCY_EVENTS=10000000 BENCH_REPLAY_EVENTS=1000000 \
		BENCH_CLOSE_PERIOD_EVENTS=1000000 BENCH_CLOSE_PERIOD_TENANTS=100,1000,10000 \
		$(BIN)/python -m ops.bench.run

MUTATION_VENV := .venv-mutation
MUTATION_STAMP := $(MUTATION_VENV)/.installed

# mutmut needs click >= 8.4.2, which faust-streaming's pin forbids, and the fast tests need no faust:
# a venv of its own with Omni's other dependencies, as .venv has them.
$(MUTATION_STAMP): pyproject.toml $(STAMP)
	$(PYTHON) -m venv $(MUTATION_VENV)
	$(MUTATION_VENV)/bin/pip install -q --upgrade pip
	$(MUTATION_VENV)/bin/pip install -q "mutmut==3.8.1"
	$(BIN)/pip freeze --exclude-editable | grep -v -i -E '^(faust-streaming|mode-streaming|click|mutmut)==' > $(MUTATION_VENV)/requirements.txt
	$(MUTATION_VENV)/bin/pip install -q -r $(MUTATION_VENV)/requirements.txt
	$(MUTATION_VENV)/bin/pip install -q --no-deps -e .
	touch $(MUTATION_STAMP)

# From scratch each time: mutmut keeps a verdict while its function's text is unchanged, but cannot
# see a test change (ops/mutation/equivalent.md says how to re-run only some mutants).
mutation: $(MUTATION_STAMP)  ## Mutation testing of the core against the fast tests ([tool.mutmut] in pyproject.toml); not part of `make test`
	rm -rf mutants
	time $(MUTATION_VENV)/bin/mutmut run --max-children 2
	$(MUTATION_VENV)/bin/mutmut results

# The services first: removing .run/ under them left them running on deleted files, out of
# services-down's reach (their pid files gone with it).
clean: services-down  ## Stop the services, then remove embedded mode's data, the services' data and mutants
	rm -rf .omni-data .run mutants
