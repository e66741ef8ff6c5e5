"""The repo's hot paths run statements through `Prepared` (storage/repo/prepared.py), on the
driver's cursor, and raise their own `DBAPIError`: a failed statement there quoted its values
(a proof's payload, a session's memo) in the text the worker's "sweep failed" and the API's
error log write, where the engines hide them. Hidden there too."""

from __future__ import annotations

import pytest
from sqlalchemy import bindparam, literal_column, select
from sqlalchemy.exc import DBAPIError

from verifier.storage.db import Database
from verifier.storage.models import PaymentSession
from verifier.storage.repo.prepared import Prepared

SECRET = "x402-payload-eyJzaWduYXR1cmUiOiIweGFiYyJ9"

# A statement that fails for a reason of its own (a column that does not exist) and carries a
# value: what SQLAlchemy would print among its parameters.
_FAILS = Prepared(
    select(PaymentSession.id).where(literal_column("no_such_column") == bindparam("memo"))
)


def test_a_prepared_statement_error_does_not_quote_its_parameters(db_url):
    db = Database(db_url)
    try:
        with pytest.raises(DBAPIError) as err, db.tx() as s:
            conn = s.connection()
            assert Prepared._fast(conn)  # the driver path the repo's hot paths take
            _FAILS.all(conn, {"memo": SECRET})
        assert "no_such_column" in str(err.value)  # the statement stays, to say what failed
        assert SECRET not in str(err.value) and SECRET not in repr(err.value), str(err.value)
    finally:
        db.dispose()
