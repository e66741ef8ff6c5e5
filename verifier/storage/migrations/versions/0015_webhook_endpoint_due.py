"""each endpoint's next delivery found by an index

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06 17:00:00.000000

Deliveries are leased per endpoint (at most a few in flight to one receiver), so the worker
looks up each active endpoint's earliest due delivery. The endpoint's index gains the due
time: one tenant's long backlog is then walked in order, not read whole and sorted (a
pending delivery without a time, which none should be, is given its creation time). The
leases in force get a partial index of their own, for counting an endpoint's deliveries in
flight without reading its backlog.
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A pending delivery is claimed by its time; none may lack one (each has had it since it
    # was made: this is for rows written otherwise).
    op.execute(
        "UPDATE webhook_deliveries SET next_attempt_at = created_at "
        "WHERE status = 'pending' AND next_attempt_at IS NULL"
    )
    op.drop_index("ix_webhook_deliveries_endpoint", table_name="webhook_deliveries")
    # The claim must walk each endpoint's index: one in due order across all endpoints let
    # the planner walk every tenant's due deliveries for each endpoint instead.
    op.drop_index("ix_webhook_deliveries_due", table_name="webhook_deliveries")
    op.create_index("ix_webhook_deliveries_status", "webhook_deliveries", ["status", "created_at"])
    op.create_index(
        "ix_webhook_deliveries_endpoint_due",
        "webhook_deliveries",
        ["endpoint_id", "status", "next_attempt_at"],
    )
    leased = sa.text("claimed_until IS NOT NULL")
    op.create_index(
        "ix_webhook_deliveries_leased",
        "webhook_deliveries",
        ["endpoint_id", "claimed_until"],
        postgresql_where=leased,
        sqlite_where=leased,
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_leased", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_status", table_name="webhook_deliveries")
    op.create_index(
        "ix_webhook_deliveries_due", "webhook_deliveries", ["status", "next_attempt_at"]
    )
    op.drop_index("ix_webhook_deliveries_endpoint_due", table_name="webhook_deliveries")
    op.create_index(
        "ix_webhook_deliveries_endpoint", "webhook_deliveries", ["endpoint_id", "status"]
    )
