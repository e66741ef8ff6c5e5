"""What the PostgreSQL fast path relies on: the prepare threshold named in the URL (PgBouncer
in transaction mode), and a unique insert that leaves its transaction usable without a
savepoint (storage.repo.rows.Unique), on both databases."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from tests.helpers import session_row
from verifier.storage.db import PREPARE_THRESHOLD, Database, _prepare_threshold
from verifier.storage.models import PaymentSession
from verifier.storage.repo import rows
from verifier.storage.repo.prepared import PREPARE_AFTER

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/railproof"


def test_prepare_threshold_is_taken_out_of_the_url():
    assert _prepare_threshold(PG) == (PG, PREPARE_THRESHOLD)
    url, none = _prepare_threshold(PG + "?prepare_threshold=none")
    assert (url, none) == (PG, None)
    url, zero = _prepare_threshold(PG + "?sslmode=disable&prepare_threshold=0")
    assert zero == 0 and url == PG + "?sslmode=disable"


def test_a_bad_prepare_threshold_is_refused_naming_it():
    with pytest.raises(ValueError, match="prepare_threshold"):
        _prepare_threshold(PG + "?prepare_threshold=often")


@pytest.mark.postgres
def test_connections_get_the_threshold_the_url_names(pg_template):
    from tests.conftest import make_pg_db

    url, drop = make_pg_db(pg_template)
    try:
        for query, want in (("", PREPARE_THRESHOLD), ("?prepare_threshold=none", None)):
            db = Database(url + query)
            try:
                raw = db.engine.raw_connection()
                try:
                    # The repo prepares; psycopg never does (its DEALLOCATE ALL on a rollback
                    # would drop the repo's statements too).
                    assert raw.info[PREPARE_AFTER] == want
                    assert raw.driver_connection.prepare_threshold is None
                finally:
                    raw.close()
            finally:
                db.dispose()
    finally:
        drop()


def test_a_refused_unique_insert_leaves_the_transaction_usable(db_url):
    db = Database(db_url)
    unique = rows.Unique(rows.table(PaymentSession))
    try:
        with db.tx() as s:
            unique.insert(s.connection(), session_row("ref-1"))
            with pytest.raises(IntegrityError):
                unique.insert(s.connection(), session_row("ref-1"))  # reference in use
            # The transaction goes on: no savepoint was needed to keep it.
            unique.insert(s.connection(), session_row("ref-2"))
        with db.tx() as s:
            refs = s.scalars(select(PaymentSession.reference).order_by(PaymentSession.reference))
            assert list(refs) == ["ref-1", "ref-2"]
            assert s.scalar(select(func.count()).select_from(PaymentSession)) == 2
    finally:
        db.dispose()
