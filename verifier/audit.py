"""The audit log: append-only and hash-chained. Each event's hash covers its fields and the
previous event's hash, so changing, deleting or reordering any row breaks every link after it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from rails.base import canonical_json
from verifier.storage.models import AuditEvent
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


def append(s: Session, now: datetime, op: Operator, action: str, subject_type: str,
           subject_id: str, data: dict[str, Any] | None = None) -> AuditEvent:
    """Append one event inside the caller's transaction (it commits or rolls back with the
    state change it describes)."""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_AUDIT_LOCK})
    prev = s.scalar(select(AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1)) or GENESIS
    data = data or {}
    ev = AuditEvent(at=now, actor=op.actor, action=action, subject_type=subject_type,
                    subject_id=subject_id, data=data, incident_id=op.incident_id,
                    reason=op.reason, prev_hash=prev)
    ev.hash = event_hash(prev, now, op.actor, action, subject_type, subject_id, data,
                         op.incident_id, op.reason)
    s.add(ev)
    s.flush()
    return ev


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
