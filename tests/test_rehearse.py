"""`railproof rehearse`: refuses production-like databases (exit 2, nothing migrated), and on
a disposable SQLite file or PostgreSQL scratch database runs the live rail end to end and
writes evidence whose checksums can be re-computed."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text
from typer.testing import CliRunner

from rails.base import canonical_json
from tests.conftest import PG_URL, _pg_admin, _with_db
from verifier.cli.main import app as cli_app
from verifier.core.config import REPO_FIXTURES
from verifier.tools.rehearse import disposable_reason

STEPS = [
    "migrate",
    "session",
    "proof",
    "verify",
    "finality",
    "dry_run",
    "apply",
    "entitlement_active",
    "apply_idempotent",
    "revoke",
    "rollback_session",
    "rollback_proof",
    "forced_rollback",
    "apply_after_rollback",
    "audit_chain",
    "assurance",
]


def rehearse(*args: str):
    return CliRunner().invoke(cli_app, ["rehearse", *args])


def check_evidence(path: Path) -> dict:
    ev = json.loads(path.read_text())
    assert ev["ok"] is True
    assert [s["name"] for s in ev["steps"]] == STEPS
    assert all(s["ok"] for s in ev["steps"]), [s for s in ev["steps"] if not s["ok"]]
    # Checksums: the cassettes replayed, and each response's canonical JSON.
    assert {c["path"] for c in ev["cassettes"]} == {
        "solana/generated/demo_payment.json",
        "solana/generated/usdc_reference_memo.json",
    }
    for c in ev["cassettes"]:
        assert c["sha256"] == hashlib.sha256((REPO_FIXTURES / c["path"]).read_bytes()).hexdigest()
    with_response = [s for s in ev["steps"] if s["response"] is not None]
    assert len(with_response) >= 14
    for s in with_response:
        assert s["response_sha256"] == hashlib.sha256(canonical_json(s["response"])).hexdigest()
        assert s["request"]["path"].startswith("/v1/")
    by = {s["name"]: s for s in ev["steps"]}
    assert by["proof"]["response"]["status"] == "verified"
    assert by["forced_rollback"]["status"] == 500
    assert '"receipt": null' in by["forced_rollback"]["detail"]
    assert by["revoke"]["response"]["status"] == "revoked"
    # No credential reaches the evidence.
    assert (
        "rehearsal-service-" not in path.read_text() and "rehearsal-staff-" not in path.read_text()
    )
    return ev


def test_rehearsal_on_sqlite(tmp_path):
    out = tmp_path / "evidence.json"
    r = rehearse("--database-url", f"sqlite:///{tmp_path}/rehearsal.db", "--out", str(out))
    assert r.exit_code == 0, r.output
    assert "rehearsal passed" in r.output
    ev = check_evidence(out)
    assert ev["database"].endswith("rehearsal.db")
    # Run again on the same database: it now holds data, so it is no longer disposable.
    r = rehearse(
        "--database-url",
        f"sqlite:///{tmp_path}/rehearsal.db",
        "--out",
        str(tmp_path / "again.json"),
    )
    assert r.exit_code == 2 and "already holds" in r.output
    assert not (tmp_path / "again.json").exists()


@pytest.mark.postgres
def test_rehearsal_on_postgres_scratch_database(tmp_path):
    if not PG_URL:
        pytest.skip("PostgreSQL tests skipped: set RAILPROOF_TEST_POSTGRES_URL")
    name = "railproof_rehearsal_" + uuid.uuid4().hex[:10]
    admin = _pg_admin()
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        out = tmp_path / "evidence.json"
        r = rehearse("--database-url", _with_db(PG_URL, name), "--out", str(out))
        assert r.exit_code == 0, r.output
        check_evidence(out)
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_production_like_sqlite_is_refused_and_nothing_is_created(tmp_path, monkeypatch):
    # A relative path in the working directory: what a production deployment's file is.
    monkeypatch.chdir(tmp_path)
    r = rehearse("--database-url", "sqlite:///./railproof.db", "--out", "ev.json")
    assert r.exit_code == 2
    assert "production-like" in r.output and "--i-understand-this-is-not-production" in r.output
    assert not (tmp_path / "railproof.db").exists() and not (tmp_path / "ev.json").exists()


@pytest.mark.postgres
def test_production_like_postgres_is_refused_and_nothing_is_migrated(tmp_path):
    if not PG_URL:
        pytest.skip("PostgreSQL tests skipped: set RAILPROOF_TEST_POSTGRES_URL")
    name = "railproof_ledger_" + uuid.uuid4().hex[:10]  # no disposable word in the name
    admin = _pg_admin()
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        url = _with_db(PG_URL, name)
        r = rehearse("--database-url", url, "--out", str(tmp_path / "ev.json"))
        assert r.exit_code == 2 and "production-like" in r.output, r.output
        eng = create_engine(url)
        try:
            assert inspect(eng).get_table_names() == []  # not even alembic_version
        finally:
            eng.dispose()
        assert not (tmp_path / "ev.json").exists()
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.mark.parametrize(
    "url,disposable",
    [
        ("sqlite:////tmp/x/rehearsal.db", True),
        ("sqlite:///./railproof.db", False),
        ("sqlite:////var/lib/railproof/railproof.db", False),
        ("sqlite://", False),
        ("sqlite:///:memory:", False),
        ("postgresql+psycopg://postgres@127.0.0.1:5432/railproof_rehearsal", True),
        ("postgresql://u:pw@localhost/scratch_1", True),
        ("postgresql+psycopg://postgres@127.0.0.1:5432/TMP_db", True),
        ("postgresql+psycopg://postgres@127.0.0.1:5432/railproof", False),
        ("postgresql+psycopg://postgres@127.0.0.1:5432/postgres", False),
        ("postgresql+psycopg://postgres@db.internal:5432/railproof_test", False),
        ("postgresql+psycopg://postgres@10.0.0.5/rehearsal", False),
        ("mysql://u@127.0.0.1/test", False),
        ("not a url", False),
    ],
)
def test_disposable_rule(url, disposable):
    assert (disposable_reason(url) is None) is disposable, disposable_reason(url)


def test_confirmation_flag_overrides_the_rule():
    from verifier.tools.rehearse import Refusal, check_target

    url = "postgresql+psycopg://postgres@127.0.0.1:5432/railproof"
    with pytest.raises(Refusal):
        check_target(url, confirmed=False)
    check_target(url, confirmed=True)  # the operator said so: no refusal
