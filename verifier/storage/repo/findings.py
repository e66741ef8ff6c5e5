"""The assurance report's queries (verifier.services.assurance): rows that break an invariant
the database cannot hold by itself. Each returns at most `limit` rows; `since` (where taken)
keeps only rows made at or after it (the report's --period-days window)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Select, Subquery, func, select
from sqlalchemy.orm import Session, aliased

from verifier.storage.models import (
    Entitlement,
    EntitlementStatus,
    Proof,
    ProofStatus,
    Receipt,
    SettlementEvidence,
    VerificationAttempt,
)

_Q = TypeVar("_Q", bound=Select[*tuple[Any, ...]])


def _window(q: _Q, column: Any, since: datetime | None) -> _Q:
    return q if since is None else q.where(column >= since)


def _current_settlement() -> Subquery:
    """Each proof's latest settlement evidence."""
    latest = (
        select(SettlementEvidence.proof_id, func.max(SettlementEvidence.id).label("mid"))
        .group_by(SettlementEvidence.proof_id)
        .subquery()
    )
    return select(SettlementEvidence).join(latest, SettlementEvidence.id == latest.c.mid).subquery()


def unsettled_active_entitlements(
    s: Session, limit: int, since: datetime | None = None
) -> list[tuple[str, str, bool]]:
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
        .limit(limit)
    )
    q = _window(q, Entitlement.updated_at, since)
    return [(e, f, bool(r)) for e, f, r in s.execute(q)]


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
    s: Session, limit: int, since: datetime | None = None
) -> list[tuple[str, str, str | None]]:
    """(entitlement id, proof status, failure code) of flagged active entitlements whose proof
    is no longer verified while its latest settlement still reads final: the ones
    `unsettled_active_entitlements` does not name (e.g. an x402 nonce spent by another
    authorization)."""
    q = _flagged_active(Entitlement.id, Proof.status, Proof.failure_code).where(
        Proof.status != ProofStatus.verified,
        SettlementEvidence.is_final.is_(True),
        SettlementEvidence.reorged.is_(False),
    )
    q = _window(q.limit(limit), Entitlement.updated_at, since)
    return [(e, str(getattr(st, "value", st)), code) for e, st, code in s.execute(q)]


def receipts_without_active_entitlement(
    s: Session, limit: int, since: datetime | None = None
) -> list[str]:
    """Receipts whose entitlement is missing or still pending (a revoked one is deliberate)."""
    q = (
        select(Receipt.id)
        .outerjoin(Entitlement, Entitlement.receipt_id == Receipt.id)
        .where((Entitlement.id.is_(None)) | (Entitlement.status == EntitlementStatus.pending))
        .limit(limit)
    )
    return list(s.scalars(_window(q, Receipt.created_at, since)))


def receipts_without_final_settlement(
    s: Session, limit: int, since: datetime | None = None
) -> list[str]:
    q = (
        select(Receipt.id)
        .join(SettlementEvidence, SettlementEvidence.id == Receipt.settlement_id)
        .where(SettlementEvidence.is_final.is_(False))
        .limit(limit)
    )
    return list(s.scalars(_window(q, Receipt.created_at, since)))


def entitlements_on_another_receipt(
    s: Session, limit: int, since: datetime | None = None
) -> list[str]:
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
        .limit(limit)
    )
    return list(s.scalars(_window(q, Entitlement.updated_at, since)))


def receipts_on_another_proof(s: Session, limit: int, since: datetime | None = None) -> list[str]:
    """Receipts whose settlement is another proof's, or whose proof is not verified while
    the entitlement stands unflagged (the worker flags one whose payment it finds gone)."""
    q = (
        select(Receipt.id)
        .join(SettlementEvidence, SettlementEvidence.id == Receipt.settlement_id)
        .join(Proof, Proof.id == Receipt.proof_id)
        .outerjoin(Entitlement, Entitlement.receipt_id == Receipt.id)
        .where(
            (SettlementEvidence.proof_id != Receipt.proof_id)
            | (
                (Proof.status != ProofStatus.verified)
                & (Entitlement.status == EntitlementStatus.active)
                & Entitlement.reorg_flagged.is_not(True)
            )
        )
        .distinct()
        .limit(limit)
    )
    return list(s.scalars(_window(q, Receipt.created_at, since)))


def settlements_without_verified_attempt(
    s: Session, limit: int, since: datetime | None = None
) -> list[int]:
    q = (
        select(SettlementEvidence.id)
        .join(VerificationAttempt, VerificationAttempt.id == SettlementEvidence.attempt_id)
        .where(VerificationAttempt.status != ProofStatus.verified)
        .limit(limit)
    )
    return list(s.scalars(_window(q, SettlementEvidence.observed_at, since)))


def transfers_with_several_receipts(
    s: Session, limit: int, since: datetime | None = None
) -> list[tuple[str, int]]:
    """(on-chain reference, receipts) for each reference behind more than one receipt (with
    `since`: one of them made since; the count is of all)."""
    q = (
        select(Proof.ref, func.count(Receipt.id))
        .join(Receipt, Receipt.proof_id == Proof.id)
        .group_by(Proof.ref)
        .having(func.count(Receipt.id) > 1)
        .limit(limit)
    )
    if since is not None:
        q = q.having(func.max(Receipt.created_at) >= since)
    return [(ref, int(n)) for ref, n in s.execute(q)]


def final_without_receipt(
    s: Session,
    rail_ids: Sequence[str],
    updated_before: datetime,
    limit: int,
    since: datetime | None = None,
) -> list[str]:
    """Verified proofs on the given rails, final by their latest settlement, without a
    receipt and last updated before `updated_before`, whose session no other proof paid (that
    one is a transfer to send back: `verified_transfer_not_credited`, never applied)."""
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
        .limit(limit)
    )
    return list(s.scalars(_window(q, Proof.created_at, since)))


def pending_created_before(
    s: Session, created_before: datetime, limit: int, since: datetime | None = None
) -> list[str]:
    q = (
        select(Proof.id)
        .where(Proof.status == ProofStatus.pending, Proof.created_at < created_before)
        .limit(limit)
    )
    return list(s.scalars(_window(q, Proof.created_at, since)))


def verified_on_paid_sessions(
    s: Session, limit: int, since: datetime | None = None
) -> list[tuple[str, str, str]]:
    """(proof id, session id, owner id) of verified proofs without a receipt whose session
    another proof's receipt paid, oldest first."""
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
        .order_by(Proof.created_at)
        .limit(limit)
    )
    return [(p, sid, o) for p, sid, o in s.execute(_window(q, Proof.created_at, since))]


def lapsed_leases(
    s: Session, at: datetime, limit: int
) -> list[tuple[str, str | None, datetime | None]]:
    """(proof id, worker, lease end) of proofs still claimed by a lease that ended before
    `at`, earliest lease end first."""
    q = (
        select(Proof.id, Proof.claimed_by, Proof.claimed_until)
        .where(Proof.claimed_by.is_not(None), Proof.claimed_until < at)
        .order_by(Proof.claimed_until)
        .limit(limit)
    )
    return [(p, by, until) for p, by, until in s.execute(q)]
