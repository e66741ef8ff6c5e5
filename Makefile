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

.PHONY: serve test lint worker demo clean bench

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(RUNTIME_STAMP): pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install -q -e .
	touch $@

$(DEV_STAMP): pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install -q -e ".[dev]"
	touch $@ $(RUNTIME_STAMP)

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

test: $(DEV_STAMP)
	@url="$${RAILPROOF_TEST_POSTGRES_URL:-$$($(BIN)/python scripts/find_postgres.py)}"; \
	if [ -z "$$url" ]; then echo "note: no PostgreSQL answers on 127.0.0.1:5432; PostgreSQL tests will be skipped (set RAILPROOF_TEST_POSTGRES_URL)"; fi; \
	RAILPROOF_TEST_POSTGRES_URL="$$url" $(BIN)/pytest $(PYTEST_ARGS)

# Lint: ruff (rules and format) over the whole tree; mypy as [tool.mypy] in pyproject says
# (strict on rails/, registry/ and verifier/storage/repo/, the rest of verifier/ relaxed).
LINT_PATHS := rails registry verifier tests scripts

lint: $(DEV_STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy

bench: $(DEV_STAMP)
	$(BIN)/railproof bench --json

clean:
	rm -f railproof.db railproof.db-wal railproof.db-shm
