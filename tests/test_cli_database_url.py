"""A malformed RAILPROOF_DATABASE_URL (or --database-url) exits 2 with a message naming it, as
`db current` and `db upgrade` do, never a driver's traceback with exit 1: an unparseable URL,
a dialect railproof does not run on, or a `prepare_threshold` that is not one is refused when
the settings are read (storage.db.check_url)."""

from __future__ import annotations

import os
import uuid

import pytest
from sqlalchemy import create_engine, text

from tests.procs import base_env, cli

PG_URL = os.environ.get("RAILPROOF_TEST_POSTGRES_URL")

BAD_URLS = {
    "unparseable": "not-a-database-url",
    "empty": "",
    "foreign_dialect": "mysql://u@127.0.0.1:1/x",
    "bad_prepare_threshold": "postgresql+psycopg://postgres@127.0.0.1:1/"
    "railproof_x?prepare_threshold=abc",
}
COMMANDS = {
    "worker": ["worker", "--once"],
    "audit_verify": ["audit", "verify"],
    "audit_checkpoint": ["audit", "checkpoint"],
    "serve": ["serve", "--port", "18050"],
}


@pytest.mark.parametrize("url", list(BAD_URLS.values()), ids=list(BAD_URLS))
@pytest.mark.parametrize("args", list(COMMANDS.values()), ids=list(COMMANDS))
def test_a_malformed_database_url_is_a_usage_error_not_a_traceback(args, url):
    env = base_env(database_url=url, service_tokens='{"svc": ["alice"]}')
    out = cli(args, env, timeout=60)
    message = out.stdout + out.stderr
    assert "Traceback" not in message, message[-1500:]
    assert out.returncode == 2, (out.returncode, message[-800:])
    assert "database" in message.lower(), message


@pytest.mark.postgres
def test_bench_with_a_bad_prepare_threshold_is_a_usage_error():
    # check_database_url (verifier/tools/bench.py) lets the URL through; the run then creates
    # the database and dies in make_engine's _prepare_threshold with a traceback.
    if not PG_URL:
        pytest.skip("no RAILPROOF_TEST_POSTGRES_URL")
    name = "railproof_bench_url_" + uuid.uuid4().hex[:8]
    url = PG_URL.rpartition("/")[0] + f"/{name}?prepare_threshold=abc"
    try:
        out = cli(["bench", "--proofs", "10", "--database-url", url], base_env(), timeout=120)
    finally:
        admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    message = out.stdout + out.stderr
    assert "Traceback" not in message, message[-1500:]
    assert out.returncode == 2 and "--database-url" in message, (out.returncode, message[-800:])
