"""indexes for staff reads

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 15:45:00.000000

The staff reads added with the operator runbook filter receipts by owner and the audit trail
by incident id: an index each, so neither scans its table as it grows.
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_receipts_owner", "receipts", ["owner_id", "created_at"])
    op.create_index("ix_audit_events_incident_id", "audit_events", ["incident_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_audit_events_incident_id", table_name="audit_events")
    op.drop_index("ix_receipts_owner", table_name="receipts")
