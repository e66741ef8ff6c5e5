"""discovery walks go on across cycles

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 14:40:00.000000

A Solana watch read the signatures of its address newest first, and gave up past a number of
pages without moving its cursor: a backlog longer than one scan (dust transfers to the
treasury are enough) had every cycle read the same newest pages, and the payments behind
them were never reached. A walk now goes on in the next cycle from the oldest signature it
has done with (`walk_before`), and the newest signature when it started (`walk_newest`)
becomes the cursor once it reaches the last one.

A walk stopped at a listed transaction the node does not return (or not yet) names it
(`stuck_signature`) with the number of cycles in a row it stopped there (`stuck_failures`):
while it is stuck, each cycle reads the newest signatures first, and after a bounded number
of such cycles the transaction is passed over (logged; reconciliation still reports it).

A reference's watch now reads from its cursor as the treasury's does. Until now its cursor
was written (the newest signature naming the reference) but never read: every one is
cleared, so that no payment listed behind it is skipped.
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("discovery_cursors", sa.Column("walk_before", sa.String(128), nullable=True))
    op.add_column("discovery_cursors", sa.Column("walk_newest", sa.String(128), nullable=True))
    op.add_column("discovery_cursors", sa.Column("stuck_signature", sa.String(128), nullable=True))
    op.add_column("discovery_cursors", sa.Column("stuck_failures", sa.Integer(), nullable=True))
    op.execute(
        "UPDATE discovery_cursors SET last_signature = NULL WHERE watch_key LIKE 'solana:%:ref:%'"
    )


def downgrade() -> None:
    with op.batch_alter_table("discovery_cursors") as b:
        b.drop_column("stuck_failures")
        b.drop_column("stuck_signature")
        b.drop_column("walk_newest")
        b.drop_column("walk_before")
