"""A database error's text is logged (a worker's failed sweep, a refused request's cause):
SQLAlchemy puts the statement's parameters into it unless told not to, and those are a proof's
payload, a session's memo, a token's hash. They are hidden on every engine railproof makes."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from verifier.storage.db import make_engine

SECRET = "x402-payload-eyJzaWduYXR1cmUiOiIweGFiYyJ9"


def test_a_failed_statement_does_not_quote_its_parameters(db_url):
    engine = make_engine(db_url)
    try:
        with pytest.raises(DBAPIError) as err, engine.connect() as c:
            c.execute(text("SELECT * FROM no_such_table WHERE x = :p"), {"p": SECRET})
        assert "no_such_table" in str(err.value)  # the statement stays, to say what failed
        assert SECRET not in str(err.value) and SECRET not in repr(err.value)
    finally:
        engine.dispose()
