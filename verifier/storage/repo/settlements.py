"""Settlement evidence (storage.models SettlementEvidence): what the chain said about a
verified transfer's finality, newest last."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, func, insert, select
from sqlalchemy.orm import Session

from verifier.storage.models import SettlementEvidence
from verifier.storage.repo import rows
from verifier.storage.repo.prepared import Prepared
from verifier.storage.repo.rows import Record

_SE = SettlementEvidence
_INSERT = Prepared(insert(rows.table(_SE)))
_LATEST = select(_SE).where(_SE.proof_id == bindparam("pid")).order_by(_SE.id.desc()).limit(1)


def insert_evidence(s: Session, row: dict[str, Any]) -> None:
    """Write one piece of evidence (Core insert, write-only). Flushes first: the attempt it
    points at may still be pending in the session. Deferred (storage.repo.prepared): nothing
    in the transaction needs its id back, and anything that reads evidence sends it first,
    so a finality sweep's batch writes its evidence without a round trip per proof."""
    s.flush()
    _INSERT.defer(s.connection(), row)


def latest(s: Session, proof_id: str) -> SettlementEvidence | None:
    return s.scalar(_LATEST, {"pid": proof_id})


def latest_many(s: Session, proof_ids: Sequence[str]) -> dict[str, Record]:
    """The latest evidence of each proof that has any, in one query, as plain records (a
    finality batch only compares them: no ORM object per row)."""
    t = rows.table(_SE)
    ids = list(proof_ids)
    newest = select(func.max(t.c.id)).where(rows.among(s, t.c.proof_id, ids)).group_by(t.c.proof_id)
    got = s.execute(select(t).where(t.c.id.in_(newest))).mappings()
    return {r["proof_id"]: Record(r) for r in got}


def proofs_settled_in(s: Session, tx_hashes: Sequence[str]) -> set[str]:
    """The proofs with evidence of settling in any of these transactions (every proof a
    receipt can credit has some: the gate asks for final settlement). Read by hand, for a
    person's resolution of a transfer: a scan is cheap at that pace, an index is not."""
    t = rows.table(_SE)
    return set(s.scalars(select(t.c.proof_id).where(rows.among(s, t.c.tx_hash, list(tx_hashes)))))


def settled_since_reorg(s: Session, proof_ids: Sequence[str]) -> set[str]:
    """Which of these proofs the chain has shown settled (evidence naming a block or a slot,
    not reorged) since its last reorg, if any, in one query."""
    t = rows.table(_SE)
    r = t.alias("reorged")
    last_reorg = (
        select(func.coalesce(func.max(r.c.id), 0))
        .where(r.c.proof_id == t.c.proof_id, r.c.reorged.is_(True))
        .scalar_subquery()
    )
    q = (
        select(t.c.proof_id)
        .where(
            rows.among(s, t.c.proof_id, list(proof_ids)),
            (t.c.block_number.is_not(None)) | (t.c.slot.is_not(None)),
            t.c.reorged.is_(False),
            t.c.id > last_reorg,
        )
        .distinct()
    )
    return set(s.scalars(q))


def for_proof(s: Session, proof_id: str) -> list[SettlementEvidence]:
    return list(s.scalars(select(_SE).where(_SE.proof_id == proof_id).order_by(_SE.id)).all())
