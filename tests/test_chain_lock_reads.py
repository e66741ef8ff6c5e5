"""Reads that go with the audit chain's lock (storage.repo.audit `read_with_lock`): a
submission that appends and then emits reads the active webhook endpoints in the round trip
that takes the lock. The list must be the one read under the lock: an endpoint committed by
the transaction the lock waited for is in it. SQLite and PostgreSQL."""

from __future__ import annotations

import threading

from sqlalchemy import select

from tests.conftest import CLOCK
from verifier.services import audit, events
from verifier.storage.repo import webhooks as webhooks_repo
from verifier.storage.webhook_models import WebhookDelivery

OP = audit.Operator("test")


def add_endpoint(s, owner: str) -> str:
    # Flushed at once: its id exists, and the transaction holds the row uncommitted.
    ep = webhooks_repo.add_endpoint(
        s,
        principal=f"svc:{owner}",
        owners=[owner],
        url=f"http://127.0.0.1:9/{owner}",
        event_types=["proof.verified"],
        secret="s" * 32,
        created_at=CLOCK,
    )
    s.flush()
    return ep.id


def append_and_emit(engine, rid: str, expect: bool = True, lock_first: bool = False) -> str:
    with engine.db.tx() as s:
        if lock_first:
            audit.append(s, engine.now(), OP, "test.first", "proof", rid)
        if expect:
            events.expect(s)
        audit.append(s, engine.now(), OP, "proof.verified", "proof", rid)
        return events.emit(s, engine.now(), "proof.verified", "alice", "proof", rid, {"id": rid})


def delivered_to(engine, event_id: str) -> set[str]:
    with engine.db.tx() as s:
        return set(
            s.scalars(
                select(WebhookDelivery.endpoint_id).where(WebhookDelivery.event_id == event_id)
            )
        )


def test_an_event_reaches_its_owners_endpoints_however_the_list_was_read(engine):
    with engine.db.tx() as s:
        alice, bob = add_endpoint(s, "alice"), add_endpoint(s, "bob")
        audit.append(s, engine.now(), OP, "webhook_endpoint.created", "webhook_endpoint", alice)
    # With the lock's round trip, after a lock taken earlier in the transaction, without.
    for i, kw in enumerate(({}, {"lock_first": True}, {"expect": False})):
        assert delivered_to(engine, append_and_emit(engine, f"p{i}", **kw)) == {alice}, kw
    assert bob not in delivered_to(engine, append_and_emit(engine, "p9"))


def test_the_list_is_read_once_the_lock_is_granted(engine):
    """A transaction holds the chain's lock with a new endpoint not yet committed; a
    submission asks for the lock meanwhile. When it gets the lock the endpoint is committed,
    and its event is delivered there (a list read before the lock would miss it)."""
    holding, commit = threading.Event(), threading.Event()
    created: list[str] = []

    def create() -> None:
        with engine.db.tx() as s:
            created.append(add_endpoint(s, "alice"))
            audit.append(s, engine.now(), OP, "webhook_endpoint.created", "webhook_endpoint", "x")
            holding.set()
            assert commit.wait(10)

    out: list[str] = []
    a = threading.Thread(target=create)
    a.start()
    assert holding.wait(10)
    b = threading.Thread(target=lambda: out.append(append_and_emit(engine, "p1")))
    b.start()
    b.join(0.5)
    assert b.is_alive()  # waiting for the lock (SQLite: for the one writer)
    commit.set()
    a.join(10)
    b.join(10)
    assert delivered_to(engine, out[0]) == set(created)
