"""Prepared statements (storage.repo.prepared) write and read exactly what `Connection.execute`
does, on SQLite (the driver path) and PostgreSQL (SQLAlchemy's own path)."""

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import bindparam, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from verifier.storage.models import AuditEvent
from verifier.storage.repo.prepared import Prepared
from verifier.storage.webhook_models import OutboxEvent, WebhookEndpoint

T0 = datetime(2026, 1, 1, 12, 30, 45, 123456, tzinfo=UTC)
EP, EV, AU = WebhookEndpoint.__table__, OutboxEvent.__table__, AuditEvent.__table__


def endpoint(i: int, **kw):
    row = {
        "id": f"whe_{i}",
        "principal": "svc:alice",
        "owners": ["alice", "bob"],
        "url": f"http://127.0.0.1:9/{i}",
        "event_types": ["proof.verified"],
        "secret": "s" * 32,
        "active": True,
        "created_at": T0 + timedelta(seconds=i),
        "deactivated_at": None,
    }
    row.update(kw)
    return row


def stored(db, table, key):
    with db.engine.connect() as c:
        return dict(c.execute(select(table).where(table.c.id == key)).one()._mapping)


def raw(db, key):
    """The row as the driver gives it back, no type processing (JSON 'null' is not NULL)."""
    with db.engine.connect() as c:
        row = c.execute(text("SELECT * FROM webhook_endpoints WHERE id = :k"), {"k": key}).one()
        return {k: v for k, v in row._mapping.items() if k not in ("id", "url", "created_at")}


def test_insert_stores_what_a_core_insert_stores(db):
    ins = Prepared(insert(EP))
    # JSON lists and null, booleans both ways, a nullable datetime set and unset.
    variants = [{}, {"owners": None, "active": False, "deactivated_at": T0}]
    with db.tx() as s:
        conn = s.connection()
        for n, kw in enumerate(variants):
            assert ins.insert(conn, endpoint(2 * n, **kw)) == f"whe_{2 * n}"  # the given key
            conn.execute(insert(EP), endpoint(2 * n + 1, **kw))
    for n in range(len(variants)):
        assert raw(db, f"whe_{2 * n}") == raw(db, f"whe_{2 * n + 1}")
        a, b = stored(db, EP, f"whe_{2 * n}"), stored(db, EP, f"whe_{2 * n + 1}")
        assert b["created_at"] - a["created_at"] == timedelta(seconds=1)
    first, second = stored(db, EP, "whe_0"), stored(db, EP, "whe_2")
    assert first["owners"] == ["alice", "bob"] and first["active"] is True
    assert second["owners"] is None and second["active"] is False
    assert second["deactivated_at"].replace(tzinfo=None) == T0.replace(tzinfo=None)


def test_insert_returns_the_assigned_integer_key(db):
    ins = Prepared(insert(AU))
    rows = [
        {
            "at": T0,
            "actor": "t",
            "action": "a",
            "subject_type": "x",
            "subject_id": str(i),
            "data": {"n": i, "big": 2**70},
            "incident_id": None,
            "reason": None,
            "prev_hash": f"{i:064x}",
            "hash": f"{i + 1:064x}",
        }
        for i in range(3)
    ]
    with db.tx() as s:
        conn = s.connection()
        ids = [
            ins.insert(conn, rows[0]),
            conn.execute(insert(AU), rows[1]).inserted_primary_key[0],
            ins.insert(conn, rows[2]),
        ]
    assert ids[0] < ids[1] < ids[2]
    with db.engine.connect() as c:
        data = dict(c.execute(select(AU.c.id, AU.c.data)).all())
    # An integer beyond 64 bits still round-trips (orjson refuses it; the fallback does not).
    assert data[ids[2]] == {"n": 2, "big": 2**70}


