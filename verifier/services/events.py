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
from sqlalchemy import event
from sqlalchemy.orm import Session

from verifier.core.timeutil import iso
from verifier.storage.repo import outbox as outbox_repo
from verifier.storage.webhook_models import (
    DeliveryStatus,
    EventType,
    OutboxEvent,
    prefixed_id,
)

__all__ = ["EventType", "emit", "envelope", "OWNERLESS"]

# Events about the platform rather than one owner's payment; every subscriber may see them.
OWNERLESS = frozenset({EventType.rail_paused, EventType.rail_resumed})


def emit(
    s: Session,
    now: datetime,
    type: str,
    owner_id: str | None,
    resource_type: str,
    resource_id: str,
    resource: dict[str, Any],
    first_of_resource: bool = False,
) -> str:
    """Write one event and its deliveries in the caller's transaction (never commits);
    returns the event id. `first_of_resource`: the caller knows, under the resource's lock,
    that no event about it exists yet (its sequence starts at 1 without a lookup)."""
    et = EventType(type)  # an unknown type is a programming error, not a runtime condition
    if et in OWNERLESS:
        owner_id = None
    elif not owner_id:
        # SECURITY: an owner event without an owner could not be routed to its owner only.
        raise ValueError(f"{et}: owner_id is required")
    # Freeze a JSON copy now: the caller may keep mutating its dict afterwards.
    payload = orjson.loads(orjson.dumps(resource))
    info = s.info
    if _LOCKED_KEY not in info:
        # Sequence numbers are max+1 per resource: computed under the audit chain's lock
        # (storage.repo.outbox.lock_sequences), taken once per transaction.
        outbox_repo.lock_sequences(s)
        info[_LOCKED_KEY] = True
    s.flush()  # ORM changes the caller made first are written first
    seqs = info.get(_SEQ_KEY)
    if seqs is None:
        seqs = info[_SEQ_KEY] = {}
    last = seqs.get((resource_type, resource_id))
    if last is None:
        last = 0 if first_of_resource else outbox_repo.last_sequence(s, resource_type, resource_id)
    seq = last + 1
    event_id = prefixed_id("evt")
    outbox_repo.insert_event(
        s,
        {
            "id": event_id,
            "type": et.value,
            "owner_id": owner_id,
            "resource_type": resource_type,
            "resource_id": resource_id,
            "sequence": seq,
            "payload": payload,
            "created_at": now,
        },
    )
    seqs[(resource_type, resource_id)] = seq  # only once the row is written: no gaps
    rows = [
        {
            "id": prefixed_id("whd"),
            "event_id": event_id,
            "endpoint_id": ep_id,
            "status": DeliveryStatus.pending.value,
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
        }
        for ep_id in _subscribers(s, et, owner_id)
    ]
    outbox_repo.insert_deliveries(s, rows, (resource_type, resource_id, seq), now)
    return event_id


def prime_sequences(s: Session, resource_type: str, resource_ids: list[str]) -> None:
    """Read the last sequence number of many resources in one query, for a transaction about
    to emit about each of them (a batch): under the lock, kept like emit's own reads."""
    if _LOCKED_KEY not in s.info:
        outbox_repo.lock_sequences(s)
        s.info[_LOCKED_KEY] = True
    s.flush()
    last = outbox_repo.last_sequences(s, resource_type, resource_ids)
    seqs = s.info.setdefault(_SEQ_KEY, {})
    for rid in resource_ids:
        seqs.setdefault((resource_type, rid), last.get(rid, 0))


# Per transaction, in `s.info` (dropped by `_forget`): whether this transaction holds the
# lock, the last sequence number it wrote per resource, and the active endpoints.
_LOCKED_KEY = "railproof.outbox_locked"
_SEQ_KEY = "railproof.outbox_seq"
_ENDPOINTS_KEY = "railproof.outbox_endpoints"
_KEYS = (_LOCKED_KEY, _SEQ_KEY, _ENDPOINTS_KEY)


@event.listens_for(Session, "after_transaction_end")
def _forget(session: Session, _transaction: object) -> None:
    # Every Session, however made: once its transaction ends (commit, rollback, close) or any
    # savepoint in it does, the lock may be gone and a rolled-back event or endpoint with it.
    for k in _KEYS:
        session.info.pop(k, None)


@event.listens_for(Session, "after_flush")
def _forget_on_flush(session: Session, _context: object) -> None:
    # An ORM flush may have written an endpoint or an outbox row this transaction's cache has
    # not seen; emit's own statements are Core and never flush. (The lock is kept: it is a
    # transaction-level lock.)
    session.info.pop(_SEQ_KEY, None)
    session.info.pop(_ENDPOINTS_KEY, None)


def expect(s: Session) -> None:
    """The transaction is about to append to the audit chain and then emit: the active
    endpoints are read in the round trip that takes the chain's lock, not in one of their
    own while it is held (PostgreSQL; the same read at the same point: after the lock)."""
    if _LOCKED_KEY in s.info or _ENDPOINTS_KEY in s.info:
        return

    def keep(active: list[outbox_repo.Endpoint]) -> None:
        s.info[_ENDPOINTS_KEY] = active

    outbox_repo.active_endpoints_with_lock(s, keep)


def _subscribers(s: Session, et: EventType, owner_id: str | None) -> list[str]:
    # Endpoints are few (capped per token), so filtering JSON lists in Python keeps one query
    # that works the same on SQLite and PostgreSQL. The list is read once per transaction,
    # under the lock `lock_sequences` took, and shared by its emits: creating or deleting an
    # endpoint appends to the audit chain, so it takes the same lock and commits before this
    # transaction's first emit or after all of them, never in between.
    active = s.info.get(_ENDPOINTS_KEY)
    if active is None:
        active = s.info[_ENDPOINTS_KEY] = outbox_repo.active_endpoints(s)
    out = []
    for ep_id, types, owners in active:
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
    return {
        "id": ev.id,
        "type": ev.type,
        "created_at": iso(ev.created_at),
        "owner_id": ev.owner_id,
        "data": ev.payload,
    }
