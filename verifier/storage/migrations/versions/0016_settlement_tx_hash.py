"""settlement evidence names its transaction where the proof does not

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06 17:20:00.000000

An x402 payment can be verified before it is settled; the worker then finds its settlement
on chain. The settling transaction's hash was only in the evidence's detail text, so the apply
gate could not match a reconciliation resolution (refunded, not ours) about that transaction
to the proof. Evidence now keeps it in a column of its own, filled here for the rows
written before from their detail ("settled by 0x…").
"""

import re

import sqlalchemy as sa
from alembic import op

_SETTLED_BY = re.compile(r"^settled by (0x[0-9a-fA-F]{64})\b")

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("settlement_evidence", sa.Column("tx_hash", sa.String(80), nullable=True))
    bind = op.get_bind()
    rows = bind.execute(
        sa.text("SELECT id, detail FROM settlement_evidence WHERE detail LIKE 'settled by 0x%'")
    ).all()
    for row_id, detail in rows:
        m = _SETTLED_BY.match(detail)
        if m:
            bind.execute(
                sa.text("UPDATE settlement_evidence SET tx_hash = :tx WHERE id = :id"),
                {"tx": m[1].lower(), "id": row_id},
            )


def downgrade() -> None:
    with op.batch_alter_table("settlement_evidence") as b:
        b.drop_column("tx_hash")
