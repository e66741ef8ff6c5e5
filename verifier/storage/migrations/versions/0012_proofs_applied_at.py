"""proofs remember when they were applied

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 14:30:00.000000

The worker's apply sweep looks for verified proofs with a final settlement and no receipt.
Found by joining every proof's latest settlement evidence and anti-joining the receipts, that
read grew with every proof ever stored (250 ms a sweep at 100,000 proofs on PostgreSQL). A
proof now carries `applied_at` (set in the transaction that creates its receipt), and the
sweep reads a partial index of the proofs not applied yet by status, so it meets only the
verified ones waiting (for finality, or blocked). Proofs applied before this migration get
their receipt's time.
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

UNAPPLIED_SQL = "applied_at IS NULL"


def upgrade() -> None:
    op.add_column("proofs", sa.Column("applied_at", sa.DateTime(timezone=True), nullable=True))
    op.execute(
        "UPDATE proofs SET applied_at = "
        "(SELECT receipts.created_at FROM receipts WHERE receipts.proof_id = proofs.id) "
        "WHERE EXISTS (SELECT 1 FROM receipts WHERE receipts.proof_id = proofs.id)"
    )
    op.create_index(
        "ix_proofs_unapplied",
        "proofs",
        ["status", "created_at"],
        sqlite_where=sa.text(UNAPPLIED_SQL),
        postgresql_where=sa.text(UNAPPLIED_SQL),
    )


def downgrade() -> None:
    op.drop_index("ix_proofs_unapplied", table_name="proofs")
    with op.batch_alter_table("proofs") as b:
        b.drop_column("applied_at")
