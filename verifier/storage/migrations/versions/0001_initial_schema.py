"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-21 05:10:14.115644
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "approvals",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("rail_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("value", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("requested_by", sa.String(length=128), nullable=False),
        sa.Column("approved_by", sa.String(length=128), nullable=True),
        sa.Column("incident_id", sa.String(length=128), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("kind IN ('production', 'treasury')", name=op.f("ck_approvals_kind")),
        sa.CheckConstraint("status IN ('pending', 'approved')", name=op.f("ck_approvals_status")),
        sa.CheckConstraint(
            "approved_by IS NULL OR approved_by <> requested_by",
            name=op.f("ck_approvals_two_person"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_approvals")),
    )
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("subject_type", sa.String(length=32), nullable=False),
        sa.Column("subject_id", sa.String(length=128), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("incident_id", sa.String(length=128), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
        sa.UniqueConstraint("prev_hash", name=op.f("uq_audit_events_prev_hash")),
    )
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.create_index(
            "ix_audit_events_subject", ["subject_type", "subject_id"], unique=False
        )

    op.create_table(
        "idempotency_claims",
        sa.Column("principal", sa.String(length=128), nullable=False),
        sa.Column("endpoint", sa.String(length=128), nullable=False),
        sa.Column("key", sa.String(length=256), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("response_code", sa.Integer(), nullable=True),
        sa.Column("response", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('in_progress', 'completed')", name=op.f("ck_idempotency_claims_status")
        ),
        sa.PrimaryKeyConstraint("principal", "endpoint", "key", name=op.f("pk_idempotency_claims")),
    )
    with op.batch_alter_table("idempotency_claims", schema=None) as batch_op:
        batch_op.create_index(
            "ix_idempotency_claims_status", ["status", "created_at"], unique=False
        )

    op.create_table(
        "payment_sessions",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("owner_id", sa.String(length=128), nullable=False),
        sa.Column("rail_id", sa.String(length=64), nullable=False),
        sa.Column("access_product_id", sa.String(length=128), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("network", sa.String(length=32), nullable=False),
        sa.Column("asset", sa.String(length=128), nullable=False),
        sa.Column("recipient", sa.String(length=128), nullable=False),
        sa.Column("reference", sa.String(length=128), nullable=True),
        sa.Column("memo", sa.String(length=256), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("paid_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('open', 'paid', 'expired', 'cancelled')",
            name=op.f("ck_payment_sessions_status"),
        ),
        sa.CheckConstraint("amount > 0", name=op.f("ck_payment_sessions_amount_positive")),
        sa.CheckConstraint(
            "expires_at > created_at", name=op.f("ck_payment_sessions_expiry_after_creation")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_sessions")),
        sa.UniqueConstraint(
            "rail_id", "reference", name=op.f("uq_payment_sessions_rail_id_reference")
        ),
    )
    with op.batch_alter_table("payment_sessions", schema=None) as batch_op:
        batch_op.create_index("ix_payment_sessions_owner", ["owner_id", "created_at"], unique=False)

    op.create_table(
        "rail_state",
        sa.Column("rail_id", sa.String(length=64), nullable=False),
        sa.Column("production_enabled", sa.Boolean(), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("treasury", sa.String(length=128), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=128), nullable=True),
        sa.PrimaryKeyConstraint("rail_id", name=op.f("pk_rail_state")),
    )
    op.create_table(
        "proofs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("rail_id", sa.String(length=64), nullable=False),
        sa.Column("proof_type", sa.String(length=32), nullable=False),
        sa.Column("ref", sa.String(length=256), nullable=False),
        sa.Column("raw", sa.Text(), nullable=False),
        sa.Column("owner_id", sa.String(length=128), nullable=False),
        sa.Column("session_id", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("failure_code", sa.String(length=48), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_check_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "status IN ('verified', 'failed', 'pending', 'requires_review')",
            name=op.f("ck_proofs_status"),
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["payment_sessions.id"],
            name=op.f("fk_proofs_session_id_payment_sessions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_proofs")),
        sa.UniqueConstraint("fingerprint", name=op.f("uq_proofs_fingerprint")),
    )
    with op.batch_alter_table("proofs", schema=None) as batch_op:
        batch_op.create_index("ix_proofs_due", ["status", "next_check_at"], unique=False)
        batch_op.create_index("ix_proofs_rail_created", ["rail_id", "created_at"], unique=False)
        batch_op.create_index("ix_proofs_session", ["session_id"], unique=False)

    op.create_table(
        "verification_attempts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("proof_id", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("failure_code", sa.String(length=48), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("observed", sa.JSON(), nullable=False),
        sa.Column("rpc_calls", sa.Integer(), nullable=False),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("worker", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "source IN ('live', 'cassette', 'local')", name=op.f("ck_verification_attempts_source")
        ),
        sa.CheckConstraint(
            "status IN ('verified', 'failed', 'pending', 'requires_review')",
            name=op.f("ck_verification_attempts_status"),
        ),
        sa.ForeignKeyConstraint(
            ["proof_id"], ["proofs.id"], name=op.f("fk_verification_attempts_proof_id_proofs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_verification_attempts")),
    )
    with op.batch_alter_table("verification_attempts", schema=None) as batch_op:
        batch_op.create_index("ix_verification_attempts_proof", ["proof_id", "id"], unique=False)

    op.create_table(
        "settlement_evidence",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("proof_id", sa.String(length=32), nullable=False),
        sa.Column("attempt_id", sa.Integer(), nullable=False),
        sa.Column("finality", sa.String(length=16), nullable=False),
        sa.Column("is_final", sa.Boolean(), nullable=False),
        sa.Column("reorged", sa.Boolean(), nullable=False),
        sa.Column("slot", sa.BigInteger(), nullable=True),
        sa.Column("block_number", sa.BigInteger(), nullable=True),
        sa.Column("block_hash", sa.String(length=80), nullable=True),
        sa.Column("confirmations", sa.BigInteger(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("observed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["attempt_id"],
            ["verification_attempts.id"],
            name=op.f("fk_settlement_evidence_attempt_id_verification_attempts"),
        ),
        sa.ForeignKeyConstraint(
            ["proof_id"], ["proofs.id"], name=op.f("fk_settlement_evidence_proof_id_proofs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_settlement_evidence")),
    )
    with op.batch_alter_table("settlement_evidence", schema=None) as batch_op:
        batch_op.create_index("ix_settlement_evidence_proof", ["proof_id", "id"], unique=False)

    op.create_table(
        "receipts",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("proof_id", sa.String(length=32), nullable=False),
        sa.Column("session_id", sa.String(length=32), nullable=False),
        sa.Column("settlement_id", sa.Integer(), nullable=False),
        sa.Column("owner_id", sa.String(length=128), nullable=False),
        sa.Column("access_product_id", sa.String(length=128), nullable=False),
        sa.Column("rail_id", sa.String(length=64), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("amount > 0", name=op.f("ck_receipts_amount_positive")),
        sa.ForeignKeyConstraint(
            ["proof_id"], ["proofs.id"], name=op.f("fk_receipts_proof_id_proofs")
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["payment_sessions.id"],
            name=op.f("fk_receipts_session_id_payment_sessions"),
        ),
        sa.ForeignKeyConstraint(
            ["settlement_id"],
            ["settlement_evidence.id"],
            name=op.f("fk_receipts_settlement_id_settlement_evidence"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_receipts")),
        sa.UniqueConstraint("proof_id", name=op.f("uq_receipts_proof_id")),
        sa.UniqueConstraint("session_id", name=op.f("uq_receipts_session_id")),
    )
    op.create_table(
        "entitlements",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("owner_id", sa.String(length=128), nullable=False),
        sa.Column("access_product_id", sa.String(length=128), nullable=False),
        sa.Column("session_id", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("receipt_id", sa.String(length=32), nullable=True),
        sa.Column("reorg_flagged", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "status = 'pending' OR receipt_id IS NOT NULL",
            name=op.f("ck_entitlements_receipt_required"),
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'active', 'revoked')", name=op.f("ck_entitlements_status")
        ),
        sa.ForeignKeyConstraint(
            ["receipt_id"], ["receipts.id"], name=op.f("fk_entitlements_receipt_id_receipts")
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["payment_sessions.id"],
            name=op.f("fk_entitlements_session_id_payment_sessions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_entitlements")),
        sa.UniqueConstraint("session_id", name=op.f("uq_entitlements_session_id")),
    )
    with op.batch_alter_table("entitlements", schema=None) as batch_op:
        batch_op.create_index(
            "ix_entitlements_owner", ["owner_id", "access_product_id"], unique=False
        )

    _append_only_audit()


def _append_only_audit() -> None:
    # audit_events is append-only at the database too; tampering that gets past this (a
    # superuser dropping the trigger) is still caught by the hash chain.
    if op.get_bind().dialect.name == "postgresql":
        op.execute("""
            CREATE FUNCTION audit_events_append_only() RETURNS trigger AS $$
            BEGIN RAISE EXCEPTION 'audit_events is append-only'; END; $$ LANGUAGE plpgsql""")
        op.execute("""
            CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
            FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()""")
    else:
        for verb in ("UPDATE", "DELETE"):
            op.execute(f"""
                CREATE TRIGGER audit_events_no_{verb.lower()} BEFORE {verb} ON audit_events
                BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END""")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_events_append_only ON audit_events")
        op.execute("DROP FUNCTION IF EXISTS audit_events_append_only()")
    with op.batch_alter_table("entitlements", schema=None) as batch_op:
        batch_op.drop_index("ix_entitlements_owner")

    op.drop_table("entitlements")
    op.drop_table("receipts")
    with op.batch_alter_table("settlement_evidence", schema=None) as batch_op:
        batch_op.drop_index("ix_settlement_evidence_proof")

    op.drop_table("settlement_evidence")
    with op.batch_alter_table("verification_attempts", schema=None) as batch_op:
        batch_op.drop_index("ix_verification_attempts_proof")

    op.drop_table("verification_attempts")
    with op.batch_alter_table("proofs", schema=None) as batch_op:
        batch_op.drop_index("ix_proofs_session")
        batch_op.drop_index("ix_proofs_rail_created")
        batch_op.drop_index("ix_proofs_due")

    op.drop_table("proofs")
    op.drop_table("rail_state")
    with op.batch_alter_table("payment_sessions", schema=None) as batch_op:
        batch_op.drop_index("ix_payment_sessions_owner")

    op.drop_table("payment_sessions")
    with op.batch_alter_table("idempotency_claims", schema=None) as batch_op:
        batch_op.drop_index("ix_idempotency_claims_status")

    op.drop_table("idempotency_claims")
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_events_subject")

    op.drop_table("audit_events")
    op.drop_table("approvals")
