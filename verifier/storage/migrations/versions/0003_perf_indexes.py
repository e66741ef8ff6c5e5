"""performance indexes for lookups that otherwise scan a table growing with every proof

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21 06:00:00.000000

Each index serves a query that runs per proof or per sweep (docs/bench.md, "Scale"):

- entitlements(receipt_id): the worker's reorg handling finds the entitlement a receipt
  activated, and assurance joins receipts to entitlements on it;
- audit_events(subject_id, id): the admin audit view filtered by subject, newest first (the
  existing (subject_type, subject_id) index cannot serve a filter on subject_id alone);
- proofs(status, created_at): the worker's auto-apply sweep (verified, oldest first) and
  assurance's pending-past-SLA check;
- proofs(created_at, id): the unfiltered newest-first proof listing.

The matching Index(...) entries belong in verifier/storage/models.py so autogenerate agrees.
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


INDEXES = (
    ("ix_entitlements_receipt", "entitlements", ["receipt_id"]),
    ("ix_audit_events_subject_id", "audit_events", ["subject_id", "id"]),
    ("ix_proofs_status_created", "proofs", ["status", "created_at"]),
    ("ix_proofs_created", "proofs", ["created_at", "id"]),
)


def upgrade() -> None:
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns, unique=False)


def downgrade() -> None:
    for name, table, _ in reversed(INDEXES):
        op.drop_index(name, table_name=table)
