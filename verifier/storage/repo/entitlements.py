"""Entitlements (storage.models Entitlement): what a paid session grants its owner."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from verifier.storage.models import Entitlement, EntitlementStatus, Proof, ProofStatus
from verifier.storage.repo import audit as audit_repo
from verifier.storage.repo import rows
from verifier.storage.repo.prepared import Prepared

_E = rows.table(Entitlement)
_INSERT = Prepared(insert(_E))
_PLACED = _E.alias("placed")
_NUMBER = Prepared(
    update(_E)
    .where(_E.c.session_id == bindparam("sid"))
    .values(seq=select(func.coalesce(func.max(_PLACED.c.seq), 0) + 1).scalar_subquery())
)


def insert_entitlement(s: Session, row: dict[str, Any]) -> None:
    """Write a new entitlement (Core insert, client-side id; write-only in its transaction)."""
    _INSERT.defer(s.connection(), row)


def insert_entitlement_behind(s: Session, row: dict[str, Any]) -> Callable[[], None]:
    """`insert_entitlement`, run behind the transaction's next statement, in its round trip
    (prepared.Prepared.behind): call the answer once that statement is through (a write sent
    behind and never read is never committed)."""
    written = _INSERT.behind(s.connection(), row)

    def read() -> None:
        written.rowcount()

    return read


def number(s: Session, session_id: str) -> None:
    """Give the session's entitlement its place in the owners' lists (`seq`: the largest
    given plus one), written with the transaction's next statement or its commit.

    Under the audit chain's lock (taken here unless held, as it is after the session's audit
    append), which every transaction that numbers holds to its end: places follow commit
    order, and a reader that sees one sees every smaller one. A place taken from the clock
    (created_at is read when the request starts) could commit behind a page mark a client
    already holds, and be on no page of its walk."""
    audit_repo.lock_chain(s)
    _NUMBER.defer(s.connection(), {"sid": session_id})


def number_unplaced(s: Session) -> int:
    """Give entitlements committed without a place (`seq`) theirs, after every other, in the
    order they were created; how many. Only a release before migration 0020 writes one (an
    API process still running it during a rolling upgrade): lists leave it out until then.

    Under the audit chain's lock, as `number`: every place given before is committed (a
    transaction numbering holds the lock to its commit) and none is given meanwhile."""
    E = Entitlement
    unplaced = select(E.id).where(E.seq.is_(None))
    if s.execute(unplaced.limit(1)).first() is None:  # the usual answer: one indexed read
        return 0
    audit_repo.lock_chain(s)
    ids = list(s.scalars(unplaced.order_by(E.created_at, E.id)))
    top = s.scalar(select(func.coalesce(func.max(E.seq), 0))) or 0
    for n, eid in enumerate(ids, start=top + 1):
        s.execute(update(_E).where(_E.c.id == eid).values(seq=n))
    return len(ids)


def get_locked(s: Session, entitlement_id: str) -> Entitlement | None:
    return rows.get_locked(s, Entitlement, entitlement_id)


def for_session(s: Session, session_id: str) -> Entitlement | None:
    return s.scalar(select(Entitlement).where(Entitlement.session_id == session_id))


def for_sessions(s: Session, session_ids: Sequence[str]) -> dict[str, Entitlement]:
    """The entitlement of each session that has one, in one query (session objects: an apply
    batch activates them)."""
    q = select(Entitlement).where(rows.among(s, Entitlement.session_id, session_ids))
    return {e.session_id: e for e in s.scalars(q).all()}


def for_receipt(s: Session, receipt_id: str) -> Entitlement | None:
    return s.scalar(select(Entitlement).where(Entitlement.receipt_id == receipt_id))


def oldest_paid_pending_since(s: Session) -> datetime | None:
    """When the oldest verified proof whose entitlement is still pending was last updated:
    only entitlements someone has paid for (an unpaid session's entitlement waits by
    design)."""
    return s.scalar(
        select(func.min(Proof.updated_at))
        .join(Entitlement, Entitlement.session_id == Proof.session_id)
        .where(
            Entitlement.status == EntitlementStatus.pending, Proof.status == ProofStatus.verified
        )
    )
