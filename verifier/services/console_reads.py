"""Reads of the operator console (verifier.http.console) beyond the staff API's service reads:
the filtered, paged proof list, the receipt, entitlement and audit trail around one proof,
the kill-switch history, whether a console session was logged out, and the counts behind the
health charts. Read-only; the console's actions go through gate and rails_admin, exactly as
the staff API's do. SQL lives in storage.repo.console."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from verifier.core.engine import Engine
from verifier.core.timeutil import iso
from verifier.core.timeutil import utc as _utc_or_none
from verifier.services.views import entitlement_view, proof_view, receipt_view
from verifier.storage.models import AuditEvent, ProofStatus
from verifier.storage.repo import console as repo

PROOF_STATUSES = [s.value for s in ProofStatus]
AGES = {
    "10m": timedelta(minutes=10),
    "1h": timedelta(hours=1),
    "2h": timedelta(hours=2),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
}
# Keys never shown from observed chain data or audit data (as services.proofs redacts
# evidence when it stores it), at any depth.
_REDACTED = {
    "signature",
    "signatures",
    "payload",
    "raw",
    "authorization",
    "secret",
    "token",
    "private_key",
    "proof",
}


def redact(value: object) -> object:
    if isinstance(value, dict):
        return {
            k: ("[redacted]" if str(k).lower() in _REDACTED else redact(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


@dataclass(frozen=True)
class ProofFilter:
    status: str | None = None
    rail_id: str | None = None
    failure_code: str | None = None
    owner_id: str | None = None
    older_than: str | None = None  # a key of AGES
    q: str | None = None  # a proof, session or receipt id, fingerprint or on-chain reference
    page: int = 1


def list_proofs(
    engine: Engine, f: ProofFilter, page_size: int = 25
) -> tuple[list[dict[str, Any]], bool]:
    """One page of proofs (as the staff API shows them), newest first, and whether a next
    page exists."""
    before = engine.now() - AGES[f.older_than] if f.older_than in AGES else None
    with engine.db.tx() as s:
        rows = repo.proofs_page(
            s,
            status=f.status,
            rail_id=f.rail_id,
            failure_code=f.failure_code,
            owner_id=f.owner_id,
            created_before=before,
            term=(f.q or "").strip() or None,
            offset=(f.page - 1) * page_size,
            limit=page_size + 1,
        )
        more = len(rows) > page_size
        rows = rows[:page_size]
        ids = [p.id for p in rows]
        latest = repo.latest_settlements(s, ids)
        receipts = repo.receipt_ids(s, ids)
        return [proof_view(p, latest.get(p.id), receipts.get(p.id)) for p in rows], more


def failure_codes(engine: Engine) -> list[str]:
    with engine.db.tx() as s:
        return repo.failure_codes(s)


def receipt_and_entitlement(
    engine: Engine, proof_id: str, session_id: str
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    with engine.db.tx() as s:
        r = repo.receipt_of_proof(s, proof_id)
        e = repo.entitlement_of_session(s, session_id)
        return (receipt_view(r) if r else None), (entitlement_view(e) if e else None)


def _event(e: AuditEvent) -> dict[str, Any]:
    return {
        "id": e.id,
        "at": iso(e.at),
        "actor": e.actor,
        "action": e.action,
        "subject_type": e.subject_type,
        "subject_id": e.subject_id,
        "data": redact(e.data),
        "incident_id": e.incident_id,
        "reason": e.reason,
    }


def audit_trail(engine: Engine, subject_ids: list[str], limit: int = 200) -> list[dict[str, Any]]:
    """The audit events of these subjects, oldest first."""
    with engine.db.tx() as s:
        return [_event(e) for e in repo.audit_of_subjects(s, subject_ids, limit)]


def recent_audit(engine: Engine, actions: tuple[str, ...], limit: int = 20) -> list[dict[str, Any]]:
    with engine.db.tx() as s:
        return [_event(e) for e in repo.audit_of_actions(s, actions, limit)]


def logged_out(engine: Engine, session_id: str) -> bool:
    """Whether a console session was ended (its `console.logout` audit event exists)."""
    with engine.db.tx() as s:
        return repo.has_event(s, session_id, "console.logout")


def utc(d: datetime) -> datetime:
    out = _utc_or_none(d)
    assert out is not None
    return out


# -- health --------------------------------------------------------------------------------
HOURS = 24
DAYS = 14
MAX_ROWS = 200_000  # the charts read at most this many rows per window
PENDING_BUCKETS: list[tuple[str, timedelta | None]] = [
    ("< 10 min", timedelta(minutes=10)),
    ("10–60 min", timedelta(hours=1)),
    ("1–2 h", timedelta(hours=2)),
    ("2–24 h", timedelta(hours=24)),
    ("> 24 h", None),
]


def health(engine: Engine) -> dict[str, Any]:
    """Counts from stored data, on the service's clock: proofs per hour by status (last 24 h,
    by creation), failures by code (last 7 days), pending proofs by age, webhook dead letters
    per day (last 14 days)."""
    now = utc(engine.now())
    start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=HOURS - 1)
    day0 = now.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=DAYS - 1)
    per_hour = {st: [0] * HOURS for st in PROOF_STATUSES}
    pending_age = {label: 0 for label, _ in PENDING_BUCKETS}
    dead = [0] * DAYS
    with engine.db.tx() as s:
        for created, status in repo.proofs_created_since(s, start, MAX_ROWS):
            i = int((utc(created) - start).total_seconds() // 3600)
            if 0 <= i < HOURS and status in per_hour:
                per_hour[status][i] += 1
        failures = repo.failures_by_code_since(s, now - timedelta(days=7), 12)
        for created in repo.pending_created_at(s, MAX_ROWS):
            age = now - utc(created)
            label = next(lb for lb, bound in PENDING_BUCKETS if bound is None or age < bound)
            pending_age[label] += 1
        for at in repo.dead_letters_since(s, day0, MAX_ROWS):
            i = (utc(at) - day0).days
            if 0 <= i < DAYS:
                dead[i] += 1
        depth = repo.dead_letter_depth(s)
        counts = repo.proofs_by_status(s)
    return {
        "now": iso(now),
        "hour_labels": [(start + timedelta(hours=i)).strftime("%H:00") for i in range(HOURS)],
        "per_hour": per_hour,
        "failures": [(code, n) for code, n in failures],
        "pending_age": list(pending_age.items()),
        "day_labels": [(day0 + timedelta(days=i)).strftime("%m-%d") for i in range(DAYS)],
        "dead_letters": dead,
        "dead_letter_depth": depth,
        "counts": {st: counts.get(st, 0) for st in PROOF_STATUSES},
    }


def age_text(now: datetime, created: str | None) -> str:
    """How long ago an ISO-8601 time was, for people ("3 h 20 min")."""
    if not created:
        return ""
    secs = int((utc(now) - datetime.fromisoformat(created.replace("Z", "+00:00"))).total_seconds())
    if secs < 3600:
        return f"{max(secs, 0) // 60} min"
    if secs < 86400:
        return f"{secs // 3600} h {secs % 3600 // 60} min"
    return f"{secs // 86400} d {secs % 86400 // 3600} h"
