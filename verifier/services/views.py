"""Rows as the API returns them: amounts as strings of base units, times in ISO-8601 UTC,
and never a raw proof payload."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from verifier.core.timeutil import iso, utc
from verifier.storage.models import (
    Entitlement,
    PaymentSession,
    Proof,
    Receipt,
    SessionStatus,
    SettlementEvidence,
    VerificationAttempt,
)
from verifier.storage.repo.rows import Record

View = dict[str, Any]  # a resource's JSON view, as the API answers it


def session_status(ps: PaymentSession | Record, now: datetime) -> str:
    """The session's status as read at `now`: an open session past its expiry reads
    `expired`. Derived, never stored: the apply gate refuses a session whose stored status is
    not open, and a payment made inside the window may still be handed over (and credited)
    after the expiry."""
    if ps.status == SessionStatus.open and utc(now) > utc(ps.expires_at):
        return SessionStatus.expired.value
    return str(ps.status)


def session_view(
    ps: PaymentSession | Record, now: datetime, requirements: dict[str, Any] | None = None
) -> View:
    return {
        "id": ps.id,
        "status": session_status(ps, now),
        "owner_id": ps.owner_id,
        "rail_id": ps.rail_id,
        "access_product_id": ps.access_product_id,
        "amount": str(ps.amount),
        "network": ps.network,
        "asset": ps.asset,
        "recipient": ps.recipient,
        "reference": ps.reference,
        "payer": ps.payer,
        "memo": ps.memo,
        "created_at": iso(ps.created_at),
        "expires_at": iso(ps.expires_at),
        "paid_at": iso(ps.paid_at),
        "payment_requirements": requirements,
    }


def settlement_view(
    ev: SettlementEvidence | Record | None,
) -> View | None:
    if ev is None:
        return None
    out: View = {
        "finality": ev.finality,
        "is_final": ev.is_final,
        "reorged": ev.reorged,
        "observed_at": iso(ev.observed_at),
    }
    if ev.slot is not None:
        out["slot"] = ev.slot
    if ev.block_number is not None:
        out["block_number"] = ev.block_number
        out["confirmations"] = ev.confirmations
    if ev.tx_hash is not None:
        out["tx_hash"] = ev.tx_hash
    return out


def proof_view(
    p: Proof | Record, settlement: SettlementEvidence | Record | None, receipt_id: str | None
) -> View:
    return {
        "id": p.id,
        "fingerprint": p.fingerprint,
        "rail_id": p.rail_id,
        "proof_type": p.proof_type,
        "reference": p.ref,
        "session_id": p.session_id,
        "owner_id": p.owner_id,
        "status": p.status,
        "failure_code": p.failure_code,
        "detail": p.detail,
        "attempts": p.attempts,
        "settlement": settlement_view(settlement),
        "receipt_id": receipt_id,
        "created_at": iso(p.created_at),
        "updated_at": iso(p.updated_at),
    }


def attempt_view(a: VerificationAttempt) -> View:
    return {
        "id": a.id,
        "proof_id": a.proof_id,
        "status": a.status,
        "failure_code": a.failure_code,
        "detail": a.detail,
        "observed": a.observed,
        "rpc_calls": a.rpc_calls,
        "latency_ms": a.latency_ms,
        "source": a.source,
        "worker": a.worker,
        "created_at": iso(a.created_at),
    }


def evidence_view(ev: SettlementEvidence) -> View:
    return {
        "id": ev.id,
        "proof_id": ev.proof_id,
        "attempt_id": ev.attempt_id,
        "finality": ev.finality,
        "is_final": ev.is_final,
        "reorged": ev.reorged,
        "slot": ev.slot,
        "block_number": ev.block_number,
        "block_hash": ev.block_hash,
        "confirmations": ev.confirmations,
        "tx_hash": ev.tx_hash,
        "detail": ev.detail,
        "source": ev.source,
        "observed_at": iso(ev.observed_at),
    }


def entitlement_view(e: Entitlement) -> View:
    return {
        "id": e.id,
        "owner_id": e.owner_id,
        "access_product_id": e.access_product_id,
        "status": e.status,
        "receipt_id": e.receipt_id,
        "session_id": e.session_id,
        "reorg_flagged": e.reorg_flagged,
        "updated_at": iso(e.updated_at),
    }


def receipt_view(r: Receipt) -> View:
    return {
        "id": r.id,
        "proof_id": r.proof_id,
        "session_id": r.session_id,
        "owner_id": r.owner_id,
        "access_product_id": r.access_product_id,
        "rail_id": r.rail_id,
        "amount": str(r.amount),
        "created_by": r.created_by,
        "created_at": iso(r.created_at),
    }
