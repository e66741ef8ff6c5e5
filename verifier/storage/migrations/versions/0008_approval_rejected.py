"""approvals can be rejected

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 10:45:00.000000

A pending change another staff member refuses is `rejected` (who decided is in approved_by,
so the two-person check constraint holds for a rejection too), rather than left pending.
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("approvals") as b:
        b.drop_constraint(op.f("ck_approvals_status"), type_="check")
        b.create_check_constraint("status", "status IN ('pending', 'approved', 'rejected')")


def downgrade() -> None:
    op.execute(
        "UPDATE approvals SET status = 'pending', approved_by = NULL, decided_at = NULL "
        "WHERE status = 'rejected'"
    )
    with op.batch_alter_table("approvals") as b:
        b.drop_constraint(op.f("ck_approvals_status"), type_="check")
        b.create_check_constraint("status", "status IN ('pending', 'approved')")
