"""an owner's entitlements listed in the order they were committed

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-07 18:30:00.000000

`GET /v1/entitlements` paged by (created_at, id), but created_at is the clock read when the
session's request starts, and its transaction commits later (after the audit chain's lock):
on PostgreSQL an entitlement could commit behind a page's last row a client already held,
and no later page held it. Each entitlement now has `seq`, its place in the lists, given
under the audit chain's lock its session's transaction holds to its commit, so places follow
commit order; pages walk (owner, seq). The rows stored before are numbered in the order
their lists had, (created_at, id).
"""

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("entitlements", sa.Column("seq", sa.BigInteger(), nullable=True))
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        bind.execute(
            sa.text(
                "UPDATE entitlements SET seq = numbered.n FROM (SELECT id, row_number() "
                "OVER (ORDER BY created_at, id) AS n FROM entitlements) AS numbered "
                "WHERE entitlements.id = numbered.id"
            )
        )
    else:  # SQLite before 3.33 has no UPDATE ... FROM
        ids = bind.execute(sa.text("SELECT id FROM entitlements ORDER BY created_at, id"))
        numbered = [{"n": n, "id": i} for n, (i,) in enumerate(ids, start=1)]
        if numbered:
            bind.execute(sa.text("UPDATE entitlements SET seq = :n WHERE id = :id"), numbered)
    op.create_index("ix_entitlements_seq", "entitlements", ["seq"], unique=True)
    op.create_index("ix_entitlements_owner_seq", "entitlements", ["owner_id", "seq"])
    op.drop_index("ix_entitlements_owner_created", table_name="entitlements")


def downgrade() -> None:
    op.create_index(
        "ix_entitlements_owner_created", "entitlements", ["owner_id", "created_at", "id"]
    )
    op.drop_index("ix_entitlements_owner_seq", table_name="entitlements")
    op.drop_index("ix_entitlements_seq", table_name="entitlements")
    with op.batch_alter_table("entitlements") as b:
        b.drop_column("seq")
