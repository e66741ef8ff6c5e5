"""Receipts (storage.models Receipt): one per credited proof, one per paid session."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import bindparam, or_, select
from sqlalchemy.orm import Session

from verifier.storage.models import Entitlement, EntitlementStatus, Receipt
from verifier.storage.repo import rows

_ID_FOR_PROOF = select(Receipt.id).where(Receipt.proof_id == bindparam("pid"))


def id_for_proof(s: Session, proof_id: str) -> str | None:
    return s.scalar(_ID_FOR_PROOF, {"pid": proof_id})


def ids_for_proofs(s: Session, proof_ids: Sequence[str]) -> dict[str, str]:
    """Receipt id per proof, for those of `proof_ids` that have one, in one query."""
    q = select(Receipt.proof_id, Receipt.id).where(rows.among(s, Receipt.proof_id, proof_ids))
    return {pid: rid for pid, rid in s.execute(q).all()}


def crediting(s: Session, proof_ids: Sequence[str]) -> dict[str, str]:
    """Receipt id per proof, for those of `proof_ids` whose receipt still credits the payer:
    its entitlement active or pending (a credit half written), not revoked."""
    q = (
        select(Receipt.proof_id, Receipt.id)
        .join(Entitlement, Entitlement.receipt_id == Receipt.id, isouter=True)
        .where(
            rows.among(s, Receipt.proof_id, proof_ids),
            or_(Entitlement.id.is_(None), Entitlement.status != EntitlementStatus.revoked),
        )
    )
    return {pid: rid for pid, rid in s.execute(q).all()}


def for_proof(s: Session, proof_id: str) -> Receipt | None:
    return s.scalar(select(Receipt).where(Receipt.proof_id == proof_id))


def for_session(s: Session, session_id: str) -> Receipt | None:
    return s.scalar(select(Receipt).where(Receipt.session_id == session_id))


def touching(s: Session, proof_ids: Sequence[str], session_ids: Sequence[str]) -> list[Receipt]:
    """Receipts of any of `proof_ids` or any of `session_ids`, in one query."""
    q = select(Receipt).where(
        or_(
            rows.among(s, Receipt.proof_id, proof_ids),
            rows.among(s, Receipt.session_id, session_ids),
        )
    )
    return list(s.scalars(q).all())


def stage(s: Session, r: Receipt) -> Receipt:
    """A receipt written with the session's other changes at its next flush (an apply batch:
    one INSERT for all of them; its id is given, and its unique constraints decide then)."""
    if r.id is None:
        raise ValueError("receipts.stage: the receipt's id must be given")
    s.add(r)
    return r


def created_at_for_proof(s: Session, proof_id: str) -> datetime | None:
    return s.scalar(select(Receipt.created_at).where(Receipt.proof_id == proof_id))


def add(s: Session, r: Receipt) -> Receipt:
    """Insert the receipt now, so its id exists and its unique constraints decide here."""
    s.add(r)
    s.flush()
    return r
