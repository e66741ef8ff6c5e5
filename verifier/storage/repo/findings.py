"""The assurance report's queries (verifier.services.assurance): rows that break an invariant
the database cannot hold by itself. Each returns a `Capped`: at most `limit` rows (None: all,
as a repair's look-up reads them), in a fixed order, and how many rows there are in all, so
the report can say when its list was cut; `since` (where taken) keeps only rows made at or
after it (the report's --period-days window).

The order (`_capped`): each owner's oldest row, then each owner's second oldest, and so on,
oldest first within each round. Oldest first because the oldest finding is the most urgent
one; round by round over owners because an owner can make rows at will (a tenant submitting
proofs of transactions that never land fills `pending_past_sla`) but cannot make owners (the
deployment binds each service token to its owner ids), so one owner's flood never pushes
another owner's finding off the list while fewer than `limit` owners have findings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, Subquery, func, select
from sqlalchemy.orm import Session, aliased

from verifier.storage.models import (
    ClaimStatus,
    Entitlement,
    EntitlementStatus,
    IdempotencyClaim,
    Proof,
    ProofStatus,
    Receipt,
    SettlementEvidence,
    VerificationAttempt,
)

_Q = TypeVar("_Q", bound=Select[*tuple[Any, ...]])
T = TypeVar("T")
U = TypeVar("U")


def _window(q: _Q, column: Any, since: datetime | None) -> _Q:
    return q if since is None else q.where(column >= since)


@dataclass(frozen=True)
class Capped(Generic[T]):
    """At most `limit` rows of a finding query, and how many rows it has in all."""

    rows: list[T]
    total: int

    @property
    def cut(self) -> bool:
        return self.total > len(self.rows)

    def map(self, f: Callable[[T], U]) -> Capped[U]:
        return Capped([f(r) for r in self.rows], self.total)


def _capped(
    s: Session,
    q: Select[*tuple[Any, ...]],
    limit: int | None,
    owner: Any,
    order: Sequence[Any],
) -> Capped[tuple[Any, ...]]:
    """The rows of `q` (without an order or a limit of its own), at most `limit`: ranked
    within their `owner` by `order` (its age first, then a unique tie-break), and listed rank
    by rank, `order` within a rank (the module's docstring says why); and the count of all
    its rows, read in the same query (a window over the rows the ranking reads anyway)."""
    n = len(q.selected_columns)
    rank = func.row_number().over(partition_by=owner, order_by=list(order))
    sub = q.add_columns(
        func.count().over().label("found_total"),
        rank.label("owner_rank"),
        *(c.label(f"order_{i}") for i, c in enumerate(order)),
    ).subquery()
    cols = list(sub.c)
    listed = select(*cols[: n + 1]).order_by(*cols[n + 1 :]).limit(limit)
    rows = s.execute(listed).all()
    return Capped([tuple(r[:n]) for r in rows], int(rows[0][n]) if rows else 0)


def _current_settlement() -> Subquery:
    """Each proof's latest settlement evidence."""
    latest = (
        select(SettlementEvidence.proof_id, func.max(SettlementEvidence.id).label("mid"))
        .group_by(SettlementEvidence.proof_id)
        .subquery()
    )
    return select(SettlementEvidence).join(latest, SettlementEvidence.id == latest.c.mid).subquery()


def unsettled_active_entitlements(
    s: Session, limit: int | None, since: datetime | None = None
) -> Capped[tuple[str, str, bool]]:
    """(entitlement id, finality, reorged) of active entitlements whose receipt's proof's
    latest settlement is not final, or reorged."""
    cur = _current_settlement()
    q = (
        select(Entitlement.id, cur.c.finality, cur.c.reorged)
        .join(Receipt, Receipt.id == Entitlement.receipt_id)
        .join(cur, cur.c.proof_id == Receipt.proof_id)
        .where(
            Entitlement.status == EntitlementStatus.active,
            (cur.c.reorged.is_(True)) | (cur.c.is_final.is_(False)),
        )
    )
    q = _window(q, Entitlement.updated_at, since)
    found = _capped(s, q, limit, Entitlement.owner_id, (Entitlement.updated_at, Entitlement.id))
    return found.map(lambda r: (r[0], r[1], bool(r[2])))


def _flagged_active(*columns: Any) -> Select[Any]:
    """Active entitlements flagged by the worker (a reorg, or an x402 nonce spent elsewhere)
    whose payment does not stand again: the receipt's proof is not verified, or its latest
    settlement is missing, not final or reorged. A flagged entitlement whose transfer was
    re-included and is final again is backed, and not counted."""
    latest = (
        select(func.max(SettlementEvidence.id))
        .where(SettlementEvidence.proof_id == Proof.id)
        .correlate(Proof)
        .scalar_subquery()
    )
    return (
        select(*columns)
        .select_from(Entitlement)
        .join(Receipt, Receipt.id == Entitlement.receipt_id)
        .join(Proof, Proof.id == Receipt.proof_id)
        .outerjoin(SettlementEvidence, SettlementEvidence.id == latest)
        .where(
            Entitlement.status == EntitlementStatus.active,
            Entitlement.reorg_flagged.is_(True),
            (Proof.status != ProofStatus.verified)
            | SettlementEvidence.id.is_(None)
            | SettlementEvidence.is_final.is_(False)
            | SettlementEvidence.reorged.is_(True),
        )
    )


def count_flagged_active_entitlements(s: Session) -> int:
    """How many entitlements `_flagged_active` finds (the alert's gauge)."""
    flagged = _flagged_active(Entitlement.id).subquery()
    return int(s.scalar(select(func.count()).select_from(flagged)) or 0)


def flagged_active_entitlements_with_failed_proof(
    s: Session, limit: int | None, since: datetime | None = None
) -> Capped[tuple[str, str, str | None]]:
    """(entitlement id, proof status, failure code) of flagged active entitlements whose proof
    is no longer verified while its latest settlement still reads final: the ones
    `unsettled_active_entitlements` does not name (e.g. an x402 nonce spent by another
    authorization)."""
    q = _flagged_active(Entitlement.id, Proof.status, Proof.failure_code).where(
        Proof.status != ProofStatus.verified,
        SettlementEvidence.is_final.is_(True),
        SettlementEvidence.reorged.is_(False),
    )
    q = _window(q, Entitlement.updated_at, since)
    found = _capped(s, q, limit, Entitlement.owner_id, (Entitlement.updated_at, Entitlement.id))
    return found.map(lambda r: (r[0], str(getattr(r[1], "value", r[1])), r[2]))


def _receipt_ids(
    s: Session, q: Select[Any], limit: int | None, since: datetime | None
) -> Capped[str]:
    q = _window(q, Receipt.created_at, since)
    return _capped(s, q, limit, Receipt.owner_id, (Receipt.created_at, Receipt.id)).map(
        lambda r: str(r[0])
    )


def receipts_without_active_entitlement(
    s: Session, limit: int | None, since: datetime | None = None
) -> Capped[str]:
    """Receipts whose entitlement is missing or still pending (a revoked one is deliberate)."""
    q = (
        select(Receipt.id)
        .outerjoin(Entitlement, Entitlement.receipt_id == Receipt.id)
        .where((Entitlement.id.is_(None)) | (Entitlement.status == EntitlementStatus.pending))
    )
    return _receipt_ids(s, q, limit, since)


def receipts_without_final_settlement(
    s: Session, limit: int | None, since: datetime | None = None
) -> Capped[str]:
    q = (
        select(Receipt.id)
        .join(SettlementEvidence, SettlementEvidence.id == Receipt.settlement_id)
        .where(SettlementEvidence.is_final.is_(False))
    )
    return _receipt_ids(s, q, limit, since)


def entitlements_on_another_receipt(
    s: Session, limit: int | None, since: datetime | None = None
) -> Capped[str]:
    """Active entitlements whose receipt is another session's, owner's or product's, or is
    one that another active entitlement stands on too."""
    shared = (
        select(Entitlement.receipt_id)
        .where(Entitlement.status == EntitlementStatus.active, Entitlement.receipt_id.is_not(None))
        .group_by(Entitlement.receipt_id)
        .having(func.count(Entitlement.id) > 1)
    )
    q = (
        select(Entitlement.id)
        .join(Receipt, Receipt.id == Entitlement.receipt_id)
        .where(
            Entitlement.status == EntitlementStatus.active,
            (Receipt.session_id != Entitlement.session_id)
            | (Receipt.owner_id != Entitlement.owner_id)
            | (Receipt.access_product_id != Entitlement.access_product_id)
            | Entitlement.receipt_id.in_(shared),
        )
    )
    q = _window(q, Entitlement.updated_at, since)
    found = _capped(s, q, limit, Entitlement.owner_id, (Entitlement.updated_at, Entitlement.id))
    return found.map(lambda r: str(r[0]))


def receipts_on_another_proof(
    s: Session, limit: int | None, since: datetime | None = None
) -> Capped[str]:
    """Receipts whose settlement is another proof's, or whose proof is not verified while
    the entitlement stands unflagged (the worker flags one whose payment it finds gone)."""
    standing = (
        select(Entitlement.id)
        .where(
            Entitlement.receipt_id == Receipt.id,
            Entitlement.status == EntitlementStatus.active,
            Entitlement.reorg_flagged.is_not(True),
        )
        .exists()
    )
    q = (
        select(Receipt.id)
        .join(SettlementEvidence, SettlementEvidence.id == Receipt.settlement_id)
        .join(Proof, Proof.id == Receipt.proof_id)
        .where(
            (SettlementEvidence.proof_id != Receipt.proof_id)
            | ((Proof.status != ProofStatus.verified) & standing)
        )
    )
    return _receipt_ids(s, q, limit, since)


def settlements_without_verified_attempt(
    s: Session, limit: int | None, since: datetime | None = None
) -> Capped[int]:
    q = (
        select(SettlementEvidence.id)
        .join(VerificationAttempt, VerificationAttempt.id == SettlementEvidence.attempt_id)
        .join(Proof, Proof.id == SettlementEvidence.proof_id)
        .where(VerificationAttempt.status != ProofStatus.verified)
    )
    q = _window(q, SettlementEvidence.observed_at, since)
    order = (SettlementEvidence.observed_at, SettlementEvidence.id)
    return _capped(s, q, limit, Proof.owner_id, order).map(lambda r: int(r[0]))


def transfers_with_several_receipts(
    s: Session, limit: int | None, since: datetime | None = None
) -> Capped[tuple[str, int]]:
    """(on-chain reference, receipts) for each reference behind more than one receipt (with
    `since`: one of them made since; the count is of all). A reference's owner, for the
    order, is the first of its receipts' owners; its age, its first receipt's."""
    q = (
        select(Proof.ref, func.count(Receipt.id))
        .join(Receipt, Receipt.proof_id == Proof.id)
        .group_by(Proof.ref)
        .having(func.count(Receipt.id) > 1)
    )
    if since is not None:
        q = q.having(func.max(Receipt.created_at) >= since)
    order = (func.min(Receipt.created_at), Proof.ref)
    found = _capped(s, q, limit, func.min(Receipt.owner_id), order)
    return found.map(lambda r: (str(r[0]), int(r[1])))


def final_without_receipt(
    s: Session,
    rail_ids: Sequence[str],
    updated_before: datetime,
    limit: int | None,
    since: datetime | None = None,
) -> Capped[str]:
    """Verified proofs on the given rails, final by their latest settlement, without a
    receipt and last updated before `updated_before`, whose session no other proof paid (that
    one is a transfer to send back: `verified_transfer_not_credited`, never applied); the
    longest waiting first."""
    cur = _current_settlement()
    paid = aliased(Receipt)
    q = (
        select(Proof.id)
        .join(cur, cur.c.proof_id == Proof.id)
        .outerjoin(Receipt, Receipt.proof_id == Proof.id)
        .where(
            Proof.status == ProofStatus.verified,
            cur.c.is_final.is_(True),
            Proof.rail_id.in_(list(rail_ids)),
            Receipt.id.is_(None),
            Proof.updated_at < updated_before,
            ~select(paid.id).where(paid.session_id == Proof.session_id).exists(),
        )
    )
    q = _window(q, Proof.created_at, since)
    found = _capped(s, q, limit, Proof.owner_id, (Proof.updated_at, Proof.id))
    return found.map(lambda r: str(r[0]))


def pending_created_before(
    s: Session, created_before: datetime, limit: int | None, since: datetime | None = None
) -> Capped[str]:
    q = select(Proof.id).where(
        Proof.status == ProofStatus.pending, Proof.created_at < created_before
    )
    q = _window(q, Proof.created_at, since)
    found = _capped(s, q, limit, Proof.owner_id, (Proof.created_at, Proof.id))
    return found.map(lambda r: str(r[0]))


def verified_on_paid_sessions(
    s: Session, limit: int | None, since: datetime | None = None
) -> Capped[tuple[str, str, str]]:
    """(proof id, session id, owner id) of verified proofs without a receipt whose session
    another proof's receipt paid."""
    other = aliased(Receipt)
    credited = (
        select(other.id)
        .where(other.session_id == Proof.session_id, other.proof_id != Proof.id)
        .exists()
    )
    q = (
        select(Proof.id, Proof.session_id, Proof.owner_id)
        .outerjoin(Receipt, Receipt.proof_id == Proof.id)
        .where(Proof.status == ProofStatus.verified, Receipt.id.is_(None), credited)
    )
    q = _window(q, Proof.created_at, since)
    found = _capped(s, q, limit, Proof.owner_id, (Proof.created_at, Proof.id))
    return found.map(lambda r: (str(r[0]), str(r[1]), str(r[2])))


def lapsed_leases(
    s: Session, at: datetime, limit: int | None
) -> Capped[tuple[str, str | None, datetime | None]]:
    """(proof id, worker, lease end) of proofs still claimed by a lease that ended before
    `at`; the earliest lease end is the oldest."""
    q = select(Proof.id, Proof.claimed_by, Proof.claimed_until).where(
        Proof.claimed_by.is_not(None), Proof.claimed_until < at
    )
    found = _capped(s, q, limit, Proof.owner_id, (Proof.claimed_until, Proof.id))
    return found.map(lambda r: (r[0], r[1], r[2]))


def stuck_claims(
    s: Session, cutoff: datetime, limit: int | None, since: datetime | None = None
) -> Capped[tuple[str, str, str, datetime]]:
    """(principal, endpoint, key, made at) of idempotency claims still in progress that were
    made at or before `cutoff` (and at or after `since`, on process time); a claim's owner is
    its principal (the token that made it)."""
    q = select(
        IdempotencyClaim.principal,
        IdempotencyClaim.endpoint,
        IdempotencyClaim.key,
        IdempotencyClaim.created_at,
    ).where(
        IdempotencyClaim.status == ClaimStatus.in_progress,
        IdempotencyClaim.created_at <= cutoff,
    )
    q = _window(q, IdempotencyClaim.created_at, since)
    order = (
        IdempotencyClaim.created_at,
        IdempotencyClaim.endpoint,
        IdempotencyClaim.key,
    )
    found = _capped(s, q, limit, IdempotencyClaim.principal, order)
    return found.map(lambda r: (r[0], r[1], r[2], r[3]))
