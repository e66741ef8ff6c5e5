"""Release-gate evidence (storage.release_gate_models): append, and the newest per gate."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from verifier.storage.models import AuditEvent
from verifier.storage.release_gate_models import ReleaseGateEvidence


def add(s: Session, ev: ReleaseGateEvidence) -> ReleaseGateEvidence:
    s.add(ev)
    s.flush()
    return ev


def newest_per_gate(s: Session, rail_id: str) -> dict[str, ReleaseGateEvidence]:
    """The standing record of each gate of one rail: its newest evidence."""
    rows = s.scalars(
        select(ReleaseGateEvidence)
        .where(ReleaseGateEvidence.rail_id == rail_id)
        .order_by(ReleaseGateEvidence.seq)
    ).all()
    out: dict[str, ReleaseGateEvidence] = {}
    for ev in rows:
        out[ev.gate] = ev  # ascending: the last one seen is the newest
    return out


def history(s: Session, rail_id: str, limit: int) -> list[ReleaseGateEvidence]:
    return list(
        s.scalars(
            select(ReleaseGateEvidence)
            .where(ReleaseGateEvidence.rail_id == rail_id)
            .order_by(ReleaseGateEvidence.seq.desc())
            .limit(limit)
        ).all()
    )


def newest_session_id(s: Session, rail_id: str) -> str | None:
    """A session of the rail for the kill-switch drill's proof submission (any owner)."""
    from verifier.storage.models import PaymentSession

    return s.scalar(
        select(PaymentSession.id)
        .where(PaymentSession.rail_id == rail_id)
        .order_by(PaymentSession.created_at.desc())
        .limit(1)
    )


def newest_audit_id(s: Session) -> int:
    """The audit chain's newest row id (0 when empty): a mark to count later rows from."""
    return int(s.scalar(select(func.max(AuditEvent.id))) or 0)


def pauses_after(s: Session, rail_id: str, after_id: int) -> int:
    """Pause requests on the rail recorded after audit row `after_id` (one per request, even
    when the rail was already paused). Appends to the chain are serialized, so ids follow
    commit order."""
    return int(
        s.scalar(
            select(func.count())
            .select_from(AuditEvent)
            .where(
                AuditEvent.subject_type == "rail",
                AuditEvent.subject_id == rail_id,
                AuditEvent.action == "rail.paused",
                AuditEvent.id > after_id,
            )
        )
        or 0
    )
