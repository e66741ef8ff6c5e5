"""x402 payments held before transfer holds get their EIP-3009 identity

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 12:00:00.000000

0005 gave every proof holding its transfer then one hold, on its fingerprint. An x402 proof's
transfer has a second name, its EIP-3009 authorization, which is what a Base USDC proof of
the transaction that settled it holds too: without that hold, an x402 payment credited before
0005 could be credited again to any owner through its settlement's transaction hash. An x402
proof's normalized form is the authorization's identity (`chain_id:token:from:nonce`), so the
hold is written from it. Where another proof holds that identity already (a Base USDC proof
of the same settlement, verified since 0005), the payment backs two proofs: nothing is
overwritten, and each pair is logged for staff to resolve.
"""

import logging

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")

X402 = "x402_payment_payload"
HOLDING = "(p.status IN ('verified', 'requires_review') OR p.id IN (SELECT proof_id FROM receipts))"
KEY = "'eip3009:' || lower(p.ref)"


def upgrade() -> None:
    bind = op.get_bind()
    clashes = bind.execute(
        sa.text(
            f"SELECT p.id, h.proof_id FROM proofs p JOIN transfer_holds h "
            f"ON h.transfer_key = {KEY} "
            f"WHERE p.proof_type = :x402 AND {HOLDING} AND h.proof_id <> p.id"
        ),
        {"x402": X402},
    ).all()
    for proof_id, other in clashes:
        log.warning(
            "x402 proof %s and proof %s hold one EIP-3009 transfer: resolve by hand "
            "(revoke-entitlement on the one it was not made for)",
            proof_id,
            other,
        )
    op.execute(
        sa.text(
            "INSERT INTO transfer_holds (transfer_key, proof_id, session_id, owner_id, "
            f"created_at) SELECT {KEY}, p.id, p.session_id, p.owner_id, p.updated_at "
            f"FROM proofs p WHERE p.proof_type = :x402 AND {HOLDING} AND NOT EXISTS "
            f"(SELECT 1 FROM transfer_holds h WHERE h.transfer_key = {KEY})"
        ).bindparams(x402=X402)
    )


def downgrade() -> None:
    # The holds written here are the ones a submission writes today: they stay.
    pass
