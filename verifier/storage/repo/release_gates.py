"""Release-gate evidence (storage.release_gate_models): append, and the newest per gate."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

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
