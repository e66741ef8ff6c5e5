# railproof — two commands on a fresh machine:
#   make serve   set up, migrate the SQLite file, serve on 127.0.0.1:$(PORT) with recorded chains
#   make test    set up with dev dependencies, run the whole suite (SQLite and PostgreSQL)
#   make lint    ruff and mypy (strict) on rails/ and registry/

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PORT   ?= 8000
PYTEST_ARGS ?=

RUNTIME_STAMP := $(VENV)/.runtime-installed
DEV_STAMP     := $(VENV)/.dev-installed

# The offline demo deployment: recorded chains, a clock pinned to when the demo payment was
# recorded, demo tokens, a demo audit key, and the demo treasury. Override any of them in the
# environment.
DEMO_ENV := RAILPROOF_DATABASE_URL=$${RAILPROOF_DATABASE_URL:-sqlite:///./railproof.db} \
	RAILPROOF_CHAIN=$${RAILPROOF_CHAIN:-cassette} \
	RAILPROOF_CLOCK=$${RAILPROOF_CLOCK-2026-01-01T00:00:00Z} \
	RAILPROOF_SERVICE_TOKENS=$${RAILPROOF_SERVICE_TOKENS:-'{"demo-service-token": ["demo-owner"]}'} \
	RAILPROOF_STAFF_TOKENS=$${RAILPROOF_STAFF_TOKENS:-'{"demo-staff-token": "demo-operator", "demo-staff-token-2": "demo-approver"}'} \
	RAILPROOF_AUDIT_KEY=$${RAILPROOF_AUDIT_KEY-$$([ -n "$${RAILPROOF_AUDIT_KEY_FILE:-}" ] || echo demo-audit-key)} \
	RAILPROOF_TREASURY_SOLANA_USDC=$${RAILPROOF_TREASURY_SOLANA_USDC:-C1bL1CaQ6PjLKZyYRn11ZtydLqEfGUxdcvUS3frx8ocg}

.PHONY: serve test lint worker demo clean bench bench-pg clients lock

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# The pip-compile lock files (exact versions, hashes checked; `make lock` refreshes them) are
# installed when present, then the project itself without resolving again.
RUNTIME_LOCK := requirements.txt
DEV_LOCK     := requirements-dev.txt
LOCK_FLAGS   := --allow-unsafe --generate-hashes --strip-extras --no-emit-index-url --no-emit-find-links

$(RUNTIME_STAMP): pyproject.toml $(wildcard $(RUNTIME_LOCK)) | $(VENV)/bin/python
	if [ -f $(RUNTIME_LOCK) ]; then \
		$(BIN)/pip install -q --require-hashes -r $(RUNTIME_LOCK) && $(BIN)/pip install -q --no-deps -e .; \
	else $(BIN)/pip install -q -e .; fi
	touch $@

$(DEV_STAMP): pyproject.toml $(wildcard $(DEV_LOCK)) | $(VENV)/bin/python
	if [ -f $(DEV_LOCK) ]; then \
		$(BIN)/pip install -q --require-hashes -r $(DEV_LOCK) && $(BIN)/pip install -q --no-deps -e ".[dev]"; \
	else $(BIN)/pip install -q -e ".[dev]"; fi
	touch $@ $(RUNTIME_STAMP)

# Re-resolve the lock files from pyproject.toml, keeping every pin that still fits.
lock: $(DEV_STAMP)
	$(BIN)/pip-compile -q $(LOCK_FLAGS) -o $(RUNTIME_LOCK) pyproject.toml
	$(BIN)/pip-compile -q $(LOCK_FLAGS) --extra dev -o $(DEV_LOCK) pyproject.toml

serve: $(RUNTIME_STAMP)
	@env $(DEMO_ENV) $(BIN)/railproof db upgrade
	@echo "railproof on http://127.0.0.1:$(PORT) — chain: recorded cassettes (offline)"
	@echo "  service token: demo-service-token (owner demo-owner)"
	@echo "  staff tokens:  demo-staff-token (demo-operator), demo-staff-token-2 (demo-approver)"
	@echo "  the CLI finds this server at RAILPROOF_API_BASE_URL, else http://127.0.0.1:\$$PORT (8000)"
	@echo "  try:  PORT=$${PORT:-$(PORT)} RAILPROOF_STAFF_TOKEN=demo-staff-token $(BIN)/railproof demo"
	@env $(DEMO_ENV) PORT=$${PORT:-$(PORT)} $(BIN)/railproof serve --host 127.0.0.1

worker: $(RUNTIME_STAMP)
	@env $(DEMO_ENV) $(BIN)/railproof worker

demo: $(RUNTIME_STAMP)
	@RAILPROOF_STAFF_TOKEN=$${RAILPROOF_STAFF_TOKEN:-demo-staff-token} $(BIN)/railproof demo

# The TypeScript types' generator (openapi-typescript) at the version package-lock.json pins;
# without npm the suite's TypeScript tests skip, saying so.
TS_CLIENT := clients/typescript
TS_STAMP  := $(TS_CLIENT)/node_modules/.package-lock.json
NPM       := $(shell command -v npm 2>/dev/null)

$(TS_STAMP): $(TS_CLIENT)/package-lock.json
	cd $(TS_CLIENT) && npm ci --no-audit --no-fund
	touch $@

# After an API change: the OpenAPI document (clients/openapi.json) and the TypeScript types.
clients: $(DEV_STAMP) $(TS_STAMP)
	$(BIN)/python scripts/gen_clients.py

test: $(DEV_STAMP) $(if $(NPM),$(TS_STAMP))
	@url="$${RAILPROOF_TEST_POSTGRES_URL:-$$($(BIN)/python scripts/find_postgres.py)}"; \
	if [ -z "$$url" ]; then echo "note: no PostgreSQL answers on 127.0.0.1:5432; PostgreSQL tests will be skipped (set RAILPROOF_TEST_POSTGRES_URL)"; fi; \
	RAILPROOF_TEST_POSTGRES_URL="$$url" $(BIN)/python scripts/run_tests.py $(PYTEST_ARGS)

# Lint: ruff (rules and format) over the whole tree; mypy as [tool.mypy] in pyproject says
# (strict on rails/, registry/ and verifier/storage/repo/, the rest of verifier/ relaxed).
LINT_PATHS := rails registry verifier tests scripts clients/python

lint: $(DEV_STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy
	$(BIN)/mypy --strict clients/python/railproof_client

bench: $(DEV_STAMP)
	$(BIN)/railproof bench --json

# PostgreSQL figures in one run (docs/bench.md, "PostgreSQL and HTTP"): in-process against
# SQLite (--compare), the API over HTTP with 8 clients and 2 API processes (and SQLite with
# one), and the worker. BENCH_PG_URL must name a disposable database (created if missing).
BENCH_PG_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/railproof_bench_pg
bench-pg: $(DEV_STAMP)
	$(BIN)/railproof bench --proofs 1000 --compare --http --clients 8 --api-workers 2 --worker \
		--database-url $(BENCH_PG_URL) --json

clean:
	rm -f railproof.db railproof.db-wal railproof.db-shm
