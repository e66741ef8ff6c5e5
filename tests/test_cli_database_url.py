"""A malformed RAILPROOF_DATABASE_URL (or --database-url) exits 2 with a message naming it, as
`db current` and `db upgrade` do, never a driver's traceback with exit 1: an unparseable URL,
a dialect railproof does not run on, text that is not UTF-8, or a `prepare_threshold` that is
not one is refused when the settings are read (storage.db.check_url)."""

from __future__ import annotations

import os
import uuid

import pytest
from sqlalchemy import create_engine, text

from tests.procs import base_env, cli
from tests.test_config_errors import cli as in_process
from tests.test_config_errors import env  # noqa: F401  (the fixture)
from verifier.storage.db import check_url

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
    proc_env = base_env(database_url=url, service_tokens='{"svc": ["alice"]}')
    out = cli(args, proc_env, timeout=60)
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


def test_a_database_url_that_is_not_utf8_is_refused_naming_it_and_nothing_is_made(
    env,  # noqa: F811
    tmp_path,
):
    # argv and the environment keep a byte that is not UTF-8 as a surrogate escape: `db
    # upgrade` made and migrated that file, which every other command then could not open.
    path = os.fsdecode(os.fsencode(tmp_path) + b"/rail\xff.db")
    env.setenv("RAILPROOF_DATABASE_URL", f"sqlite:///{path}")
    for args in (["db", "upgrade"], ["db", "current"], ["audit", "verify"], ["worker", "--once"]):
        r = in_process(*args)
        assert r.exit_code == 2, (args, r.exit_code, r.output)
        assert "RAILPROOF_DATABASE_URL" in r.output and "not UTF-8" in r.output, (args, r.output)
        assert "Traceback" not in r.output
    assert not os.path.exists(os.fsencode(path)), "refused, yet the file was made"


def test_a_prepare_threshold_of_other_digits_is_refused():
    # "²".isdigit() is true, and int() refused it with its own message.
    with pytest.raises(ValueError, match="prepare_threshold: a whole number"):
        check_url("postgresql+psycopg://postgres@127.0.0.1:1/railproof_x?prepare_threshold=²")
