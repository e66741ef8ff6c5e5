"""Outbound events: the transactional outbox.

A state change calls `emit(s, ...)` inside the transaction that records it. The event row and
one pending delivery per subscribed endpoint are written in that same transaction, so they
commit together with the change (and survive a crash right after the commit, for the worker
to deliver) or roll back with it (no event is ever sent for a change that did not happen).
Delivery itself is verifier.webhooks' job.

Every event carries the resource as the API returns it, and a per-resource sequence number:
the worker never delivers event n+1 of a resource to an endpoint before event n is done.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import bindparam, func, insert, select, text
from sqlalchemy.orm import Session

from verifier.audit import _PG_AUDIT_LOCK
from verifier.storage.webhook_models import (
    DeliveryStatus,
    EventType,
    OutboxEvent,
    WebhookDelivery,
    WebhookEndpoint,
    prefixed_id,
)
from verifier.timeutil import iso

__all__ = ["EventType", "emit", "envelope", "OWNERLESS"]

# Events about the platform rather than one owner's payment; every subscriber may see them.
OWNERLESS = frozenset({EventType.rail_paused, EventType.rail_resumed})


# Built once; SQLAlchemy's compiled cache serves every emit. Core statements: these rows are
# write-only here, so the ORM's unit of work would only add cost on the hot path.
_OUTBOX, _ENDPOINTS = OutboxEvent.__table__, WebhookEndpoint.__table__
_NEXT_SEQ = select(func.max(_OUTBOX.c.sequence)).where(
    _OUTBOX.c.resource_type == bindparam("rt"), _OUTBOX.c.resource_id == bindparam("rid"))
_ACTIVE = (select(_ENDPOINTS.c.id, _ENDPOINTS.c.event_types, _ENDPOINTS.c.owners)
           .where(_ENDPOINTS.c.active.is_(True))
           .order_by(_ENDPOINTS.c.created_at, _ENDPOINTS.c.id))
_INSERT_EVENT = insert(_OUTBOX)
_INSERT_DELIVERY = insert(WebhookDelivery.__table__)


def emit(s: Session, now: datetime, type: str, owner_id: str | None, resource_type: str,
         resource_id: str, resource: dict[str, Any]) -> str:
    """Write one event and its deliveries in the caller's transaction (never commits);
    returns the event id."""
    et = EventType(type)  # an unknown type is a programming error, not a runtime condition
    if et in OWNERLESS:
        owner_id = None
    elif not owner_id:
        # SECURITY: an owner event without an owner could not be routed to its owner only.
        raise ValueError(f"{et}: owner_id is required")
    # Freeze a JSON copy now: the caller may keep mutating its dict afterwards.
    payload = orjson.loads(orjson.dumps(resource))
    _serialize(s)
    s.flush()  # ORM changes the caller made first are written first
    conn = s.connection()
    seq = (conn.execute(_NEXT_SEQ, {"rt": resource_type, "rid": resource_id}).scalar() or 0) + 1
    event_id = prefixed_id("evt")
    conn.execute(_INSERT_EVENT, {"id": event_id, "type": et.value, "owner_id": owner_id,
                                 "resource_type": resource_type, "resource_id": resource_id,
                                 "sequence": seq, "payload": payload, "created_at": now})
    rows = [{"id": prefixed_id("whd"), "event_id": event_id, "endpoint_id": ep_id,
             "status": DeliveryStatus.pending.value, "attempts": 0, "next_attempt_at": now,
             "created_at": now, "updated_at": now}
            for ep_id in _subscribers(conn, et, owner_id)]
    if rows:
        conn.execute(_INSERT_DELIVERY, rows)
    return event_id


def _serialize(s: Session) -> None:
    """Sequence numbers are max+1 per resource; two PostgreSQL transactions must not compute
    the same one. We take the audit chain's advisory lock (every state change appends to the
    audit chain in the same transaction anyway, so this adds no new contention, and one lock
    for both means no lock-order deadlock). SQLite transactions are already serial."""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_AUDIT_LOCK})


def _subscribers(conn: Any, et: EventType, owner_id: str | None) -> list[str]:
    # Endpoints are few (capped per token), so filtering JSON lists in Python keeps one query
    # that works the same on SQLite and PostgreSQL.
    out = []
    for ep_id, types, owners in conn.execute(_ACTIVE):
        if et.value not in (types or []):
            continue
        # SECURITY: owner isolation: an owner's event only reaches endpoints of tokens that
        # act for that owner.
        if owner_id is not None and owner_id not in (owners or []):
            continue
        out.append(ep_id)
    return out


def envelope(ev: OutboxEvent) -> dict[str, Any]:
    """The JSON body receivers get."""
    return {"id": ev.id, "type": ev.type, "created_at": iso(ev.created_at),
            "owner_id": ev.owner_id, "data": ev.payload}
