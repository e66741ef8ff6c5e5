"""an event for an entitlement flagged by a reorg

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07 11:30:00.000000

The payment under an active entitlement that leaves the chain (or can no longer be its
payment) flags the entitlement for staff; a backend that grants access by events now hears
of it as `entitlement.reorg_flagged`, not only as the proof's `settlement.reorged`.
"""

from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

_BEFORE = (
    "proof.verified",
    "proof.failed",
    "proof.requires_review",
    "settlement.finalized",
    "settlement.reorged",
    "receipt.created",
    "entitlement.activated",
    "entitlement.revoked",
    "rail.paused",
    "rail.resumed",
)
_AFTER = (*_BEFORE, "entitlement.reorg_flagged")


def _types(names: tuple[str, ...]) -> str:
    return "type IN (" + ", ".join(f"'{n}'" for n in names) + ")"


def upgrade() -> None:
    with op.batch_alter_table("outbox_events") as b:
        b.drop_constraint(op.f("ck_outbox_events_type"), type_="check")
        b.create_check_constraint("type", _types(_AFTER))


def downgrade() -> None:
    # The deliveries of those events go with them (their rows name the event).
    op.execute(
        "DELETE FROM webhook_deliveries WHERE event_id IN "
        "(SELECT id FROM outbox_events WHERE type = 'entitlement.reorg_flagged')"
    )
    op.execute("DELETE FROM outbox_events WHERE type = 'entitlement.reorg_flagged'")
    with op.batch_alter_table("outbox_events") as b:
        b.drop_constraint(op.f("ck_outbox_events_type"), type_="check")
        b.create_check_constraint("type", _types(_BEFORE))
