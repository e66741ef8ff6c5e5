"""The audit log: append-only and hash-chained. Each event's hash covers its fields and the
previous event's hash, so changing, deleting or reordering any row breaks every link after it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import event, insert, select, text
from sqlalchemy.orm import Session

from rails.base import canonical_json
from verifier.storage.models import AuditEvent
from verifier.storage.prepared import Prepared
from verifier.timeutil import iso

GENESIS = "0" * 64
_PG_AUDIT_LOCK = 0x7261696C  # one advisory lock serializes appends to the chain


@dataclass(frozen=True)
class Operator:
    """Who does a staff action and why; stored with the action."""

    actor: str
    incident_id: str | None = None
    reason: str | None = None


def event_hash(prev_hash: str, at: datetime, actor: str, action: str, subject_type: str,
               subject_id: str, data: dict[str, Any], incident_id: str | None,
               reason: str | None) -> str:
    doc = {"prev": prev_hash, "at": iso(at), "actor": actor, "action": action,
           "subject_type": subject_type, "subject_id": subject_id, "data": data,
           "incident_id": incident_id, "reason": reason}
    return hashlib.sha256(canonical_json(doc)).hexdigest()


# Built and prepared once (storage.prepared): every append runs the same compiled statements.
_INSERT = Prepared(insert(AuditEvent.__table__))
_HEAD = Prepared(select(AuditEvent.__table__.c.hash)
                 .order_by(AuditEvent.__table__.c.id.desc()).limit(1))
_LOCK = text("SELECT pg_advisory_xact_lock(:k)")
_HEAD_KEY = "railproof.audit_head"


@event.listens_for(Session, "after_transaction_end")
def _forget_head(session: Session, _transaction: Any) -> None:
    # Every Session, however made: once its transaction ends (commit, rollback, close) or any
    # savepoint in it does, the cached head may no longer be the chain's head.
    session.info.pop(_HEAD_KEY, None)


def append(s: Session, now: datetime, op: Operator, action: str, subject_type: str,
           subject_id: str, data: dict[str, Any] | None = None) -> int:
    """Append one event inside the caller's transaction (it commits or rolls back with the
    state change it describes); returns its id.

    The chain's head is read once per transaction, under the lock that keeps every other
    appender out until this transaction ends (PostgreSQL: the advisory lock; SQLite: the
    write lock BEGIN IMMEDIATE took), and then kept in `s.info`: later appends in the same
    transaction link to the event this one wrote. The end of the transaction, or of any
    savepoint in it, drops it (`_forget_head`), so it never outlives what it describes."""
    conn = s.connection()
    prev = s.info.get(_HEAD_KEY)
    if prev is None:
        if conn.dialect.name == "postgresql":
            conn.execute(_LOCK, {"k": _PG_AUDIT_LOCK})
        prev = _HEAD.scalar(conn) or GENESIS
    data = data or {}
    h = event_hash(prev, now, op.actor, action, subject_type, subject_id, data,
                   op.incident_id, op.reason)
    row = {"at": now, "actor": op.actor, "action": action, "subject_type": subject_type,
           "subject_id": subject_id, "data": data, "incident_id": op.incident_id,
           "reason": op.reason, "prev_hash": prev, "hash": h}
    # A prepared insert: the row is write-only here, so the ORM's unit of work buys nothing.
    event_id = _INSERT.insert(conn, row)
    s.info[_HEAD_KEY] = h
    return event_id


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    events: int
    first_broken_id: int | None = None
    message: str = "audit chain intact"

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "events": self.events, "first_broken_id": self.first_broken_id,
                "message": self.message}


def verify_chain(s: Session, batch: int = 5000) -> ChainReport:
    prev, count, last_id = GENESIS, 0, 0
    while True:
        rows = s.scalars(select(AuditEvent).where(AuditEvent.id > last_id)
                         .order_by(AuditEvent.id).limit(batch)).all()
        if not rows:
            return ChainReport(True, count)
        for ev in rows:
            if ev.prev_hash != prev:
                return ChainReport(False, count, ev.id,
                                   f"event {ev.id}: prev_hash does not link to the event before it")
            want = event_hash(ev.prev_hash, ev.at, ev.actor, ev.action, ev.subject_type,
                              ev.subject_id, ev.data or {}, ev.incident_id, ev.reason)
            if want != ev.hash:
                return ChainReport(False, count, ev.id,
                                   f"event {ev.id}: contents do not match its hash")
            prev, count, last_id = ev.hash, count + 1, ev.id
