"""The transactional outbox's rows (storage.webhook_models OutboxEvent, WebhookDelivery) as
`verifier.services.events.emit` writes them: Core statements, write-only there."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import String, bindparam, case, func, insert, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from verifier.storage.repo import audit as audit_repo
from verifier.storage.repo import rows
from verifier.storage.repo.prepared import Prepared, send_deferred
from verifier.storage.webhook_models import OutboxEvent, WebhookDelivery, WebhookEndpoint

_OUTBOX, _ENDPOINTS = rows.table(OutboxEvent), rows.table(WebhookEndpoint)
# Built and prepared once (storage.repo.prepared).
_LAST_SEQ = Prepared(
    select(func.max(_OUTBOX.c.sequence)).where(
        _OUTBOX.c.resource_type == bindparam("rt"), _OUTBOX.c.resource_id == bindparam("rid")
    )
)
_ACTIVE = Prepared(
    select(_ENDPOINTS.c.id, _ENDPOINTS.c.event_types, _ENDPOINTS.c.owners)
    .where(_ENDPOINTS.c.active.is_(True))
    .order_by(_ENDPOINTS.c.created_at, _ENDPOINTS.c.id)
)
_INSERT_EVENT = Prepared(insert(_OUTBOX))
_DELIVERIES = rows.table(WebhookDelivery)
_D2, _E2 = _DELIVERIES.alias("before_d"), _OUTBOX.alias("before_e")
# The latest due time of the endpoint's pending deliveries of earlier events about the same
# resource: a new event cannot go before them, so it is due no sooner.
_BLOCKED_UNTIL = (
    select(func.max(_D2.c.next_attempt_at))
    .select_from(_D2.join(_E2, _E2.c.id == _D2.c.event_id))
    .where(
        _D2.c.endpoint_id == bindparam("endpoint_id"),
        _D2.c.status == "pending",
        _E2.c.resource_type == bindparam("rt"),
        _E2.c.resource_id == bindparam("rid"),
        _E2.c.sequence < bindparam("seq"),
    )
    .scalar_subquery()
)
_NOW = bindparam("now", type_=_DELIVERIES.c.next_attempt_at.type)
_COLS = ("id", "event_id", "endpoint_id", "status", "attempts", "created_at", "updated_at")
_INSERT_DELIVERY = insert(_DELIVERIES).from_select(
    [*_COLS, "next_attempt_at"],
    select(
        *(bindparam(c, type_=_DELIVERIES.c[c].type) for c in _COLS),
        case((_BLOCKED_UNTIL > _NOW, _BLOCKED_UNTIL), else_=_NOW),  # NULL: none blocks it
    ),
)


def lock_sequences(s: Session) -> None:
    """Sequence numbers are max+1 per resource; two PostgreSQL transactions must not compute
    the same one. This takes the audit chain's advisory lock (every state change appends to
    the audit chain in the same transaction anyway, so this adds no new contention, and one
    lock for both means no lock-order deadlock). SQLite transactions are already serial."""
    audit_repo.lock_chain(s)


def last_sequence(s: Session, resource_type: str, resource_id: str) -> int:
    """The resource's last event sequence number (0: none yet). Read under `lock_sequences`."""
    return int(_LAST_SEQ.scalar(s.connection(), {"rt": resource_type, "rid": resource_id}) or 0)


def last_sequences(s: Session, resource_type: str, resource_ids: list[str]) -> dict[str, int]:
    """Each resource's last event sequence number, for those that have events, in one query.
    Read under `lock_sequences`.

    On PostgreSQL one lookup per id (a correlated max over the unique index, newest first),
    driven by the ids: a `resource_id = ANY(...)` filter let the planner read every event of
    the resource type and filter them, a sweep's batch costing more the longer the outbox
    (46–72 ms a batch of 256 at ~8,000 events, where the lookups take ~1.6 ms; docs/bench.md,
    "The worker's batches"). SQLite looks an IN list up in the index already."""
    if rows.is_postgres(s):
        ids = (
            func.unnest(bindparam("ids", list(resource_ids), type_=postgresql.ARRAY(String())))
            .table_valued("rid")
            .render_derived(name="ids")
        )
        last = (
            select(func.max(_OUTBOX.c.sequence))
            .where(_OUTBOX.c.resource_type == resource_type, _OUTBOX.c.resource_id == ids.c.rid)
            .scalar_subquery()
        )
        got = s.execute(select(ids.c.rid, last)).all()
        return {rid: int(n) for rid, n in got if n is not None}
    q = (
        select(_OUTBOX.c.resource_id, func.max(_OUTBOX.c.sequence))
        .where(_OUTBOX.c.resource_type == resource_type, _OUTBOX.c.resource_id.in_(resource_ids))
        .group_by(_OUTBOX.c.resource_id)
    )
    return {rid: int(n) for rid, n in s.execute(q).all()}


Endpoint = tuple[str, list[str] | None, list[str] | None]  # id, event types, owners


def active_endpoints(s: Session) -> list[Endpoint]:
    """(id, event types, owners) of every active endpoint, oldest first."""
    return [(r[0], r[1], r[2]) for r in _ACTIVE.all(s.connection())]


def active_endpoints_with_lock(s: Session, keep: Callable[[list[Endpoint]], None]) -> None:
    """`active_endpoints`, read in the round trip that takes `lock_sequences`' lock should
    this transaction take it next through the audit chain's append (`keep` gets them then)."""
    audit_repo.read_with_lock(s, _ACTIVE, lambda got: keep([(r[0], r[1], r[2]) for r in got]))


def insert_event(s: Session, row: dict[str, Any]) -> None:
    _INSERT_EVENT.defer(s.connection(), row)


def insert_deliveries(
    s: Session, rows: list[dict[str, Any]], resource: tuple[str, str, int], now: datetime
) -> None:
    """Every delivery of one event (`resource`: its type, id and sequence) in one executemany,
    each due `now`, or when the endpoint's pending delivery of an earlier event about the
    resource is due if that is later. Such a delivery waits for that one anyway: due now, it
    would sit in every claim's range, read and passed over (for up to the backoff's
    longest wait) while its earlier event retries."""
    if rows:
        rt, rid, seq = resource
        conn = s.connection()
        send_deferred(conn)
        conn.execute(
            _INSERT_DELIVERY,
            [{**r, "rt": rt, "rid": rid, "seq": seq, "now": now} for r in rows],
        )
