"""Receipts (storage.models Receipt): one per credited proof, one per paid session."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from verifier.storage.models import Receipt

_ID_FOR_PROOF = select(Receipt.id).where(Receipt.proof_id == bindparam("pid"))


def id_for_proof(s: Session, proof_id: str) -> str | None:
    return s.scalar(_ID_FOR_PROOF, {"pid": proof_id})


def ids_for_proofs(s: Session, proof_ids: Sequence[str]) -> dict[str, str]:
    """Receipt id per proof, for those of `proof_ids` that have one, in one query."""
    q = select(Receipt.proof_id, Receipt.id).where(Receipt.proof_id.in_(list(proof_ids)))
    return {pid: rid for pid, rid in s.execute(q).all()}


def for_proof(s: Session, proof_id: str) -> Receipt | None:
    return s.scalar(select(Receipt).where(Receipt.proof_id == proof_id))


def for_session(s: Session, session_id: str) -> Receipt | None:
    return s.scalar(select(Receipt).where(Receipt.session_id == session_id))


def created_at_for_proof(s: Session, proof_id: str) -> datetime | None:
    return s.scalar(select(Receipt.created_at).where(Receipt.proof_id == proof_id))


def add(s: Session, r: Receipt) -> Receipt:
    """Insert the receipt now, so its id exists and its unique constraints decide here."""
    s.add(r)
    s.flush()
    return r
