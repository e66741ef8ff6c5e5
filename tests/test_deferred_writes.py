"""Deferred writes (storage.repo.prepared `defer`): on PostgreSQL a row nothing reads back goes
with the transaction's next statement or its COMMIT. What must hold, on both databases: the
row is written exactly when its transaction commits, in the order it was asked for, never
after a rollback, and a savepoint rolled back never takes a row written before it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError

from tests.helpers import ENDPOINT_INSERT, ENDPOINTS, endpoint_ids, endpoint_row
from verifier.storage.repo import rows
from verifier.storage.repo.prepared import Prepared, send_deferred
from verifier.storage.webhook_models import WebhookEndpoint

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
EP, _INSERT = ENDPOINTS, ENDPOINT_INSERT
endpoint, ids = endpoint_row, endpoint_ids


def test_a_deferred_row_is_written_with_its_commit(db):
    with db.tx() as s:
        _INSERT.defer(s.connection(), endpoint(1))
        if db.postgres:  # still queued: nothing sent yet
            assert s.connection().info.get("railproof.deferred")
    assert ids(db) == ["whe_1"]


def test_a_later_read_in_the_same_transaction_sees_it(db):
    with db.tx() as s:
        _INSERT.defer(s.connection(), endpoint(1))
        # An ORM read, a Core read through the Session, and a prepared read all see it.
        assert s.scalar(select(func.count()).select_from(EP)) == 1
        _INSERT.defer(s.connection(), endpoint(2))
        assert s.get(WebhookEndpoint, "whe_2") is not None
        _INSERT.defer(s.connection(), endpoint(3))
        count = Prepared(select(func.count()).select_from(EP))
        assert count.scalar(s.connection()) == 3
    assert ids(db) == ["whe_1", "whe_2", "whe_3"]


def test_a_rolled_back_transaction_never_sends_its_rows(db):
    class Boom(Exception):
        pass

    with pytest.raises(Boom), db.tx() as s:
        _INSERT.defer(s.connection(), endpoint(1))
        raise Boom
    # The connection went back to the pool with its queue: the next transaction on it (the
    # pool hands the same one back) commits only its own row.
    with db.tx() as s:
        _INSERT.defer(s.connection(), endpoint(2))
    assert ids(db) == ["whe_2"]


def test_a_savepoint_rolled_back_keeps_what_came_before_it(db):
    with db.tx() as s:
        _INSERT.defer(s.connection(), endpoint(1))
        # A unique insert that fails behind a savepoint (rows.guarded) on a duplicate key.
        _INSERT.insert(s.connection(), endpoint(2))
        with pytest.raises(IntegrityError), rows.guarded(s.connection()):
            _INSERT.insert(s.connection(), endpoint(2))
        # Queued when a Session savepoint begins: sent before it, so kept. Inside the
        # savepoint a deferred write goes at once, and goes with it.
        _INSERT.defer(s.connection(), endpoint(4))
        with pytest.raises(ZeroDivisionError), s.begin_nested():
            _INSERT.defer(s.connection(), endpoint(3))
            1 / 0  # noqa: B018 - the savepoint is rolled back
    assert ids(db) == ["whe_1", "whe_2", "whe_4"]


def test_a_deferred_row_that_fails_fails_its_transaction(db):
    with db.tx() as s:
        _INSERT.defer(s.connection(), endpoint(1))
    with pytest.raises(IntegrityError), db.tx() as s:
        _INSERT.defer(s.connection(), endpoint(2))
        _INSERT.defer(s.connection(), endpoint(1))  # a duplicate key, found when sent
        send_deferred(s.connection())
    assert ids(db) == ["whe_1"]


def test_a_session_on_a_connection_someone_else_commits_writes_at_once(db):
    """Only the service's own transactions (`Database.tx`) defer: a Session bound to a
    connection that `engine.begin()` commits has nobody to send a queue at its commit."""
    from sqlalchemy.orm import Session

    with db.engine.begin() as c:
        s = Session(bind=c)
        _INSERT.defer(s.connection(), endpoint(1))
        assert not c.info.get("railproof.deferred")
    assert ids(db) == ["whe_1"]


def test_an_update_that_ends_its_transaction_commits_with_it(db):
    from sqlalchemy import bindparam, update

    deactivate = Prepared(update(EP).where(EP.c.id == bindparam("k")))
    with db.tx() as s:
        _INSERT.defer(s.connection(), endpoint(1))
    with db.tx() as s:
        _INSERT.defer(s.connection(), endpoint(2))  # sent with it
        matched = deactivate.execute(s.connection(), {"k": "whe_1", "active": False}, commit=True)
    assert matched == 1 and ids(db) == ["whe_1", "whe_2"]
    with db.engine.connect() as c:
        assert c.scalar(select(EP.c.active).where(EP.c.id == "whe_1")) is False
    with db.tx() as s:
        assert deactivate.execute(s.connection(), {"k": "nope", "active": False}, commit=True) == 0


def test_rows_of_one_statement_go_together_and_keep_their_order(db):
    """A run of one statement is sent as one executemany (PostgreSQL): only rows queued one
    after the other go together, so an update queued between two inserts still runs
    between them."""
    from sqlalchemy import bindparam, update

    deactivate = Prepared(update(EP).where(EP.c.id == bindparam("k")))
    with db.tx() as s:
        for i in (1, 2, 3):
            _INSERT.defer(s.connection(), endpoint(i))
        deactivate.defer(s.connection(), {"k": "whe_2", "active": False})
        deactivate.defer(s.connection(), {"k": "whe_4", "active": False})  # not written yet
        for i in (4, 5):
            _INSERT.defer(s.connection(), endpoint(i))
    with db.engine.connect() as c:
        active = dict(c.execute(select(EP.c.id, EP.c.active)).all())
    assert active == {"whe_1": True, "whe_2": False, "whe_3": True, "whe_4": True, "whe_5": True}


def test_a_row_that_fails_inside_a_run_fails_the_whole_transaction(db):
    with pytest.raises(IntegrityError), db.tx() as s:
        for i in (1, 2, 1, 3):  # the second whe_1 is refused when the run is sent
            _INSERT.defer(s.connection(), endpoint(i))
    assert ids(db) == []
    with db.tx() as s:  # the connection is usable again
        _INSERT.defer(s.connection(), endpoint(4))
    assert ids(db) == ["whe_4"]


def test_inserts_into_other_tables_are_gathered_by_statement_but_never_past_a_dependency():
    """`_runs`, the grouping rule itself: a deferred INSERT joins the last run of its
    statement only past INSERTs into tables it does not reference; never past an UPDATE, its
    own table or a table it references."""
    from verifier.storage.repo.prepared import _runs

    ev, audit_, outbox = (
        ("INS ev", ("ev", frozenset({"proofs"}))),
        ("INS au", ("au", frozenset())),
        (
            "INS ob",
            ("ob", frozenset()),
        ),
    )

    def q(*items):
        return [(sql, i, moves) for i, (sql, moves) in enumerate(items)]

    # A batch: evidence, audit, outbox per proof → one run each, rows in their order.
    assert _runs(q(ev, audit_, outbox, ev, audit_, outbox, ev)) == [
        ("INS ev", [0, 3, 6]),
        ("INS au", [1, 4]),
        ("INS ob", [2, 5]),
    ]
    # A child (references "pa") never moves ahead of a parent queued after its run.
    child, parent = ("INS ch", ("ch", frozenset({"pa"}))), ("INS pa", ("pa", frozenset()))
    assert _runs(q(child, parent, child)) == [("INS ch", [0]), ("INS pa", [1]), ("INS ch", [2])]
    # ... while a parent may move ahead of a child.
    assert _runs(q(parent, child, parent)) == [("INS pa", [0, 2]), ("INS ch", [1])]
    # Never past an UPDATE, nor past another statement on its own table.
    update, other_form = ("UPD ev", None), ("INS ev (fewer columns)", ev[1])
    assert [r for r, _ in _runs(q(ev, update, ev))] == ["INS ev", "UPD ev", "INS ev"]
    assert [r for r, _ in _runs(q(ev, other_form, ev))] == ["INS ev", other_form[0], "INS ev"]
    # UPDATEs of one statement in a row still go together.
    assert _runs(q(update, update)) == [("UPD ev", [0, 1])]


def test_a_batch_of_interleaved_rows_keeps_each_tables_order(db):
    from verifier.storage.models import AuditEvent

    audit_insert = Prepared(insert(AuditEvent.__table__))
    with db.tx() as s:
        for i in range(1, 6):
            _INSERT.defer(s.connection(), endpoint(i))
            audit_insert.defer(
                s.connection(),
                {
                    "at": T0,
                    "actor": "t",
                    "action": "x",
                    "subject_type": "whe",
                    "subject_id": f"whe_{i}",
                    "data": {},
                    "incident_id": None,
                    "reason": None,
                    "prev_hash": f"{i - 1:064x}",
                    "hash": f"{i:064x}",
                },
            )
    with db.engine.connect() as c:
        chain = c.execute(
            select(AuditEvent.subject_id, AuditEvent.prev_hash).order_by(AuditEvent.id)
        ).all()
    assert [r[0] for r in chain] == [f"whe_{i}" for i in range(1, 6)]
    assert ids(db) == [f"whe_{i}" for i in range(1, 6)]


def test_a_commit_and_the_rows_it_carries_are_one_round_trip(db, monkeypatch):
    """PostgreSQL: the queued rows and the COMMIT go to the server with one sync (one round
    trip), and the connection is out of its transaction afterwards; the transaction's BEGIN
    rides with its first statement the same way. Counted: every way a statement can reach
    the server (the repo's pipeline sync; psycopg's own pipeline sync, its cursor's send, and
    the BEGIN or COMMIT it sends by itself)."""
    if not db.postgres:
        pytest.skip("deferred writes are PostgreSQL's (SQLite writes at once)")
    from psycopg import pq
    from psycopg._connection_base import BaseConnection
    from psycopg._cursor_base import BaseCursor
    from psycopg._pipeline_base import BasePipeline

    from verifier.storage.repo import prepared

    sent: list[str] = []
    for owner, name in (
        (prepared, "_sync"),
        (BasePipeline, "_enqueue_sync"),
        (BaseCursor, "_execute_send"),
        (BaseConnection, "_exec_command"),
    ):
        real = getattr(owner, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            sent.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)
    with db.tx() as s:
        conn = s.connection()
        driver = conn.connection.driver_connection
        sent.clear()  # a new engine's first connection: the dialect's own queries
        send_deferred(conn)  # nothing queued: nothing sent, no BEGIN either
        assert sent == [] and driver.pgconn.transaction_status == pq.TransactionStatus.IDLE
        _INSERT.defer(conn, endpoint(1))
        assert rows.read(s, WebhookEndpoint, "whe_1") is not None  # BEGIN, row, read
        assert sent == ["_sync"]
        _INSERT.defer(conn, endpoint(2))
        _INSERT.defer(conn, endpoint(3))
        sent.clear()
    assert sent == ["_sync"]  # rows 2 and 3, COMMIT
    assert driver.pgconn.transaction_status == pq.TransactionStatus.IDLE
    assert ids(db) == ["whe_1", "whe_2", "whe_3"]


def test_a_row_refused_at_commit_leaves_nothing_and_the_connection_usable(db):
    with db.tx() as s:
        _INSERT.defer(s.connection(), endpoint(1))
    with pytest.raises(IntegrityError), db.tx() as s:
        _INSERT.defer(s.connection(), endpoint(2))
        _INSERT.defer(s.connection(), endpoint(1))  # refused by the COMMIT's pipeline
    assert ids(db) == ["whe_1"]
    with db.tx() as s:
        _INSERT.defer(s.connection(), endpoint(3))
    assert ids(db) == ["whe_1", "whe_3"]


def test_a_proofs_new_state_goes_with_the_next_statement_and_is_read_back(engine):
    """`proofs.update` (an attempt's new state, under the row's lock) is deferred: a read of
    the row later in the transaction sees it, the commit writes it, a rollback drops it."""
    from tests.test_engine_proofs import open_session
    from verifier.services import proofs as proof_service
    from verifier.storage.models import Proof
    from verifier.storage.repo import proofs as proof_repo

    sess = open_session(engine)
    view, _ = proof_service.submit_proof(engine, sess["id"], "fx00defe01", ["alice"], verify=False)
    pid = view["id"]

    def status() -> str:
        with engine.db.engine.connect() as c:
            return str(c.scalar(select(Proof.status).where(Proof.id == pid)))

    class Boom(Exception):
        pass

    with pytest.raises(Boom), engine.db.tx() as s:
        p = proof_repo.for_attempt(s, pid)
        proof_repo.update(s, p, {"status": "failed", "detail": "rolled back"})
        raise Boom
    assert status() == "pending"
    with engine.db.tx() as s:
        p = proof_repo.for_attempt(s, pid)
        proof_repo.update(s, p, {"status": "failed", "detail": "deferred"})
        if engine.db.postgres:  # queued, not sent yet
            assert s.connection().info.get("railproof.deferred")
        read = s.execute(select(Proof.status, Proof.detail).where(Proof.id == pid)).one()
        assert tuple(read) == ("failed", "deferred")
    assert status() == "failed"
