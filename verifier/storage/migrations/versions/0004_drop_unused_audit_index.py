"""drop audit_events(subject_type, subject_id): no query filters on the type

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21 08:00:00.000000

The admin audit view filters on subject_id alone, which audit_events(subject_id, id) serves
(0003). The older index was written on every audit append (three per submission) and read by
nothing.
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_audit_events_subject", table_name="audit_events")


def downgrade() -> None:
    op.create_index(
        "ix_audit_events_subject", "audit_events", ["subject_type", "subject_id"], unique=False
    )
