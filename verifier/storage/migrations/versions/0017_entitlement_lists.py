"""an owner's entitlements a page at a time, and the flagged ones counted cheaply

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06 17:55:00.000000

Every payment session adds an entitlement (pending until paid), so one token's sessions grow
its owner's list without bound: `GET /v1/entitlements` now answers a page at a time, oldest
first, walking an index on (owner, creation time, id). The reorg alert's gauge, refreshed at
every metrics scrape, counts the flagged active entitlements: a partial index on the flagged
ones (a handful) keeps the scrape from reading the whole table.
"""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_entitlements_owner_created", "entitlements", ["owner_id", "created_at", "id"]
    )
    op.create_index(
        "ix_entitlements_flagged",
        "entitlements",
        ["status"],
        postgresql_where=sa.text("reorg_flagged IS true"),
        sqlite_where=sa.text("reorg_flagged IS 1"),
    )


def downgrade() -> None:
    op.drop_index("ix_entitlements_flagged", table_name="entitlements")
    op.drop_index("ix_entitlements_owner_created", table_name="entitlements")
