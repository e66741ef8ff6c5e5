"""audit hardening: TRUNCATE audit_events is refused on PostgreSQL

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-09 09:00:00.000000

Row triggers (0001) refuse UPDATE and DELETE, but TRUNCATE fires no row trigger: the table's
owner could empty the log, and the chain that is left (none) would verify. A statement
trigger refuses it, for the owner too. SQLite has no TRUNCATE (its DELETE is covered).
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # SECURITY: audit_events_append_only() (0001) raises for any statement it guards.
        op.execute("""
            CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
            FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only()""")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_events_no_truncate ON audit_events")
