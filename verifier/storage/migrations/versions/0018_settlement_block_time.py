"""settlement evidence keeps the settling block's time

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07 10:40:00.000000

An x402 payment can be verified before it is settled; the worker then finds its settlement
on chain. The apply gate's window check ("settled before the session opened") read the chain
time only from the verified attempt, which has none for such a payment, so a settlement mined
before its session passed it. Evidence now keeps the settling block's timestamp where the
rail reads it. Rows written before have none: the worker's next finality answer for the proof
fills it, and until then the gate refuses an x402 proof whose settlement time is unknown. An
x402 proof verified and not yet credited whose settlement was already final is asked nothing
more by the worker (its next check is unset): it is made due again here.
"""

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "settlement_evidence",
        sa.Column("block_time", sa.DateTime(timezone=True), nullable=True),
    )
    # Due at once (a time already stored in the column's own form is in the past).
    op.execute(
        "UPDATE proofs SET next_check_at = updated_at"
        " WHERE status = 'verified' AND next_check_at IS NULL"
        " AND proof_type = 'x402_payment_payload'"
        " AND id NOT IN (SELECT proof_id FROM receipts)"
    )


def downgrade() -> None:
    with op.batch_alter_table("settlement_evidence") as b:
        b.drop_column("block_time")
