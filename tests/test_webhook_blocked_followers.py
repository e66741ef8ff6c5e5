"""A resource's later events, emitted while its earlier event waits in retry backoff, do not
sit due-but-blocked in every claim's way: a delivery written by `events.emit` is due no
sooner than the endpoint's pending delivery of an earlier event about the same resource.
Otherwise the PostgreSQL probe of `storage.repo.webhooks._candidates` reads every such
blocked row on every claim, and a tenant whose receiver is down while its proofs go verified
then finalized grows that set without bound (at 30,000 rows a claim took ~0.5 s, and every
other tenant's delivery waited for it)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, text, update

from tests.conftest import make_pg_db
from tests.test_webhook_claim_scan import _rows_read
from verifier.services.events import emit
from verifier.storage.db import Database
from verifier.storage.repo import webhooks as repo
from verifier.storage.webhook_models import WebhookDelivery, WebhookEndpoint

RESOURCES = 1500


@pytest.fixture
def pg_db(request):
    url, drop = make_pg_db(request.getfixturevalue("pg_template"))
    db = Database(url)
    try:
        yield db
    finally:
        db.engine.dispose()
        drop()


def test_a_follower_emitted_during_its_predecessors_backoff_is_not_read_by_every_claim(pg_db):
    now = datetime.now(UTC)
    with pg_db.tx() as s:
        s.add(
            WebhookEndpoint(
                id="whe_" + "a" * 32,
                principal="svc:tenant0",
                owners=["tenant0"],
                url="http://127.0.0.1:19199/down",
                event_types=["proof.verified", "settlement.finalized"],
                secret="whsec_x",
                active=True,
                created_at=now - timedelta(hours=1),
            )
        )
    # The tenant's proofs are verified (seq 1 of each proof)...
    with pg_db.tx() as s:
        for i in range(RESOURCES):
            emit(
                s,
                now - timedelta(minutes=30),
                "proof.verified",
                "tenant0",
                "proof",
                f"p{i}",
                {"id": f"p{i}"},
                first_of_resource=True,
            )
    # ...its receiver is down: every seq-1 delivery failed and waits in backoff (what
    # `_record` writes: attempts counted, next try hours away; no follower existed yet).
    with pg_db.tx() as s:
        s.execute(
            update(WebhookDelivery).values(
                attempts=5, next_attempt_at=now + timedelta(hours=3), last_error="HTTP 503"
            )
        )
    # Then each proof's settlement is final: seq 2, emitted through the outbox as the worker
    # does.
    with pg_db.tx() as s:
        for i in range(RESOURCES):
            emit(
                s,
                now - timedelta(minutes=1),
                "settlement.finalized",
                "tenant0",
                "proof",
                f"p{i}",
                {"id": f"p{i}"},
            )
    with pg_db.engine.connect() as c:
        c.exec_driver_sql("ANALYZE")
        c.commit()

    seen: list[tuple[str, Any]] = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        if "LATERAL" in statement.upper():
            seen.append((statement, parameters))

    event.listen(pg_db.engine, "before_cursor_execute", capture)
    try:
        with pg_db.tx() as s:
            got = repo.due(s, now, 32, 2)
            assert got == []  # nothing of this tenant can go before its seq-1 retries
    finally:
        event.remove(pg_db.engine, "before_cursor_execute", capture)
    assert seen, "the candidates' query was not seen"
    statement, parameters = seen[0]
    with pg_db.engine.connect() as c:
        plan = c.exec_driver_sql(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters
        ).scalar_one()[0]["Plan"]
    read = _rows_read(plan, "webhook_deliveries")
    # With nothing claimable, a claim should not read the tenant's blocked backlog: the
    # followers belong out of the due range (at their predecessor's next try), as
    # followers_due_at puts the ones that existed when it failed.
    assert read <= 50, (
        f"one claim read {read:.0f} delivery rows for {RESOURCES} followers blocked behind "
        "their predecessors' backoff (they were written due now by emit)"
    )
    # And directly: no pending follower is due before the predecessor it waits for.
    with pg_db.tx() as s:
        early = s.scalar(
            text(
                """select count(*) from webhook_deliveries d
                   join outbox_events e on e.id = d.event_id
                   join webhook_deliveries d1 on d1.endpoint_id = d.endpoint_id
                   join outbox_events e1 on e1.id = d1.event_id
                     and e1.resource_type = e.resource_type and e1.resource_id = e.resource_id
                     and e1.sequence < e.sequence
                   where d.status = 'pending' and d1.status = 'pending'
                     and d.next_attempt_at < d1.next_attempt_at"""
            )
        )
    assert early == 0, f"{early} followers are due before the delivery they wait for"
