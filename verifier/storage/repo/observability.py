"""Reads behind the gauges /metrics computes from stored state at scrape time."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, exists, func, select
from sqlalchemy.orm import Session

from verifier.storage.models import (
    Approval,
    ApprovalStatus,
    Proof,
    ProofStatus,
    SettlementEvidence,
)


def oldest_review_since(s: Session) -> datetime | None:
    """When the oldest proof waiting for review (requires_review) was submitted; an index
    scan of ix_proofs_status_created."""
    return s.scalar(
        select(func.min(Proof.created_at)).where(Proof.status == ProofStatus.requires_review)
    )


def oldest_pending_approval_since(s: Session) -> datetime | None:
    return s.scalar(
        select(func.min(Approval.created_at)).where(Approval.status == ApprovalStatus.pending)
    )


def oldest_unsettled_by_rail(s: Session) -> dict[str, datetime]:
    """Per rail, when the oldest verified proof without final settlement evidence was
    submitted. Only proofs the worker still checks (next_check_at set: ix_proofs_due) can
    lack it, so a large history is not scanned."""
    final = exists().where(
        and_(
            SettlementEvidence.proof_id == Proof.id,
            SettlementEvidence.is_final.is_(True),
            SettlementEvidence.reorged.is_(False),
        )
    )
    rows = s.execute(
        select(Proof.rail_id, func.min(Proof.created_at))
        .where(Proof.status == ProofStatus.verified, Proof.next_check_at.is_not(None), ~final)
        .group_by(Proof.rail_id)
    ).all()
    return {rail_id: since for rail_id, since in rows}
