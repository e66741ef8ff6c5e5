"""A webhook claim's work does not grow with (active endpoints) x (one tenant's backlog).

On PostgreSQL the claim probes each active endpoint for its next due deliveries. A filter
`next_attempt_at IS NULL OR next_attempt_at <= now`, and an index in due order across all
endpoints (ix_webhook_deliveries_due), had the planner read every tenant's due rows once per
endpoint: 52 endpoints and 100,000 due rows of one tenant took a claim from 9 ms to ~3 s,
and another tenant's delivery from < 1 s to 3-4 s after its commit. Each probe is now a range
of the endpoint's own index (migration 0015), checked here on the plan's row counts rather
than on time.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import event, text

from verifier.storage.repo import webhooks as repo

BACKLOG = 30_000
IDLE_ENDPOINTS = 20


def _rows_read(plan: dict[str, Any], table: str) -> float:
    """Rows the plan's scans of `table` visited: returned plus filtered out, times loops."""
    n = 0.0
    if plan.get("Relation Name") == table:
        per_loop = plan.get("Actual Rows", 0) + plan.get("Rows Removed by Filter", 0)
        n += per_loop * plan.get("Actual Loops", 1)
    for child in plan.get("Plans", []):
        n += _rows_read(child, table)
    return n


def test_one_tenants_backlog_is_not_read_once_per_active_endpoint(engine, db_url):
    if not db_url.startswith("postgresql"):
        pytest.skip("PostgreSQL: the LATERAL probe per endpoint is PostgreSQL's")
    with engine.db.tx() as s:
        s.execute(
            text(
                """insert into webhook_endpoints
                   (id, principal, owners, url, event_types, secret, active, created_at)
                   select 'whe_' || md5('atk' || g), 'svc:tenant' || g,
                          ('["tenant' || g || '"]')::json,
                          'http://127.0.0.1:18499/t' || g, '["proof.failed"]'::json,
                          'whsec_x', true, now()
                   from generate_series(0, :n) g"""
            ),
            {"n": IDLE_ENDPOINTS},
        )
        noisy = s.execute(text("select id from webhook_endpoints where principal='svc:tenant0'"))
        noisy_id = noisy.scalar_one()
        # Tenant 0's receiver fails: its deliveries wait in backoff (a few are due again).
        s.execute(
            text(
                """insert into outbox_events
                   (id, type, owner_id, resource_type, resource_id, sequence, payload, created_at)
                   select 'evt_' || md5('atk' || g), 'proof.failed', 'tenant0', 'proof',
                          'p' || g, 1, '{}'::json, now() - interval '2 hours'
                   from generate_series(1, :n) g"""
            ),
            {"n": BACKLOG},
        )
        s.execute(
            text(
                """insert into webhook_deliveries
                   (id, event_id, endpoint_id, status, attempts, next_attempt_at,
                    created_at, updated_at)
                   select 'whd_' || md5('atk' || g), 'evt_' || md5('atk' || g), :ep,
                          'pending', 3,
                          -- half have waited out their backoff: due again (a receiver
                          -- back from an outage); the rest wait in backoff
                          case when g % 2 = 0 then now() - interval '1 minute'
                               else now() + interval '3 hours' end,
                          now(), now()
                   from generate_series(1, :n) g"""
            ),
            {"n": BACKLOG, "ep": noisy_id},
        )
    with engine.db.engine.connect() as c:
        c.exec_driver_sql("ANALYZE webhook_deliveries")
        c.exec_driver_sql("ANALYZE outbox_events")
        c.exec_driver_sql("ANALYZE webhook_endpoints")
        c.commit()

    seen: list[tuple[str, Any]] = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        if "LATERAL" in statement.upper():
            seen.append((statement, parameters))

    event.listen(engine.db.engine, "before_cursor_execute", capture)
    try:
        with engine.db.tx() as s:
            got = repo.due(s, datetime.now(UTC), 32, 2)
            assert len(got) == 2  # tenant 0's two slots; nothing else is due
    finally:
        event.remove(engine.db.engine, "before_cursor_execute", capture)
    assert seen, "the candidates' query was not seen"
    statement, parameters = seen[0]
    with engine.db.engine.connect() as c:
        raw = c.exec_driver_sql("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters)
        plan = raw.scalar_one()[0]["Plan"]
    read = _rows_read(plan, "webhook_deliveries")
    import json as _j
    import os as _o

    if _o.environ.get("SHOW_PLAN"):
        print(_j.dumps(plan, indent=1)[:6000])
    # Reading the one backlog once (what the query before this change did when nothing was
    # due) is at most BACKLOG rows; once per active endpoint is (IDLE_ENDPOINTS + 1) x that.
    assert read <= 2 * BACKLOG, (
        f"one claim read {read:.0f} delivery rows for a backlog of {BACKLOG} "
        f"and {IDLE_ENDPOINTS + 1} active endpoints"
    )
