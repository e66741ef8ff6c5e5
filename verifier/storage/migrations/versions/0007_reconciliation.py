"""reconciliation runs and findings, discovery cursors

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 10:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reconciliation_runs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("scope", sa.String(length=32), nullable=False),
        sa.Column("rail_id", sa.String(length=64), nullable=True),
        sa.Column("since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("row_limit", sa.Integer(), nullable=True),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.Column("incident_id", sa.String(length=128), nullable=False),
        sa.Column("operator_reason", sa.Text(), nullable=False),
        sa.Column("staff", sa.String(length=128), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.CheckConstraint(
            "status IN ('running', 'complete', 'incomplete', 'failed')",
            name=op.f("ck_reconciliation_runs_status"),
        ),
        sa.CheckConstraint(
            "scope IN ('rail_proofs', 'chain_inflows')", name=op.f("ck_reconciliation_runs_scope")
        ),
        sa.CheckConstraint(
            "incident_id <> '' AND operator_reason <> ''",
            name=op.f("ck_reconciliation_runs_operator_context"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconciliation_runs")),
    )
    with op.batch_alter_table("reconciliation_runs", schema=None) as batch_op:
        batch_op.create_index("ix_reconciliation_runs_started", ["started_at", "id"], unique=False)
        batch_op.create_index("ix_reconciliation_runs_scope", ["scope", "started_at"], unique=False)

    op.create_table(
        "reconciliation_findings",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=48), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("subjects", sa.JSON(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("proposed_repair", sa.Text(), nullable=False),
        sa.Column("repair_status", sa.String(length=16), nullable=False),
        sa.Column("repair_result", sa.JSON(), nullable=True),
        sa.CheckConstraint(
            "severity IN ('critical', 'warning', 'info')",
            name=op.f("ck_reconciliation_findings_severity"),
        ),
        sa.CheckConstraint(
            "repair_status IN ('none', 'proposed', 'applied', 'failed')",
            name=op.f("ck_reconciliation_findings_repair_status"),
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["reconciliation_runs.id"],
            name=op.f("fk_reconciliation_findings_run_id_reconciliation_runs"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconciliation_findings")),
    )
    with op.batch_alter_table("reconciliation_findings", schema=None) as batch_op:
        batch_op.create_index("ix_reconciliation_findings_run", ["run_id", "id"], unique=False)

    op.create_table(
        "discovery_cursors",
        sa.Column("watch_key", sa.String(length=256), nullable=False),
        sa.Column("rail_id", sa.String(length=64), nullable=False),
        sa.Column("last_signature", sa.String(length=128), nullable=True),
        sa.Column("last_block", sa.BigInteger(), nullable=True),
        sa.Column("idle_polls", sa.Integer(), nullable=False),
        sa.Column("next_poll_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("watch_key", name=op.f("pk_discovery_cursors")),
    )


def downgrade() -> None:
    op.drop_table("discovery_cursors")
    with op.batch_alter_table("reconciliation_findings", schema=None) as batch_op:
        batch_op.drop_index("ix_reconciliation_findings_run")
    op.drop_table("reconciliation_findings")
    with op.batch_alter_table("reconciliation_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_reconciliation_runs_scope")
        batch_op.drop_index("ix_reconciliation_runs_started")
    op.drop_table("reconciliation_runs")
