"""transfer binding: session payer, references unique everywhere, one holding proof per
fingerprint, transfer holds

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 09:00:00.000000

A proof used to own its fingerprint from its first submission, whatever became of it, so
submitting someone else's transfer first (and failing) blocked its rightful session. Now a
fingerprint may have one proof per session, and only a holding proof (verified or
requires_review) reserves it: a partial unique index. Transfer holds give one transfer one
session across proof types (an x402 payload and its settlement's transaction hash).
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

HOLDING_SQL = "status IN ('verified', 'requires_review')"


class SharedReferences(RuntimeError):
    """Sessions of different rails carry one reference: this revision makes references unique
    across rails, and which session a reference belongs to is not the migration's to decide."""


def _refuse_shared_references() -> None:
    # Until now a reference was unique per rail, so a solana_usdc and a solana_usdt session
    # could carry one. Name them for the operator rather than die on the unique constraint.
    rows = (
        op.get_bind()
        .execute(
            sa.text(
                "SELECT reference, id, rail_id, status FROM payment_sessions WHERE reference IN "
                "(SELECT reference FROM payment_sessions WHERE reference IS NOT NULL "
                "GROUP BY reference HAVING count(*) > 1) ORDER BY reference, created_at, id"
            )
        )
        .all()
    )
    if not rows:
        return
    shared: dict[str, list[str]] = {}
    for reference, sid, rail_id, status in rows:
        shared.setdefault(reference, []).append(f"{sid} ({rail_id}, {status})")
    listed = "; ".join(f"{ref}: {', '.join(s)}" for ref, s in list(shared.items())[:20])
    more = f" and {len(shared) - 20} more" if len(shared) > 20 else ""
    raise SharedReferences(
        f"{len(shared)} reference(s) shared by sessions of different rails, which this "
        f"version refuses (a transfer carrying one could back either): {listed}{more}. "
        "Give each a reference of its own by hand (a session never paid and no longer open "
        "can drop its reference), then run the upgrade again"
    )


def upgrade() -> None:
    _refuse_shared_references()
    with op.batch_alter_table("payment_sessions") as b:
        b.add_column(sa.Column("payer", sa.String(length=128), nullable=True))
        b.drop_constraint("uq_payment_sessions_rail_id_reference", type_="unique")
        b.create_unique_constraint("uq_payment_sessions_reference", ["reference"])
    with op.batch_alter_table("proofs") as b:
        b.drop_constraint("uq_proofs_fingerprint", type_="unique")
        b.create_unique_constraint(
            "uq_proofs_fingerprint_session_id", ["fingerprint", "session_id"]
        )
    op.create_index(
        "ux_proofs_holding_fingerprint",
        "proofs",
        ["fingerprint"],
        unique=True,
        sqlite_where=sa.text(HOLDING_SQL),
        postgresql_where=sa.text(HOLDING_SQL),
    )
    op.create_table(
        "transfer_holds",
        sa.Column("transfer_key", sa.String(length=256), nullable=False),
        sa.Column("proof_id", sa.String(length=32), nullable=False),
        sa.Column("session_id", sa.String(length=32), nullable=False),
        sa.Column("owner_id", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["proof_id"], ["proofs.id"], name=op.f("fk_transfer_holds_proof_id_proofs")
        ),
        sa.PrimaryKeyConstraint("transfer_key", name=op.f("pk_transfer_holds")),
    )
    op.create_index("ix_transfer_holds_proof", "transfer_holds", ["proof_id"])
    op.create_index("ix_transfer_holds_session", "transfer_holds", ["session_id"])
    # Proofs that hold today (or stand under a receipt) keep their transfer: fingerprints
    # were unique until now, so each becomes one hold.
    op.execute(
        "INSERT INTO transfer_holds (transfer_key, proof_id, session_id, owner_id, created_at) "
        "SELECT 'proof:' || fingerprint, id, session_id, owner_id, updated_at FROM proofs "
        f"WHERE {HOLDING_SQL} OR id IN (SELECT proof_id FROM receipts)"
    )
    # The ambiguity check: open sessions a reference-less transfer could back.
    op.create_index(
        "ix_payment_sessions_match", "payment_sessions", ["rail_id", "recipient", "amount"]
    )


def downgrade() -> None:
    op.drop_index("ix_payment_sessions_match", table_name="payment_sessions")
    op.drop_index("ix_transfer_holds_session", table_name="transfer_holds")
    op.drop_index("ix_transfer_holds_proof", table_name="transfer_holds")
    op.drop_table("transfer_holds")
    op.drop_index("ux_proofs_holding_fingerprint", table_name="proofs")
    with op.batch_alter_table("proofs") as b:
        b.drop_constraint("uq_proofs_fingerprint_session_id", type_="unique")
        b.create_unique_constraint("uq_proofs_fingerprint", ["fingerprint"])
    with op.batch_alter_table("payment_sessions") as b:
        b.drop_constraint("uq_payment_sessions_reference", type_="unique")
        b.create_unique_constraint(
            "uq_payment_sessions_rail_id_reference", ["rail_id", "reference"]
        )
        b.drop_column("payer")
