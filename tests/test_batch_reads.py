"""`rows.among`, the repo's `IN (...)` for a batch of ids: on PostgreSQL `= ANY(:array)`,
one parameter whatever the batch's size, so a sweep's statement is one prepared text rather
than a new one per batch size; on SQLite a plain IN. Either way it selects what IN selects."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from tests.helpers import ENDPOINT_INSERT, ENDPOINTS, endpoint_row
from verifier.storage.repo import rows

EP = ENDPOINTS


@pytest.mark.parametrize(
    "ids",
    [[], ["whe_2"], ["whe_1", "whe_3", "whe_404"], [f"whe_{i}" for i in range(1, 6)] * 2],
    ids=["none", "one", "some-and-unknown", "all-twice"],
)
def test_among_selects_what_in_selects(db, ids):
    with db.tx() as s:
        for i in range(1, 6):
            ENDPOINT_INSERT.insert(s.connection(), endpoint_row(i))
    with db.tx() as s:
        got = sorted(s.scalars(select(EP.c.id).where(rows.among(s, EP.c.id, iter(ids)))))
        want = sorted(s.scalars(select(EP.c.id).where(EP.c.id.in_(ids))))
    assert got == want == sorted({i for i in ids if i != "whe_404"})


def test_a_batch_is_one_statement_whatever_its_size_on_postgresql(db):
    """The text psycopg is given (and prepares once it has run it five times) is the same for
    2, 256 or no ids; an IN list would hand it a new text per batch size."""
    if not db.postgres:
        pytest.skip("SQLite's IN list is the statement SQLite prepares per call anyway")
    from sqlalchemy import event

    sent: list[str] = []

    def seen(conn, cursor, statement, parameters, context, executemany):
        sent.append(statement)

    event.listen(db.engine, "before_cursor_execute", seen)
    try:
        for n in (2, 256, 0):
            with db.tx() as s:
                ids = [f"whe_{i}" for i in range(n)]
                s.scalars(select(EP.c.id).where(rows.among(s, EP.c.id, ids))).all()
    finally:
        event.remove(db.engine, "before_cursor_execute", seen)
    selects = [t for t in sent if t.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 3 and len(set(selects)) == 1


def test_an_over_long_id_never_matches_the_id_it_starts_with(db):
    """An id column is VARCHAR(n): a value cast to VARCHAR(n) is cut to n characters, so a
    batch read would find the stored id that an over-long value starts with."""
    width = EP.c.id.type.length
    stored = "whe_" + "x" * (width - 4)
    with db.tx() as s:
        ENDPOINT_INSERT.insert(s.connection(), {**endpoint_row(1), "id": stored})
    with db.tx() as s:
        found = list(s.scalars(select(EP.c.id).where(rows.among(s, EP.c.id, [stored + "tail"]))))
        exact = list(s.scalars(select(EP.c.id).where(rows.among(s, EP.c.id, [stored]))))
    assert found == [] and exact == [stored]


def test_a_decorated_string_column_is_never_cut_either(db):
    """A column whose type wraps a bounded string (a TypeDecorator) keeps IN: an array of it
    would be cast to VARCHAR(n)[] and cut an over-long value to the stored one."""
    from sqlalchemy import Column, MetaData, String, Table, TypeDecorator, insert

    class Tag(TypeDecorator[str]):
        impl = String(8)
        cache_ok = True

    scratch = Table("batch_reads_scratch", MetaData(), Column("tag", Tag(), primary_key=True))
    scratch.create(db.engine)
    try:
        with db.tx() as s:
            s.execute(insert(scratch).values(tag="x" * 8))
        with db.tx() as s:
            q = select(scratch.c.tag).where(rows.among(s, scratch.c.tag, ["x" * 8 + "tail"]))
            assert list(s.scalars(q)) == []
            q = select(scratch.c.tag).where(rows.among(s, scratch.c.tag, ["x" * 8]))
            assert list(s.scalars(q)) == ["x" * 8]
    finally:
        scratch.drop(db.engine)


def test_last_sequences_per_resource_in_one_read(db):
    """The outbox's last sequence per resource for a batch (a finality sweep primes its event
    numbers with it): resources with events get their highest, others are left out, and the
    other resource type's events are never counted."""
    from sqlalchemy import insert

    from tests.helpers import CLOCK
    from verifier.storage.repo import outbox as outbox_repo
    from verifier.storage.webhook_models import OutboxEvent

    def event(n: int, rtype: str, rid: str, seq: int) -> dict:
        return {
            "id": f"evt_{n}",
            "type": "proof.verified",
            "owner_id": "alice",
            "resource_type": rtype,
            "resource_id": rid,
            "sequence": seq,
            "payload": {},
            "created_at": CLOCK,
        }

    stored = [("proof", "p1", 1), ("proof", "p1", 3), ("proof", "p1", 2), ("proof", "p2", 1)]
    stored += [("entitlement", "p3", 7), ("entitlement", "p1", 9)]
    with db.tx() as s:
        s.execute(insert(OutboxEvent), [event(n, *e) for n, e in enumerate(stored)])
    with db.tx() as s:
        got = outbox_repo.last_sequences(s, "proof", ["p1", "p2", "p3", "p4", "p1"])
        assert got == {"p1": 3, "p2": 1}
        assert outbox_repo.last_sequences(s, "proof", []) == {}
        assert outbox_repo.last_sequences(s, "entitlement", ["p1", "p3"]) == {"p1": 9, "p3": 7}


def test_an_over_long_key_never_makes_a_session_a_candidate(db):
    """The sessions a transfer's keys could be the reference of (repo.sessions
    `other_open_candidates`, one array on PostgreSQL): a key longer than the column is never
    cut to a stored reference it starts with."""
    from datetime import timedelta

    from tests.conftest import CLOCK
    from tests.helpers import session_row
    from verifier.storage.models import PaymentSession
    from verifier.storage.repo import sessions as session_repo

    width = PaymentSession.__table__.c.reference.type.length
    stored = "r" * width

    mine, theirs = session_row("mine"), session_row(stored)
    with db.tx() as s:
        for r in (mine, theirs):
            session_repo.insert_session(s, r)
    at = CLOCK + timedelta(minutes=1)
    with db.tx() as s:
        ps = session_repo.read(s, mine["id"])

        def keys(*refs: str) -> list[str]:
            return [c.id for c in session_repo.other_open_candidates(s, ps, at, None, list(refs))]

        assert keys(stored + "tail") == []
        assert keys(stored) == keys("other", stored) == [theirs["id"]]
        assert keys("other") == []
