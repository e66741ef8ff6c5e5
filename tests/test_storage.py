"""Migrations are the only way the schema is made; the service refuses an unmigrated
database; the audit chain detects tampering. On SQLite and PostgreSQL."""

import pytest
from datetime import datetime

from sqlalchemy import inspect, text
from typer.testing import CliRunner

from tests.conftest import make_pg_db
from verifier import audit
from verifier.cli import app
from verifier.storage.db import Database, NotMigrated, current_revision, head_revision, require_migrated, upgrade

TABLES = {"rail_state", "approvals", "payment_sessions", "proofs", "verification_attempts",
          "settlement_evidence", "receipts", "entitlements", "audit_events", "idempotency_claims"}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/empty.db"
        return
    request.getfixturevalue("pg_template")  # skips (or fails under CI) without PostgreSQL
    # An empty database: from template0, not from the migrated template.
    url, drop = make_pg_db("template0")
    yield url
    drop()


def test_migration_from_empty_and_refusal_before(empty_url):
    db = Database(empty_url)
    with pytest.raises(NotMigrated) as e:
        require_migrated(db.engine)
    assert "railproof db upgrade" in str(e.value)
    upgrade(empty_url)
    require_migrated(db.engine)
    assert current_revision(db.engine) == head_revision(empty_url)
    names = set(inspect(db.engine).get_table_names())
    assert TABLES <= names
    uniques = {u["name"] for u in inspect(db.engine).get_unique_constraints("proofs")}
    assert "uq_proofs_fingerprint" in uniques
    db.dispose()


def test_serve_refuses_unmigrated_database_and_names_the_command(empty_url, monkeypatch):
    monkeypatch.setenv("RAILPROOF_DATABASE_URL", empty_url)
    r = CliRunner().invoke(app, ["serve", "--port", "1"])
    assert r.exit_code == 2
    assert "railproof db upgrade" in r.output
    assert "Traceback" not in r.output


def test_db_upgrade_command(empty_url, monkeypatch):
    monkeypatch.setenv("RAILPROOF_DATABASE_URL", empty_url)
    r = CliRunner().invoke(app, ["db", "upgrade"])
    assert r.exit_code == 0, r.output
    db = Database(empty_url)
    require_migrated(db.engine)
    db.dispose()


def _tamper(db: Database, sql: str) -> None:
    with db.engine.begin() as c:
        if db.postgres:
            c.execute(text("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only"))
        else:
            c.execute(text("DROP TRIGGER audit_events_no_update"))
            c.execute(text("DROP TRIGGER audit_events_no_delete"))
        c.execute(text(sql))


def test_audit_chain_is_append_only_and_detects_tampering(db_url, monkeypatch):
    db = Database(db_url)
    with db.tx() as s:
        for i in range(5):
            audit.append(s, datetime(2026, 1, 1, i), audit.Operator("ops", "INC-9", "why"),
                         "test.event", "thing", f"t{i}", {"n": i})
    with db.tx() as s:
        rep = audit.verify_chain(s)
    assert rep.ok and rep.events == 5
    # The database itself refuses edits and deletes.
    with pytest.raises(Exception):
        with db.engine.begin() as c:
            c.execute(text("UPDATE audit_events SET actor = 'mallory' WHERE id = 3"))
    with db.tx() as s:
        ids = [r[0] for r in s.execute(text("SELECT id FROM audit_events ORDER BY id"))]
    _tamper(db, f"UPDATE audit_events SET data = '{{\"n\": 99}}' WHERE id = {ids[2]}")
    with db.tx() as s:
        rep = audit.verify_chain(s)
    assert not rep.ok and rep.first_broken_id == ids[2]
    monkeypatch.setenv("RAILPROOF_DATABASE_URL", db_url)
    r = CliRunner().invoke(app, ["audit", "verify"])
    assert r.exit_code == 1 and f"event {ids[2]}" in r.output
    db.dispose()


def test_audit_chain_detects_a_deleted_event(db_url):
    db = Database(db_url)
    with db.tx() as s:
        for i in range(4):
            audit.append(s, datetime(2026, 1, 1, i), audit.Operator("ops"),
                         "test.event", "thing", f"t{i}")
    with db.tx() as s:
        ids = [r[0] for r in s.execute(text("SELECT id FROM audit_events ORDER BY id"))]
    _tamper(db, f"DELETE FROM audit_events WHERE id = {ids[1]}")
    with db.tx() as s:
        rep = audit.verify_chain(s)
    assert not rep.ok and rep.first_broken_id == ids[2]
    db.dispose()
