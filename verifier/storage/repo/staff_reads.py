"""The staff reads' queries (verifier.services.queries): entitlements, receipts, approvals and
the audit trail, filtered and newest first, each at most `limit` rows."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from verifier.storage.models import Approval, AuditEvent, Entitlement, Receipt


def entitlements_of_owner(
    s: Session, owner_id: str, limit: int, after: Entitlement | None = None
) -> list[Entitlement]:
    """The owner's entitlements in the order they were committed (oldest first), at most
    `limit`, those after `after` (a page's last); a walk of ix_entitlements_owner_seq.

    By `seq`, not by created_at: a row committed after a page was read is always after that
    page's last (storage.repo.entitlements `number`), so a walk sees it on a later page."""
    E = Entitlement
    # One without a place yet (written by a release before 0020, until the worker numbers
    # it: entitlements.number_unplaced) is left out: at its place it could end a page, and
    # no later page would follow it.
    q = select(E).where(E.owner_id == owner_id, E.seq.is_not(None)).order_by(E.seq).limit(limit)
    if after is not None:
        q = q.where(E.seq > after.seq)
    return list(s.scalars(q).all())


def entitlement(s: Session, entitlement_id: str) -> Entitlement | None:
    return s.get(Entitlement, entitlement_id)


def receipt(s: Session, receipt_id: str) -> Receipt | None:
    return s.get(Receipt, receipt_id)


def receipts(s: Session, owner_id: str | None, rail_id: str | None, limit: int) -> list[Receipt]:
    q = select(Receipt)
    if owner_id is not None:
        q = q.where(Receipt.owner_id == owner_id)
    if rail_id is not None:
        q = q.where(Receipt.rail_id == rail_id)
    return list(s.scalars(q.order_by(Receipt.created_at.desc(), Receipt.id).limit(limit)).all())


def approvals(s: Session, status: str | None, limit: int) -> list[Approval]:
    q = select(Approval)
    if status is not None:
        q = q.where(Approval.status == status)
    return list(s.scalars(q.order_by(Approval.created_at.desc(), Approval.id).limit(limit)).all())


def audit_events(
    s: Session, limit: int, subject_id: str | None = None, incident_id: str | None = None
) -> list[AuditEvent]:
    q = select(AuditEvent)
    if subject_id is not None:
        q = q.where(AuditEvent.subject_id == subject_id)
    if incident_id is not None:
        q = q.where(AuditEvent.incident_id == incident_id)
    return list(s.scalars(q.order_by(AuditEvent.id.desc()).limit(limit)).all())
