"""release-gate evidence

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 14:00:00.000000

Evidence per rail and release gate (drill, rehearsal by hash, rule integrity, attestations),
required before an approval of production enablement takes effect.
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "release_gate_evidence",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("rail_id", sa.String(64), nullable=False),
        sa.Column("gate", sa.String(64), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("evidence_sha256", sa.String(64), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("recorded_by", sa.String(128), nullable=False),
        sa.Column("incident_id", sa.String(128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_release_gate_evidence")),
        sa.UniqueConstraint("id", name=op.f("uq_release_gate_evidence_id")),
        sa.CheckConstraint(
            "outcome IN ('passed', 'failed')", name=op.f("ck_release_gate_evidence_outcome")
        ),
        sa.CheckConstraint(
            "incident_id <> '' AND reason <> ''",
            name=op.f("ck_release_gate_evidence_operator_context"),
        ),
    )
    op.create_index(
        "ix_release_gate_evidence_rail_gate",
        "release_gate_evidence",
        ["rail_id", "gate", "seq"],
    )


def downgrade() -> None:
    op.drop_index("ix_release_gate_evidence_rail_gate", table_name="release_gate_evidence")
    op.drop_table("release_gate_evidence")
