"""Migrations are the only way the schema is made; the service refuses an unmigrated
database; the audit chain detects tampering. On SQLite and PostgreSQL."""

from datetime import datetime

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from verifier.cli.main import app
from verifier.services import audit
from verifier.storage.db import (
    Database,
    NotMigrated,
    current_revision,
    head_revision,
    require_migrated,
    upgrade,
)

TABLES = {
    "rail_state",
    "approvals",
    "payment_sessions",
    "proofs",
    "verification_attempts",
    "settlement_evidence",
    "receipts",
    "entitlements",
    "audit_events",
    "idempotency_claims",
}


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
    # One proof per fingerprint and session; one *holding* proof per fingerprint (partial index).
    assert "uq_proofs_fingerprint_session_id" in uniques
    indexes = {i["name"]: i for i in inspect(db.engine).get_indexes("proofs")}
    assert indexes["ux_proofs_holding_fingerprint"]["unique"]
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
            audit.append(
                s,
                datetime(2026, 1, 1, i),
                audit.Operator("ops", "INC-9", "why"),
                "test.event",
                "thing",
                f"t{i}",
                {"n": i},
            )
    with db.tx() as s:
        rep = audit.verify_chain(s)
    assert rep.ok and rep.events == 5
    # The database itself refuses edits and deletes.
    with pytest.raises(DBAPIError):
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
            audit.append(
                s, datetime(2026, 1, 1, i), audit.Operator("ops"), "test.event", "thing", f"t{i}"
            )
    with db.tx() as s:
        ids = [r[0] for r in s.execute(text("SELECT id FROM audit_events ORDER BY id"))]
    _tamper(db, f"DELETE FROM audit_events WHERE id = {ids[1]}")
    with db.tx() as s:
        rep = audit.verify_chain(s)
    assert not rep.ok and rep.first_broken_id == ids[2]
    db.dispose()


def test_models_match_the_migrations(db_url):
    # Every table, index and constraint the migrations make is declared in the models, and
    # the other way round (what `alembic check` would report).
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine

    from verifier.storage.models import Base

    eng = create_engine(db_url)
    try:
        with eng.connect() as conn:
            diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        eng.dispose()
    assert diffs == []


def test_audit_head_cache_never_outlives_its_transaction(db_url):
    # audit.append keeps the chain head per transaction; a rolled-back savepoint, a commit
    # followed by more appends on the same Session, and appends from another Session in
    # between must all still leave one intact chain.
    from sqlalchemy.orm import Session

    db = Database(db_url)
    at, op = datetime(2026, 1, 1), audit.Operator("ops")
    s = Session(db.engine)
    try:
        audit.append(s, at, op, "test.event", "thing", "a1")
        try:
            with s.begin_nested():
                audit.append(s, at, op, "test.event", "thing", "gone")
                raise RuntimeError("roll back the savepoint")
        except RuntimeError:
            pass
        audit.append(s, at, op, "test.event", "thing", "a2")
        s.commit()
        with db.tx() as other:
            audit.append(other, at, op, "test.event", "thing", "b1")
        audit.append(s, at, op, "test.event", "thing", "a3")  # a new transaction, same Session
        s.commit()
    finally:
        s.close()
    with db.tx() as s2:
        rep = audit.verify_chain(s2)
        subjects = list(s2.scalars(text("SELECT subject_id FROM audit_events ORDER BY id")))
    assert rep.ok and rep.events == 4, rep
    assert subjects == ["a1", "a2", "b1", "a3"]
    db.dispose()


def test_sqlite_synchronous_setting(tmp_path, monkeypatch):
    from verifier.core.config import Settings
    from verifier.core.engine import Engine

    assert Settings().sqlite_synchronous == "NORMAL"
    monkeypatch.setenv("RAILPROOF_SQLITE_SYNCHRONOUS", "full")
    url = f"sqlite:///{tmp_path}/sync.db"
    engine = Engine(Settings(database_url=url))
    try:
        with engine.db.engine.connect() as c:
            assert c.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    finally:
        engine.db.dispose()
    with pytest.raises(ValueError):
        Settings(sqlite_synchronous="OFF")
