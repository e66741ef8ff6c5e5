"""The schema revision the database records (Alembic's version table)."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session


def revisions(s: Session) -> list[str]:
    """The revisions the database is at: one row, unless a newer version branched. One
    primary-key-sized read, cheap enough for every worker sweep."""
    return [str(v) for v in s.scalars(text("SELECT version_num FROM alembic_version"))]
