"""What one service token's traffic, within its rate limit, may cost everyone else: bounded.

Every payment session opens a pending entitlement for its owner (the entitlement waits for
the payment). A tenant opening sessions at its rate limit (20/s by default) adds 72,000 of
them an hour, paid or not, and nothing removes them.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from tests.conftest import STAFF_TOKEN, auth, make_pg_db, make_settings
from tests.fake_rail import ScriptedChain, catalog_with_fake
from tests.helpers import FAKE_SESSION
from verifier.core.engine import Engine
from verifier.http.api import create_app
from verifier.services import sessions

# Every other list the API answers takes `limit` and answers at most this many rows
# (`Query(ge=1, le=1000)` in verifier/http/routes/admin.py, webhooks.py, release_gates.py,
# reconciliation.py).
MOST_ROWS_ANY_LIST_ANSWERS = 1000


def _open_sessions(engine, n: int, owner: str = "alice") -> None:
    for i in range(n):
        sessions.open_session(
            engine,
            sessions.NewSession(**{**FAKE_SESSION, "owner_id": owner, "amount": 1_000_000 + i}),
            actor="svc:atk5",
        )


def test_an_owners_entitlement_list_is_bounded_however_many_sessions_it_opened(client, engine):
    """GET /v1/entitlements answers every entitlement of the owner in one response, with no
    limit or page: one unpaid session = one more pending row, forever. Measured against
    `railproof serve` (SQLite) with 1,000,000 of them (14 h of one token's session creation at
    its rate limit): one GET took 23-30 s, answered 228 MB, took the API process from 160 MB
    to 2.2 GB RSS, and another tenant's session creation + entitlement check waited 22 s
    behind it. A list the API answers must be bounded like every other list it answers."""
    _open_sessions(engine, MOST_ROWS_ANY_LIST_ANSWERS + 50)
    r = client.get("/v1/entitlements", params={"owner_id": "alice"}, headers=auth())
    assert r.status_code == 200, r.text
    assert len(r.json()) <= MOST_ROWS_ANY_LIST_ANSWERS, (
        f"one answer carried {len(r.json())} entitlements: the list grows without bound with "
        "the sessions the owner opens"
    )


# Tables every tenant grows with its own traffic (one row or more per session or proof).
TENANT_GROWN = (
    "entitlements",
    "payment_sessions",
    "proofs",
    "audit_events",
    "idempotency_claims",
    "verification_attempts",
    "outbox_events",
    "webhook_deliveries",
    "transfer_holds",
    "settlement_evidence",
    "receipts",
)


def test_a_metrics_scrape_reads_no_tenant_grown_table_whole(client, engine, db_url):
    """GET /metrics (open to anyone unless RAILPROOF_METRICS_TOKEN is set, and scraped by
    Prometheus every few seconds regardless) computes `reorged_active_entitlements` with
    `count_flagged_active_entitlements`, a full scan of `entitlements` (no index serves
    `status = 'active' AND reorg_flagged`). On SQLite every transaction, reads included, takes
    the database lock: with 1,000,000 pending entitlements (one token's sessions over 14 h)
    each scrape took 87 ms alone and ~500 ms with 8 anonymous clients scraping, and another
    tenant's session creation then waited up to 12.4 s (p50 3.1 s; 5 ms without the
    scrapes). The scrape's cost must not grow with what tenants store: every statement an
    index search, never a scan of a table tenants fill."""
    if not db_url.startswith("sqlite"):
        pytest.skip("the plan is read with SQLite's EXPLAIN QUERY PLAN")
    _open_sessions(engine, 5)
    seen: list[tuple[str, object]] = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        seen.append((statement, parameters))

    event.listen(engine.db.engine, "before_cursor_execute", capture)
    try:
        r = client.get("/metrics", headers=auth(STAFF_TOKEN))
    finally:
        event.remove(engine.db.engine, "before_cursor_execute", capture)
    assert r.status_code == 200, r.text
    path = db_url.removeprefix("sqlite:///")
    scans = []
    with sqlite3.connect(path) as raw:
        for statement, params in seen:
            if not statement.lstrip().upper().startswith("SELECT"):
                continue
            plan = raw.execute(f"EXPLAIN QUERY PLAN {statement}", params or ()).fetchall()
            for row in plan:
                detail = str(row[-1])
                words = detail.split()
                if words[:1] == ["SCAN"] and len(words) > 1 and words[1] in TENANT_GROWN:
                    if "USING INDEX" in detail or "USING COVERING INDEX" in detail:
                        continue  # walked in an index's order: not the scan this is about
                    scans.append((detail, " ".join(statement.split())[:200]))
    assert not scans, f"/metrics scans tenant-grown tables whole on every scrape: {scans}"


def test_an_owners_entitlements_come_a_page_at_a_time_and_only_the_owners(client, engine):
    _open_sessions(engine, 5)
    _open_sessions(engine, 1, owner="bob")
    first = client.get("/v1/entitlements?owner_id=alice&limit=2", headers=auth())
    assert first.status_code == 200, first.text
    page1 = [e["id"] for e in first.json()]
    r = client.get(f"/v1/entitlements?owner_id=alice&limit=2&after={page1[-1]}", headers=auth())
    page2 = [e["id"] for e in r.json()]
    r = client.get(f"/v1/entitlements?owner_id=alice&limit=2&after={page2[-1]}", headers=auth())
    page3 = [e["id"] for e in r.json()]
    everything = client.get("/v1/entitlements?owner_id=alice", headers=auth()).json()
    assert page1 + page2 + page3 == [e["id"] for e in everything] and len(page3) == 1
    # Bob's entitlement is no page mark for alice: the same 404 as an unknown id.
    with engine.db.tx() as s:
        from verifier.storage.models import Entitlement

        bobs = s.query(Entitlement.id).filter(Entitlement.owner_id == "bob").scalar()
    for mark in (bobs, "nope"):
        r = client.get(f"/v1/entitlements?owner_id=alice&after={mark}", headers=auth())
        assert r.status_code == 404, r.text
        assert (r.json()["error"]["code"], r.json()["error"]["field"]) == (
            "entitlement_not_found",
            "after",
        )
    r = client.get("/v1/entitlements?owner_id=alice&limit=1001", headers=auth())
    assert (r.status_code, r.json()["error"]["field"]) == (422, "limit")


@pytest.fixture
def live_clock_pg(pg_template) -> Iterator[Engine]:
    # The real clock (RAILPROOF_CLOCK unset), as in production.
    url, drop = make_pg_db(pg_template)
    e = Engine(make_settings(url, clock=None), catalog=catalog_with_fake())
    e.chains.set_transport("fakenet", ScriptedChain())
    e.ensure_rail_states()
    yield e
    e.db.dispose()
    drop()


@pytest.mark.postgres
def test_a_page_walk_sees_every_entitlement_committed_during_it(live_clock_pg, monkeypatch):
    """Pages used to follow (created_at, id), created_at read when the session's request
    starts, before its transaction commits (behind the audit chain's lock): on PostgreSQL an
    entitlement could commit behind the page mark a client held, and be on no later page.
    Pages now follow the order entitlements were committed in."""
    engine = live_clock_pg
    with TestClient(create_app(engine), raise_server_exceptions=False) as client:
        for _ in range(2):
            r = client.post("/v1/payment-sessions", headers=auth(), json=FAKE_SESSION)
            assert r.status_code == 201, r.text

        # One session request is slow between reading the clock and committing (a pool
        # thread preempted, a wait on the audit chain's lock): held at the first step after
        # `now` was read.
        entered, release = threading.Event(), threading.Event()
        real_seed = sessions.reference_seed
        held: list[str] = []

        def slow_seed(eng, sid):
            if not held:
                held.append(sid)
                entered.set()
                assert release.wait(30)
            return real_seed(eng, sid)

        monkeypatch.setattr(sessions, "reference_seed", slow_seed)
        slow_answer: list = []
        t = threading.Thread(
            target=lambda: slow_answer.append(
                client.post("/v1/payment-sessions", headers=auth(), json=FAKE_SESSION)
            )
        )
        t.start()
        assert entered.wait(30)
        # Meanwhile another session of the same owner is opened and committed.
        r = client.post("/v1/payment-sessions", headers=auth(), json=FAKE_SESSION)
        assert r.status_code == 201, r.text

        # The client walks the owner's entitlements a page at a time.
        page1 = client.get("/v1/entitlements?owner_id=alice&limit=3", headers=auth())
        assert page1.status_code == 200, page1.text
        seen = [e["id"] for e in page1.json()]
        assert len(seen) == 3

        release.set()
        t.join(30)
        assert slow_answer and slow_answer[0].status_code == 201, slow_answer

        r = client.get(f"/v1/entitlements?owner_id=alice&limit=3&after={seen[-1]}", headers=auth())
        assert r.status_code == 200, r.text
        seen += [e["id"] for e in r.json()]

        everything = client.get("/v1/entitlements?owner_id=alice", headers=auth()).json()
        assert len(everything) == 4
        assert seen == [e["id"] for e in everything], "entitlements committed during the walk"
