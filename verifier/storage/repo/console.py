"""The operator console's reads (services.console_reads): the filtered, paged proof list, the
records around one proof, the kill-switch history, console logouts and the counts behind the
health charts. Read-only: nothing here writes."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from verifier.storage.models import (
    AuditEvent,
    Entitlement,
    Proof,
    ProofStatus,
    Receipt,
    SettlementEvidence,
)
from verifier.storage.webhook_models import DeliveryStatus, WebhookDelivery


def proofs_page(
    s: Session,
    *,
    status: str | None,
    rail_id: str | None,
    failure_code: str | None,
    owner_id: str | None,
    created_before: datetime | None,
    term: str | None,
    offset: int,
    limit: int,
) -> list[Proof]:
    """Proofs newest first, filtered; `term` matches a proof, session or receipt id, a
    fingerprint or an on-chain reference exactly."""
    q = select(Proof).order_by(Proof.created_at.desc(), Proof.id)
    if status:
        q = q.where(Proof.status == status)
    if rail_id:
        q = q.where(Proof.rail_id == rail_id)
    if failure_code:
        q = q.where(Proof.failure_code == failure_code)
    if owner_id:
        q = q.where(Proof.owner_id == owner_id)
    if created_before is not None:
        q = q.where(Proof.created_at < created_before)
    if term:
        by_receipt = select(Receipt.proof_id).where(Receipt.id == term).scalar_subquery()
        q = q.where(
            or_(
                Proof.id == term,
                Proof.session_id == term,
                Proof.fingerprint == term,
                Proof.ref == term,
                Proof.id == by_receipt,
            )
        )
    return list(s.scalars(q.offset(offset).limit(limit)).all())


def latest_settlements(s: Session, proof_ids: Sequence[str]) -> dict[str, SettlementEvidence]:
    if not proof_ids:
        return {}
    mids = (
        select(func.max(SettlementEvidence.id))
        .where(SettlementEvidence.proof_id.in_(proof_ids))
        .group_by(SettlementEvidence.proof_id)
    )
    return {
        ev.proof_id: ev
        for ev in s.scalars(select(SettlementEvidence).where(SettlementEvidence.id.in_(mids)))
    }


def receipt_ids(s: Session, proof_ids: Sequence[str]) -> dict[str, str]:
    if not proof_ids:
        return {}
    return {
        pid: rid
        for pid, rid in s.execute(
            select(Receipt.proof_id, Receipt.id).where(Receipt.proof_id.in_(proof_ids))
        )
    }


def failure_codes(s: Session) -> list[str]:
    return sorted(
        str(c)
        for (c,) in s.execute(
            select(Proof.failure_code).distinct().where(Proof.failure_code.is_not(None))
        )
    )


def receipt_of_proof(s: Session, proof_id: str) -> Receipt | None:
    return s.scalar(select(Receipt).where(Receipt.proof_id == proof_id))


def entitlement_of_session(s: Session, session_id: str) -> Entitlement | None:
    return s.scalar(select(Entitlement).where(Entitlement.session_id == session_id))


def audit_of_subjects(s: Session, subject_ids: Sequence[str], limit: int) -> list[AuditEvent]:
    return list(
        s.scalars(
            select(AuditEvent)
            .where(AuditEvent.subject_id.in_(subject_ids))
            .order_by(AuditEvent.id)
            .limit(limit)
        ).all()
    )


def audit_of_actions(s: Session, actions: Sequence[str], limit: int) -> list[AuditEvent]:
    return list(
        s.scalars(
            select(AuditEvent)
            .where(AuditEvent.action.in_(actions))
            .order_by(AuditEvent.id.desc())
            .limit(limit)
        ).all()
    )


def has_event(s: Session, subject_id: str, action: str) -> bool:
    """Whether the audit log holds `action` on `subject_id` (by the subject index)."""
    return (
        s.scalar(
            select(AuditEvent.id)
            .where(AuditEvent.subject_id == subject_id, AuditEvent.action == action)
            .limit(1)
        )
        is not None
    )


# -- health --------------------------------------------------------------------------------
def proofs_created_since(s: Session, since: datetime, limit: int) -> list[tuple[datetime, str]]:
    return [
        (at, st)
        for at, st in s.execute(
            select(Proof.created_at, Proof.status).where(Proof.created_at >= since).limit(limit)
        )
    ]


def failures_by_code_since(s: Session, since: datetime, limit: int) -> list[tuple[str, int]]:
    q = (
        select(Proof.failure_code, func.count())
        .where(Proof.failure_code.is_not(None), Proof.created_at >= since)
        .group_by(Proof.failure_code)
        .order_by(func.count().desc(), Proof.failure_code)
        .limit(limit)
    )
    return [(str(code), int(n)) for code, n in s.execute(q)]


def pending_created_at(s: Session, limit: int) -> list[datetime]:
    return [
        c
        for (c,) in s.execute(
            select(Proof.created_at).where(Proof.status == ProofStatus.pending).limit(limit)
        )
    ]


def dead_letters_since(s: Session, since: datetime, limit: int) -> list[datetime]:
    return [
        at
        for (at,) in s.execute(
            select(WebhookDelivery.updated_at)
            .where(
                WebhookDelivery.status == DeliveryStatus.dead_letter,
                WebhookDelivery.updated_at >= since,
            )
            .limit(limit)
        )
    ]


def dead_letter_depth(s: Session) -> int:
    return (
        s.scalar(
            select(func.count())
            .select_from(WebhookDelivery)
            .where(WebhookDelivery.status == DeliveryStatus.dead_letter)
        )
        or 0
    )


def proofs_by_status(s: Session) -> dict[str, int]:
    return {st: n for st, n in s.execute(select(Proof.status, func.count()).group_by(Proof.status))}
