"""Two-person approvals of rail changes (storage.models Approval)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from verifier.storage.models import Approval
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
