"""A database URL is never printed with its password.

A password given as a query parameter (`postgresql://u@host/db?password=…`, which libpq takes)
was printed by `db current`, `serve` and `worker`, named in `bench`'s errors and written into
the rehearsal evidence: each hid only the user information's password. Every place that shows
a database URL now goes through `storage.db.shown_url`, which hides it wherever it is written."""

from __future__ import annotations

import json
import uuid

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from tests.conftest import PG_URL, _pg_admin, _with_db
from tests.live_server import closed_port
from tests.procs import base_env, cli, free_port
from verifier.cli.main import app as cli_app
from verifier.storage.db import shown_url
from verifier.tools.bench import check_database_url

PASSWORD = "SekretDbPassw0rd"


@pytest.mark.parametrize(
    "url, shown",
    [
        (
            f"postgresql+psycopg://app:{PASSWORD}@db.internal:5432/pay",
            "postgresql+psycopg://app:***@db.internal:5432/pay",
        ),
        (
            f"postgresql+psycopg://app@db.internal/pay?password={PASSWORD}&sslmode=require",
            "postgresql+psycopg://app@db.internal/pay?password=***&sslmode=require",
        ),
        (
            f"postgresql://app@db.internal/pay?sslpassword={PASSWORD}&api_token={PASSWORD}",
            "postgresql://app@db.internal/pay?sslpassword=***&api_token=***",
        ),
        ("sqlite:///./railproof.db", "sqlite:///./railproof.db"),
        (f"not a URL {PASSWORD}", "<not a database URL>"),
    ],
)
def test_a_database_url_is_shown_without_its_password(url, shown):
    assert shown_url(url) == shown


@pytest.mark.parametrize(
    "args",
    [["db", "current"], ["serve", "--port", "PORT"], ["worker", "--once"]],
    ids=["db_current", "serve", "worker"],
)
def test_a_database_password_in_the_url_query_is_never_printed(args):
    url = (
        f"postgresql+psycopg://postgres@127.0.0.1:{closed_port()}/railproof_fix2_x"
        f"?password={PASSWORD}"
    )
    env = base_env(database_url=url, service_tokens='{"svc-redaction": ["alice"]}')
    out = cli([str(free_port()) if a == "PORT" else a for a in args], env, timeout=60)
    message = out.stdout + out.stderr
    assert out.returncode == 2, message  # the database cannot be opened: refused
    assert "cannot open postgresql+psycopg://postgres@127.0.0.1:" in message, message
    assert "password=***" in message and PASSWORD not in message, message


def test_the_bench_names_a_database_it_cannot_reach_without_the_password():
    url = f"postgresql+psycopg://postgres@127.0.0.1:{closed_port()}/bench?password={PASSWORD}"
    with pytest.raises(ValueError, match="cannot connect to") as e:
        check_database_url(url)
    assert PASSWORD not in str(e.value)


@pytest.mark.postgres
def test_rehearsal_evidence_hides_a_password_given_in_the_url_query(tmp_path):
    if not PG_URL:
        pytest.skip("PostgreSQL tests skipped: set RAILPROOF_TEST_POSTGRES_URL")
    name = "railproof_fix2_rehearsal_" + uuid.uuid4().hex[:8]
    admin = _pg_admin()
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        url = _with_db(PG_URL, name) + f"?password={PASSWORD}"  # trust auth: ignored there
        out = tmp_path / "evidence.json"
        r = CliRunner().invoke(
            cli_app,
            [
                "rehearse",
                "--database-url",
                url,
                "--out",
                str(out),
                "--incident-id",
                "INC-1",
                "--operator-reason",
                "password in the query",
            ],
        )
        assert r.exit_code == 0, r.output
        evidence = out.read_text()
        assert json.loads(evidence)["database"].endswith(f"/{name}?password=***")
        assert PASSWORD not in evidence
        assert PASSWORD not in r.output
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
