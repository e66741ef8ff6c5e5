"""Verification attempts (storage.models VerificationAttempt): one row per verification run."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, insert, literal, or_, select
from sqlalchemy.orm import Session

from verifier.storage.models import ProofStatus, VerificationAttempt
from verifier.storage.repo import rows
from verifier.storage.repo.prepared import Prepared
from verifier.storage.repo.rows import Record

_VA = VerificationAttempt
_INSERT = Prepared(insert(rows.table(_VA)))
# Built once, so every call is a compiled-cache hit without rebuilding the statement.
_LATEST_VERIFIED = (
    select(_VA)
    .where(_VA.proof_id == bindparam("pid"), _VA.status == ProofStatus.verified.value)
    .order_by(_VA.id.desc())
    .limit(1)
)


def insert_attempt(s: Session, row: dict[str, Any], reserved: int | None = None) -> int:
    """Write one attempt (Core insert: write-only in its transaction); returns its id.
    `reserved`: the id `reserve_id_behind` drew for it, so the row is deferred to the
    transaction's next round trip (storage.repo.prepared) instead of taking one now."""
    if reserved is not None:
        _INSERT.defer(s.connection(), {**row, "id": reserved})
        return reserved
    return int(_INSERT.insert(s.connection(), row))


# The attempts' own sequence, as the column's default draws from it.
_NEXT_ID = Prepared(
    select(func.nextval(func.pg_get_serial_sequence(literal(_VA.__tablename__), literal("id"))))
)


def reserve_id_behind(s: Session) -> Callable[[], int | None]:
    """An id for the transaction's next attempt, drawn behind its next statement, in that
    round trip, on PostgreSQL (prepared.Prepared.behind); the answer is None elsewhere (the
    insert assigns it). Drawn as the column's default would draw it: ids still follow the
    order attempts of one proof are recorded in, under its row lock."""
    if not rows.is_postgres(s):
        return lambda: None
    later = _NEXT_ID.behind(s.connection(), {})
    return lambda: int(later.rows()[0][0])


def pending_run(
    s: Session, proof_id: str, code: str, neutral: Collection[str] = ()
) -> list[datetime]:
    """When each attempt of the proof's latest unbroken run of attempts `pending` with `code`
    was recorded, oldest first: its attempts with that code after any other attempt but ones
    `pending` with a `neutral` code (which neither break the run nor belong to it). Empty
    when there is no such attempt."""
    breaks = (
        select(func.max(_VA.id))
        .where(
            _VA.proof_id == proof_id,
            or_(
                _VA.status != ProofStatus.pending.value,
                _VA.failure_code.is_(None),
                _VA.failure_code.not_in([code, *neutral]),
            ),
        )
        .scalar_subquery()
    )
    return list(
        s.scalars(
            select(_VA.created_at)
            .where(
                _VA.proof_id == proof_id,
                _VA.id > func.coalesce(breaks, 0),
                _VA.failure_code == code,
            )
            .order_by(_VA.id)
        )
    )


def add(s: Session, attempt: VerificationAttempt) -> VerificationAttempt:
    """An attempt built as a model, written with the session's other changes."""
    s.add(attempt)
    return attempt


def latest_verified(s: Session, proof_id: str) -> VerificationAttempt | None:
    return s.scalar(_LATEST_VERIFIED, {"pid": proof_id})


def latest_verified_ids(s: Session, proof_ids: Sequence[str]) -> dict[str, int]:
    """The latest verified attempt's id of each proof that has one, in one query."""
    q = (
        select(_VA.proof_id, func.max(_VA.id))
        .where(rows.among(s, _VA.proof_id, proof_ids), _VA.status == ProofStatus.verified.value)
        .group_by(_VA.proof_id)
    )
    return {pid: int(aid) for pid, aid in s.execute(q).all()}


def latest_verified_many(s: Session, proof_ids: Sequence[str]) -> dict[str, Record]:
    """The latest verified attempt of each proof that has one, in one query, as plain records
    (an apply batch only reads what was observed)."""
    t = rows.table(_VA)
    newest = (
        select(func.max(t.c.id))
        .where(rows.among(s, t.c.proof_id, proof_ids), t.c.status == ProofStatus.verified.value)
        .group_by(t.c.proof_id)
    )
    got = s.execute(select(t).where(t.c.id.in_(newest))).mappings()
    return {r["proof_id"]: Record(r) for r in got}


def for_proof(s: Session, proof_id: str) -> list[VerificationAttempt]:
    return list(s.scalars(select(_VA).where(_VA.proof_id == proof_id).order_by(_VA.id)).all())
