"""reconciliation findings can be resolved by a person

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 17:00:00.000000

A finding whose repair happens outside railproof (a refund, a credit or an attach by hand, a
decision that the state stands) is resolved with an audit note. The resolution is kept by
(kind, subject key), what the finding is about, so every later run that finds the same thing
reports it `resolved` instead of drift. Findings store their subject key to be matched.
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("reconciliation_findings") as b:
        b.add_column(sa.Column("subject_key", sa.String(length=256), nullable=True))
        b.drop_constraint(op.f("ck_reconciliation_findings_repair_status"), type_="check")
        b.create_check_constraint(
            "repair_status",
            "repair_status IN ('none', 'proposed', 'applied', 'failed', 'resolved')",
        )
        b.create_index("ix_reconciliation_findings_subject", ["kind", "subject_key"], unique=False)

    op.create_table(
        "reconciliation_resolutions",
        sa.Column("kind", sa.String(length=48), nullable=False),
        sa.Column("subject_key", sa.String(length=256), nullable=False),
        sa.Column("resolution", sa.String(length=32), nullable=False),
        sa.Column("finding_id", sa.Integer(), nullable=False),
        sa.Column("staff", sa.String(length=128), nullable=False),
        sa.Column("incident_id", sa.String(length=128), nullable=False),
        sa.Column("operator_reason", sa.Text(), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "resolution IN ('refunded', 'credited_by_hand', 'attached_by_hand', 'not_ours', "
            "'accepted')",
            name=op.f("ck_reconciliation_resolutions_resolution"),
        ),
        sa.CheckConstraint(
            "incident_id <> '' AND operator_reason <> ''",
            name=op.f("ck_reconciliation_resolutions_operator_context"),
        ),
        sa.ForeignKeyConstraint(
            ["finding_id"],
            ["reconciliation_findings.id"],
            name=op.f("fk_reconciliation_resolutions_finding_id_reconciliation_findings"),
        ),
        sa.PrimaryKeyConstraint("kind", "subject_key", name=op.f("pk_reconciliation_resolutions")),
    )


def downgrade() -> None:
    op.drop_table("reconciliation_resolutions")
    op.execute(
        "UPDATE reconciliation_findings SET repair_status = 'none' WHERE repair_status = 'resolved'"
    )
    with op.batch_alter_table("reconciliation_findings") as b:
        b.drop_index("ix_reconciliation_findings_subject")
        b.drop_constraint(op.f("ck_reconciliation_findings_repair_status"), type_="check")
        b.create_check_constraint(
            "repair_status", "repair_status IN ('none', 'proposed', 'applied', 'failed')"
        )
        b.drop_column("subject_key")
