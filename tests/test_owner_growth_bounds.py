"""What one service token's traffic, within its rate limit, may cost everyone else: bounded.

Every payment session opens a pending entitlement for its owner (the entitlement waits for
the payment). A tenant opening sessions at its rate limit (20/s by default) adds 72,000 of
them an hour, paid or not, and nothing removes them.
"""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import event

from tests.conftest import STAFF_TOKEN, auth
from tests.helpers import FAKE_SESSION
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
