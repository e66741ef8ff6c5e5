"""Typed tables. Invariants the database can hold are named constraints; the rest are checked
by `railproof assurance`."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def new_id() -> str:
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: DateTime(timezone=True), dict[str, Any]: JSON}


class SessionStatus(StrEnum):
    open = "open"
    paid = "paid"
    expired = "expired"
    cancelled = "cancelled"


class ProofStatus(StrEnum):
    verified = "verified"
    failed = "failed"
    pending = "pending"
    requires_review = "requires_review"


class EntitlementStatus(StrEnum):
    pending = "pending"
    active = "active"
    revoked = "revoked"


class ApprovalStatus(StrEnum):
    pending = "pending"
    approved = "approved"
    rejected = "rejected"  # migration 0008; `approved_by` then holds who decided


class ClaimStatus(StrEnum):
    in_progress = "in_progress"
    completed = "completed"


def _in(col: str, enum: type[StrEnum]) -> str:
    return f"{col} IN ({', '.join(repr(e.value) for e in enum)})"


# The statuses in which a proof holds its transfer for its session.
HOLDING = (ProofStatus.verified.value, ProofStatus.requires_review.value)
HOLDING_SQL = f"status IN ('{HOLDING[0]}', '{HOLDING[1]}')"
# Proofs without a receipt yet, indexed by status: the apply sweep reads the verified ones
# (migration 0012).
UNAPPLIED_SQL = "applied_at IS NULL"
# The width of a worker's name where it is written (proofs.claimed_by,
# verification_attempts.worker): a longer one fails every claim on PostgreSQL.
WORKER_NAME_MAX = 64


class RailState(Base):
    __tablename__ = "rail_state"
    rail_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    production_enabled: Mapped[bool] = mapped_column(Boolean)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    treasury: Mapped[str | None] = mapped_column(String(128))
    updated_at: Mapped[datetime]
    updated_by: Mapped[str | None] = mapped_column(String(128))


class Approval(Base):
    __tablename__ = "approvals"
    __table_args__ = (
        CheckConstraint(_in("status", ApprovalStatus), name="status"),
        # SECURITY: two-person rule held by the database too: nobody approves their own request.
        CheckConstraint("approved_by IS NULL OR approved_by <> requested_by", name="two_person"),
        CheckConstraint("kind IN ('production', 'treasury')", name="kind"),
    )
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    rail_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    value: Mapped[str] = mapped_column(String(128))  # "true"/"false" or a treasury address
    status: Mapped[str] = mapped_column(String(16), default=ApprovalStatus.pending)
    requested_by: Mapped[str] = mapped_column(String(128))
    approved_by: Mapped[str | None] = mapped_column(String(128))
    incident_id: Mapped[str | None] = mapped_column(String(128))
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    decided_at: Mapped[datetime | None]


class PaymentSession(Base):
    __tablename__ = "payment_sessions"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint(_in("status", SessionStatus), name="status"),
        CheckConstraint("expires_at > created_at", name="expiry_after_creation"),
        # SECURITY: a reference key identifies one session, ever: a transfer carrying it pays
        # that session and no other (migration 0005 widened it from per rail).
        UniqueConstraint("reference"),
        Index("ix_payment_sessions_owner", "owner_id", "created_at"),
        # Migration 0005: open sessions a transfer without a reference could back.
        Index("ix_payment_sessions_match", "rail_id", "recipient", "amount"),
    )
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(String(128))
    rail_id: Mapped[str] = mapped_column(String(64))
    access_product_id: Mapped[str] = mapped_column(String(128))
    amount: Mapped[int] = mapped_column(BigInteger)
    network: Mapped[str] = mapped_column(String(32))
    asset: Mapped[str] = mapped_column(String(128))
    recipient: Mapped[str] = mapped_column(String(128))
    reference: Mapped[str | None] = mapped_column(String(128))
    # Rails without a reference bind the transfer by its sender (migration 0005).
    payer: Mapped[str | None] = mapped_column(String(128))
    memo: Mapped[str | None] = mapped_column(String(256))
    status: Mapped[str] = mapped_column(String(16), default=SessionStatus.open)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    paid_at: Mapped[datetime | None]


class Proof(Base):
    __tablename__ = "proofs"
    __table_args__ = (
        # One row per proof and session: a resubmission (or a lost insert race) re-reads the
        # existing row (verifier.proofs).
        UniqueConstraint("fingerprint", "session_id"),
        # SECURITY: one *holding* proof per fingerprint whatever the owner or the race. Only
        # verified / requires_review proofs hold: a pending or failed claim of someone else's
        # transfer reserves nothing (migration 0005).
        Index(
            "ux_proofs_holding_fingerprint",
            "fingerprint",
            unique=True,
            sqlite_where=text(HOLDING_SQL),
            postgresql_where=text(HOLDING_SQL),
        ),
        CheckConstraint(_in("status", ProofStatus), name="status"),
        Index("ix_proofs_rail_created", "rail_id", "created_at"),
        Index("ix_proofs_due", "status", "next_check_at"),
        Index("ix_proofs_session", "session_id"),
        # Migration 0003: the auto-apply sweep and pending-past-SLA check; the proof listing.
        Index("ix_proofs_status_created", "status", "created_at"),
        Index("ix_proofs_created", "created_at", "id"),
        # Migration 0012: the apply sweep's candidates, however many proofs are stored.
        Index(
            "ix_proofs_unapplied",
            "status",
            "created_at",
            sqlite_where=text(UNAPPLIED_SQL),
            postgresql_where=text(UNAPPLIED_SQL),
        ),
    )
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    fingerprint: Mapped[str] = mapped_column(String(64))
    rail_id: Mapped[str] = mapped_column(String(64))
    proof_type: Mapped[str] = mapped_column(String(32))
    ref: Mapped[str] = mapped_column(String(256))
    # The proof as submitted, kept to re-verify; never shown in evidence or logs (an x402
    # payload carries a signature).
    raw: Mapped[str] = mapped_column(Text)
    owner_id: Mapped[str] = mapped_column(String(128))
    session_id: Mapped[str] = mapped_column(ForeignKey("payment_sessions.id"))
    status: Mapped[str] = mapped_column(String(16), default=ProofStatus.pending)
    failure_code: Mapped[str | None] = mapped_column(String(48))
    detail: Mapped[str] = mapped_column(Text, default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_check_at: Mapped[datetime | None]
    claimed_until: Mapped[datetime | None]
    claimed_by: Mapped[str | None] = mapped_column(String(WORKER_NAME_MAX))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    # When its receipt was created (in the same transaction); None until then.
    applied_at: Mapped[datetime | None]


class TransferHold(Base):
    """The transfers a holding proof holds, by every identity the rail gives them (a Solana
    signature, an EVM transaction's transfer to the recipient, an EIP-3009 authorization),
    so one transfer backs one session across proof types. A row is written in the
    transaction that makes its proof hold and removed when the proof fails without a receipt
    (a reorged proof keeps its holds while it is re-verified)."""

    __tablename__ = "transfer_holds"
    __table_args__ = (
        Index("ix_transfer_holds_proof", "proof_id"),
        Index("ix_transfer_holds_session", "session_id"),
    )
    # SECURITY: the primary key is the guarantee: a second holder's insert fails.
    transfer_key: Mapped[str] = mapped_column(String(256), primary_key=True)
    proof_id: Mapped[str] = mapped_column(ForeignKey("proofs.id"))
    session_id: Mapped[str] = mapped_column(String(32))
    owner_id: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime]


class VerificationAttempt(Base):
    __tablename__ = "verification_attempts"
    __table_args__ = (
        CheckConstraint(_in("status", ProofStatus), name="status"),
        CheckConstraint("source IN ('live', 'cassette', 'local')", name="source"),
        Index("ix_verification_attempts_proof", "proof_id", "id"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    proof_id: Mapped[str] = mapped_column(ForeignKey("proofs.id"))
    status: Mapped[str] = mapped_column(String(16))
    failure_code: Mapped[str | None] = mapped_column(String(48))
    detail: Mapped[str] = mapped_column(Text, default="")
    observed: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    rpc_calls: Mapped[int] = mapped_column(Integer, default=0)
    latency_ms: Mapped[int] = mapped_column(Integer, default=0)
    source: Mapped[str] = mapped_column(String(16))
    worker: Mapped[str | None] = mapped_column(String(WORKER_NAME_MAX))
    created_at: Mapped[datetime]


class SettlementEvidence(Base):
    __tablename__ = "settlement_evidence"
    __table_args__ = (Index("ix_settlement_evidence_proof", "proof_id", "id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    proof_id: Mapped[str] = mapped_column(ForeignKey("proofs.id"))
    # SECURITY: evidence always points at the verified attempt it settles.
    attempt_id: Mapped[int] = mapped_column(ForeignKey("verification_attempts.id"))
    finality: Mapped[str] = mapped_column(String(16))
    is_final: Mapped[bool] = mapped_column(Boolean)
    reorged: Mapped[bool] = mapped_column(Boolean, default=False)
    slot: Mapped[int | None] = mapped_column(BigInteger)
    block_number: Mapped[int | None] = mapped_column(BigInteger)
    block_hash: Mapped[str | None] = mapped_column(String(80))
    confirmations: Mapped[int | None] = mapped_column(BigInteger)
    detail: Mapped[str] = mapped_column(Text, default="")
    # The settling transaction where the proof does not name it (x402), for reconciliation's
    # resolutions about that transaction (gate check transfer_not_sent_back).
    tx_hash: Mapped[str | None] = mapped_column(String(80))
    # Migration 0018: the settling block's timestamp where the rail reads it (x402), for the
    # apply gate's window check of a settlement found after the proof was verified.
    block_time: Mapped[datetime | None]
    source: Mapped[str] = mapped_column(String(16))
    observed_at: Mapped[datetime]


class Receipt(Base):
    __tablename__ = "receipts"
    __table_args__ = (
        # SECURITY: one receipt per proof and one per session: a transfer pays once.
        UniqueConstraint("proof_id"),
        UniqueConstraint("session_id"),
        CheckConstraint("amount > 0", name="amount_positive"),
        # Migration 0010: staff's receipt list by owner, newest first.
        Index("ix_receipts_owner", "owner_id", "created_at"),
    )
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    proof_id: Mapped[str] = mapped_column(ForeignKey("proofs.id"))
    session_id: Mapped[str] = mapped_column(ForeignKey("payment_sessions.id"))
    settlement_id: Mapped[int] = mapped_column(ForeignKey("settlement_evidence.id"))
    owner_id: Mapped[str] = mapped_column(String(128))
    access_product_id: Mapped[str] = mapped_column(String(128))
    rail_id: Mapped[str] = mapped_column(String(64))
    amount: Mapped[int] = mapped_column(BigInteger)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime]


class Entitlement(Base):
    __tablename__ = "entitlements"
    __table_args__ = (
        UniqueConstraint("session_id"),
        CheckConstraint(_in("status", EntitlementStatus), name="status"),
        # SECURITY: no active (or revoked) entitlement without the receipt that activated it.
        CheckConstraint("status = 'pending' OR receipt_id IS NOT NULL", name="receipt_required"),
        Index("ix_entitlements_owner", "owner_id", "access_product_id"),
        # Migration 0020: an owner's list, a page at a time, in commit order (`seq`).
        Index("ix_entitlements_owner_seq", "owner_id", "seq"),
        # Migration 0020: one place each; the next one is the largest plus one.
        Index("ix_entitlements_seq", "seq", unique=True),
        # Migration 0017: the flagged ones (few), counted at every metrics scrape.
        Index(
            "ix_entitlements_flagged",
            "status",
            # The very term the count's query has, so each planner sees it is implied.
            postgresql_where=text("reorg_flagged IS true"),
            sqlite_where=text("reorg_flagged IS 1"),
        ),
        # Migration 0003: the entitlement a receipt activated (reorg handling, assurance).
        Index("ix_entitlements_receipt", "receipt_id"),
    )
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(String(128))
    access_product_id: Mapped[str] = mapped_column(String(128))
    session_id: Mapped[str] = mapped_column(ForeignKey("payment_sessions.id"))
    status: Mapped[str] = mapped_column(String(16), default=EntitlementStatus.pending)
    receipt_id: Mapped[str | None] = mapped_column(ForeignKey("receipts.id"))
    reorg_flagged: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    # Its place in its owner's list (GET /v1/entitlements pages by it), in the order
    # entitlements were committed: given under the audit chain's lock, held to the commit
    # (storage.repo.entitlements `number`). None only inside the transaction that writes it.
    seq: Mapped[int | None] = mapped_column(BigInteger)


class AuditEvent(Base):
    __tablename__ = "audit_events"
    __table_args__ = (
        # The chain is linear: two events can never claim the same predecessor.
        UniqueConstraint("prev_hash"),
        # Migration 0003: the admin audit view by subject id, newest first. (0004 dropped the
        # (subject_type, subject_id) index: nothing filters on the type.)
        Index("ix_audit_events_subject_id", "subject_id", "id"),
        # Migration 0010: the audit trail of one incident (list-audit-events --incident-id).
        Index("ix_audit_events_incident_id", "incident_id", "id"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    subject_type: Mapped[str] = mapped_column(String(32))
    subject_id: Mapped[str] = mapped_column(String(128))
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    incident_id: Mapped[str | None] = mapped_column(String(128))
    reason: Mapped[str | None] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class IdempotencyClaim(Base):
    __tablename__ = "idempotency_claims"
    __table_args__ = (
        CheckConstraint(_in("status", ClaimStatus), name="status"),
        Index("ix_idempotency_claims_status", "status", "created_at"),
    )
    principal: Mapped[str] = mapped_column(String(128), primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(128), primary_key=True)
    key: Mapped[str] = mapped_column(String(256), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=ClaimStatus.in_progress)
    response_code: Mapped[int | None] = mapped_column(Integer)
    response: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime]
    completed_at: Mapped[datetime | None]
