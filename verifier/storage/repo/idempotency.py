"""Idempotency-Key claims (storage.models IdempotencyClaim)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from verifier.storage.models import ClaimStatus, IdempotencyClaim
from verifier.storage.repo import rows
from verifier.storage.repo.prepared import Later, Prepared

_C = rows.table(IdempotencyClaim)
# Every mutating request with a key runs both (storage.repo.prepared): Core statements,
# no ORM object for a row the request only writes.
_INSERT = Prepared(insert(_C))
_INSERT_PG = Prepared(postgresql.insert(_C).on_conflict_do_nothing())
# SECURITY: only the claim the request wrote (its request hash and creation time): staff may
# release a claim that looked stuck while its request still ran, and the client's retry claim
# the key again; the first request, finishing late, wrote its answer into the retry's claim
# (replayed as the retry's) and the retry's own completion found nothing in progress.
_COMPLETE = Prepared(
    update(_C).where(
        _C.c.principal == bindparam("p"),
        _C.c.endpoint == bindparam("e"),
        _C.c.key == bindparam("k"),
        _C.c.request_hash == bindparam("made_hash"),
        _C.c.created_at == bindparam("made_at"),
        _C.c.status == ClaimStatus.in_progress.value,
    )
)


def insert_claim(s: Session, row: dict[str, Any]) -> None:
    """Insert a new claim, the only write of its transaction: a claim with the same
    (principal, endpoint, key) raises IntegrityError by the time the transaction commits (on
    PostgreSQL the insert goes with the COMMIT, one round trip: storage.repo.prepared)."""
    _INSERT.defer(s.connection(), row)


class ClaimTaken(Exception):
    """A claim of the same (principal, endpoint, key) exists (or was committed while this one
    waited for it). Its own type, not IntegrityError: on PostgreSQL it is raised out of the
    work's first statement, whose caller may handle an IntegrityError of its own."""


def insert_claim_first(s: Session, row: dict[str, Any]) -> None:
    """Insert a new claim at the start of a transaction that goes on with other work: a claim
    with the same (principal, endpoint, key) raises ClaimTaken before the work sees any
    answer from the database. On PostgreSQL the insert rides behind the work's first
    statement, in its round trip with the BEGIN (prepared.Prepared.behind), and the claim is
    checked as that round trip comes back: the first statement only read (a session, a
    rail's state) when ClaimTaken comes out of it, and a concurrent insert of the same key
    is waited for as before. Elsewhere it is inserted now."""
    conn = s.connection()
    if rows.is_postgres(s):
        later = _INSERT_PG.behind(conn, row, check=_taken)
        if later.queued:
            return
        _taken(later)  # nothing could wait for a next statement: it runs now
        return
    try:
        _INSERT.insert(conn, row)
    except IntegrityError:
        raise ClaimTaken from None


def _taken(later: Later) -> None:
    if later.rowcount() != 1:  # DO NOTHING skipped it: only the claim's key can conflict
        raise ClaimTaken


class Written(NamedTuple):
    """The claim one request wrote: its key, and its request hash and creation time, which
    tell it from a later request's claim of the same key."""

    principal: str
    endpoint: str
    key: str
    made: tuple[str, datetime]


def complete(s: Session, claim: Written, values: dict[str, Any]) -> bool:
    """Set `claim`, while in progress, to its completion `values` in one UPDATE, the last
    statement of its transaction (committed with it, one round trip on PostgreSQL); False
    when that claim is not in progress (released, and the key perhaps claimed again by a
    retry)."""
    return _COMPLETE.execute(s.connection(), _params(claim, values), commit=True) == 1


def complete_with_work(s: Session, claim: Written, values: dict[str, Any]) -> None:
    """Set this request's own in-progress `claim` to its completion `values` in the
    transaction of the work's last changes: sent with its COMMIT on PostgreSQL
    (storage.repo.prepared), at once elsewhere. Nothing reads its count: a claim released
    meanwhile is left as it is (a retry's claim of the key is not this one)."""
    _COMPLETE.defer(s.connection(), _params(claim, values))


def _params(claim: Written, values: dict[str, Any]) -> dict[str, Any]:
    made_hash, made_at = claim.made
    return {
        "p": claim.principal,
        "e": claim.endpoint,
        "k": claim.key,
        "made_hash": made_hash,
        "made_at": made_at,
        **values,
    }


def get(s: Session, principal: str, endpoint: str, key: str) -> IdempotencyClaim | None:
    return s.get(IdempotencyClaim, (principal, endpoint, key))


def release_in_progress(
    s: Session,
    principal: str,
    endpoint: str,
    key: str,
    made: tuple[str, datetime] | None = None,
) -> bool:
    """Delete the claim while it is still in progress (a completed one is kept for good).
    `made`: only the claim with this request hash and creation time (the one a given request
    wrote, not a later request's claim of the key). Whether a claim was deleted."""
    q = delete(IdempotencyClaim).where(
        IdempotencyClaim.principal == principal,
        IdempotencyClaim.endpoint == endpoint,
        IdempotencyClaim.key == key,
        IdempotencyClaim.status == ClaimStatus.in_progress,
    )
    if made is not None:
        q = q.where(
            IdempotencyClaim.request_hash == made[0], IdempotencyClaim.created_at == made[1]
        )
    return bool(getattr(s.execute(q), "rowcount", 0))


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
