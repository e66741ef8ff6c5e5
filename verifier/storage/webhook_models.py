"""Tables of outbound webhooks: endpoints per service token, the outbox of events (written in
the same transaction as the state change they describe) and one delivery row per
event × endpoint, which is the unit the worker claims, retries and dead-letters.

On the same `Base` (and naming convention) as the engine's models, so Alembic sees one schema.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from verifier.storage.models import Base, new_id


class EventType(StrEnum):
    """Every event railproof emits; the one source of truth for names and subscriptions."""

    proof_verified = "proof.verified"
    proof_failed = "proof.failed"
    proof_requires_review = "proof.requires_review"
    settlement_finalized = "settlement.finalized"
    settlement_reorged = "settlement.reorged"
    receipt_created = "receipt.created"
    entitlement_activated = "entitlement.activated"
    entitlement_revoked = "entitlement.revoked"
    # The payment under an active entitlement left the chain (a reorg) or can no longer be
    # its payment: a person decides, and the backend hears of it at once.
    entitlement_reorg_flagged = "entitlement.reorg_flagged"
    rail_paused = "rail.paused"
    rail_resumed = "rail.resumed"


class DeliveryStatus(StrEnum):
    pending = "pending"
    delivered = "delivered"
    dead_letter = "dead_letter"
    # The endpoint was deleted before delivery: nothing left to deliver to (and not a failure,
    # so it does not count toward the dead-letter depth alert).
    cancelled = "cancelled"


def _in(col: str, enum: type[StrEnum]) -> str:
    return f"{col} IN ({', '.join(repr(e.value) for e in enum)})"


def prefixed_id(prefix: str) -> str:
    # Typed ids (evt_, whd_, whe_) let an operator paste either an event or a delivery id.
    return f"{prefix}_{new_id()}"


class WebhookEndpoint(Base):
    __tablename__ = "webhook_endpoints"
    __table_args__ = (
        Index("ix_webhook_endpoints_principal", "principal", "active"),
        Index("ix_webhook_endpoints_active", "active"),
    )
    id: Mapped[str] = mapped_column(
        String(40), primary_key=True, default=lambda: prefixed_id("whe")
    )
    # The service token's identity as the API names it: "svc:<owners sorted, comma-joined>".
    principal: Mapped[str] = mapped_column(String(512))
    # SECURITY: the owners whose events this endpoint may receive, fixed at creation from the
    # token's owners; fan-out never sends another owner's event here.
    owners: Mapped[list[str]] = mapped_column(JSON)
    url: Mapped[str] = mapped_column(String(2048))
    event_types: Mapped[list[str]] = mapped_column(JSON)
    # SECURITY: the HMAC key. Kept because every delivery is signed with it; returned once at
    # creation and never again (not in lists, staff views, logs or errors).
    secret: Mapped[str] = mapped_column(String(128))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime]
    deactivated_at: Mapped[datetime | None]


class OutboxEvent(Base):
    __tablename__ = "outbox_events"
    __table_args__ = (
        CheckConstraint(_in("type", EventType), name="type"),
        CheckConstraint("sequence > 0", name="sequence_positive"),
        # Order per resource: sequence n+1 is written only after n committed (see events.emit).
        UniqueConstraint("resource_type", "resource_id", "sequence"),
        Index("ix_outbox_events_created", "created_at"),
        Index("ix_outbox_events_owner", "owner_id", "created_at"),
    )
    id: Mapped[str] = mapped_column(
        String(40), primary_key=True, default=lambda: prefixed_id("evt")
    )
    type: Mapped[str] = mapped_column(String(48))
    owner_id: Mapped[str | None] = mapped_column(String(128))  # None for rail.* events
    resource_type: Mapped[str] = mapped_column(String(32))
    resource_id: Mapped[str] = mapped_column(String(128))
    sequence: Mapped[int] = mapped_column(Integer)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)  # the resource as the API returns it
    created_at: Mapped[datetime]


class WebhookDelivery(Base):
    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        # At most one delivery of an event to an endpoint (replays reuse the row).
        UniqueConstraint("event_id", "endpoint_id"),
        CheckConstraint(_in("status", DeliveryStatus), name="status"),
        CheckConstraint("attempts >= 0", name="attempts_nonnegative"),
        CheckConstraint("status <> 'delivered' OR delivered_at IS NOT NULL", name="delivered_at"),
        # Staff lists by status, newest first (the claim walks each endpoint's own index).
        Index("ix_webhook_deliveries_status", "status", "created_at"),
        Index("ix_webhook_deliveries_endpoint_due", "endpoint_id", "status", "next_attempt_at"),
        # The leases in force (few): an endpoint's deliveries in flight, counted per claim.
        Index(
            "ix_webhook_deliveries_leased",
            "endpoint_id",
            "claimed_until",
            postgresql_where=text("claimed_until IS NOT NULL"),
            sqlite_where=text("claimed_until IS NOT NULL"),
        ),
    )
    id: Mapped[str] = mapped_column(
        String(40), primary_key=True, default=lambda: prefixed_id("whd")
    )
    event_id: Mapped[str] = mapped_column(ForeignKey("outbox_events.id"))
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id"))
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.pending)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    delivered_at: Mapped[datetime | None]
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    claimed_until: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
