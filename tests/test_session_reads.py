"""A payment session as read: a session whose rail was removed from the catalog still
reads."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.conftest import auth, make_settings
from tests.helpers import FAKE_SESSION
from verifier.core.engine import Engine
from verifier.http.api import create_app


def _open(client) -> dict:
    r = client.post("/v1/payment-sessions", headers=auth(), json=FAKE_SESSION)
    assert r.status_code == 201, r.text
    return r.json()


def test_a_stored_session_of_a_rail_gone_from_the_catalog_still_reads(client, db_url):
    sess = _open(client)
    shipped = Engine(make_settings(db_url))  # the shipped catalog: no test rails
    try:
        with TestClient(create_app(shipped), raise_server_exceptions=False) as c:
            r = c.get(f"/v1/payment-sessions/{sess['id']}", headers=auth())
        assert r.status_code == 200, r.text
        got = r.json()
        assert (got["amount"], got["status"], got["rail_id"]) == (
            sess["amount"],
            "open",
            sess["rail_id"],
        )
        assert got["payment_requirements"] is None
    finally:
        shipped.db.dispose()