def test_reads_match_core_reads_including_fixed_binds(db):
    with db.tx() as s:
        conn = s.connection()
        for i in range(3):
            conn.execute(insert(EP), endpoint(i, active=i != 1))
    active = (
        select(EP.c.id, EP.c.owners, EP.c.active, EP.c.created_at)
        .where(EP.c.active.is_(True))
        .order_by(EP.c.created_at.desc())
    )
    newest = select(EP.c.id).order_by(EP.c.created_at.desc()).limit(1)  # LIMIT is a bind
    by_id = select(EP.c.url).where(EP.c.id == bindparam("k"))
    with db.tx() as s:
        conn = s.connection()
        assert Prepared(active).all(conn) == [tuple(r) for r in conn.execute(active).all()]
        assert [r[0] for r in Prepared(active).all(conn)] == ["whe_2", "whe_0"]
        assert Prepared(newest).scalar(conn) == "whe_2"
        assert Prepared(by_id).first(conn, {"k": "whe_1"}) == ("http://127.0.0.1:9/1",)
        assert Prepared(by_id).first(conn, {"k": "nope"}) is None
        row = Prepared(active).first(conn)
        assert isinstance(row[3], datetime) and row[1] == ["alice", "bob"] and row[2] is True
    assert Prepared(active).keys() == ["id", "owners", "active", "created_at"]


def test_update_counts_matched_rows(db):
    with db.tx() as s:
        conn = s.connection()
        for i in range(2):
            conn.execute(insert(EP), endpoint(i))
    upd = Prepared(update(EP).where(EP.c.id == bindparam("k"), EP.c.active.is_(True)))
    with db.tx() as s:
        conn = s.connection()
        assert upd.execute(conn, {"k": "whe_0", "active": False, "deactivated_at": T0}) == 1
        assert upd.execute(conn, {"k": "whe_0", "active": False, "deactivated_at": T0}) == 0
    assert stored(db, EP, "whe_0")["active"] is False
    assert stored(db, EP, "whe_1")["active"] is True


def test_constraint_violation_is_sqlalchemys_integrity_error_and_the_transaction_goes_on(db):
    ins = Prepared(insert(EV))
    row = {
        "id": "evt_1",
        "type": "proof.verified",
        "owner_id": "alice",
        "resource_type": "proof",
        "resource_id": "p1",
        "sequence": 1,
        "payload": {"a": 1},
        "created_at": T0,
    }
    with db.tx() as s:
        conn = s.connection()
        ins.insert(conn, row)
        with pytest.raises(IntegrityError):
            if db.postgres:
                with conn.begin_nested():
                    ins.insert(conn, {**row, "id": "evt_2"})  # same (resource, sequence)
            else:
                ins.insert(conn, {**row, "id": "evt_2"})
        ins.insert(conn, {**row, "id": "evt_3", "sequence": 2})
    with db.engine.connect() as c:
        assert [r[0] for r in c.execute(select(EV.c.id).order_by(EV.c.id))] == ["evt_1", "evt_3"]


def test_refuses_to_leave_out_a_column_with_a_python_default(db):
    ins = Prepared(insert(EP))
    row = endpoint(1)
    del row["active"]  # default=True lives in SQLAlchemy, not in the table
    with db.tx() as s:
        with pytest.raises(ValueError, match="webhook_endpoints.active"):
            ins.insert(s.connection(), row)


def test_statement_listeners_see_every_prepared_statement(db):
    # The driver path bypasses SQLAlchemy's execution events; with a listener on the engine
    # the statements go through Connection.execute, so the listener misses none.
    from sqlalchemy import event

    seen: list[str] = []

    def listen(_conn, _cursor, statement, *_rest):
        seen.append(statement)

    event.listen(db.engine, "before_cursor_execute", listen)
    try:
        ins, by_id = (
            Prepared(insert(EP)),
            Prepared(select(EP.c.url).where(EP.c.id == bindparam("k"))),
        )
        with db.tx() as s:
            conn = s.connection()
            ins.insert(conn, endpoint(1))
            assert by_id.scalar(conn, {"k": "whe_1"}) == "http://127.0.0.1:9/1"
    finally:
        event.remove(db.engine, "before_cursor_execute", listen)
    assert sum("INSERT INTO webhook_endpoints" in q for q in seen) == 1
    assert sum(q.startswith("SELECT webhook_endpoints.url") for q in seen) == 1
