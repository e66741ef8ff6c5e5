"""Two-person approvals of rail changes (storage.models Approval)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from verifier.storage.models import Approval, ApprovalStatus
from verifier.storage.repo import rows


def add(s: Session, a: Approval) -> Approval:
    """Insert the request now, so its id exists for the audit row."""
    s.add(a)
    s.flush()
    return a


def get_locked(s: Session, approval_id: str) -> Approval | None:
    return rows.get_locked(s, Approval, approval_id)


def newest_first(s: Session) -> list[Approval]:
    return list(s.scalars(select(Approval).order_by(Approval.created_at.desc())).all())


def production_approved(s: Session, rail_id: str) -> bool:
    """Whether the last production change two staff members approved for the rail enabled
    it."""
    last = s.scalar(
        select(Approval.value)
        .where(
            Approval.rail_id == rail_id,
            Approval.kind == "production",
            Approval.status == ApprovalStatus.approved.value,
        )
        .order_by(Approval.decided_at.desc())
        .limit(1)
    )
    return last == "true"


def approved_treasuries(s: Session, rail_id: str) -> set[str]:
    """Every treasury two staff members approved for the rail, the current one and those it
    replaced."""
    q = select(Approval.value).where(
        Approval.rail_id == rail_id,
        Approval.kind == "treasury",
        Approval.status == ApprovalStatus.approved.value,
    )
    return set(s.scalars(q).all())
