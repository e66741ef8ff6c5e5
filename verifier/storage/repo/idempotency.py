"""Idempotency-Key claims (storage.models IdempotencyClaim)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from verifier.storage.models import ClaimStatus, IdempotencyClaim


def add_claim(s: Session, claim: IdempotencyClaim) -> None:
    """Insert a new claim; a claim with the same (principal, endpoint, key) raises
    IntegrityError at the latest when the transaction commits."""
    s.add(claim)


def get(s: Session, principal: str, endpoint: str, key: str) -> IdempotencyClaim | None:
    return s.get(IdempotencyClaim, (principal, endpoint, key))


def release_in_progress(s: Session, principal: str, endpoint: str, key: str) -> None:
    """Delete the claim while it is still in progress (a completed one is kept for good)."""
    s.execute(
        delete(IdempotencyClaim).where(
            IdempotencyClaim.principal == principal,
            IdempotencyClaim.endpoint == endpoint,
            IdempotencyClaim.key == key,
            IdempotencyClaim.status == ClaimStatus.in_progress,
        )
    )


def in_progress_since(
    s: Session,
    cutoff: datetime,
    limit: int | None = None,
) -> list[IdempotencyClaim]:
    """Claims still in progress that were made at or before `cutoff`, oldest first."""
    q = (
        select(IdempotencyClaim)
        .where(
            IdempotencyClaim.status == ClaimStatus.in_progress,
            IdempotencyClaim.created_at <= cutoff,
        )
        .order_by(IdempotencyClaim.created_at)
    )
    if limit is not None:
        q = q.limit(limit)
    return list(s.scalars(q).all())
