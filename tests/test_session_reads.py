"""A payment session as read: `expired` is derived when an open session is past its
`expires_at` (never stored: a payment made inside the window is still taken and credited
after it), an expired session shows no payment instructions, and a session whose rail was
removed from the catalog still reads."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.conftest import STAFF_TOKEN, auth, make_settings
from tests.fake_rail import catalog_with_fake
from tests.helpers import FAKE_SESSION, advance
from tests.test_console import _CSRF
from verifier.core.engine import Engine
from verifier.http.api import create_app
from verifier.http.console import console_router
from verifier.storage.models import PaymentSession

STAFF = auth(STAFF_TOKEN)
OPS = {"confirm": True, "incident_id": "INC-77", "operator_reason": "late payment"}
TTL = 3600  # the default session lifetime


def _open(client) -> dict:
    r = client.post("/v1/payment-sessions", headers=auth(), json=FAKE_SESSION)
    assert r.status_code == 201, r.text
    return r.json()


def _pay(chain, tx: str, sess: dict, when: int | None = None) -> None:
    chain.txs[tx] = {
        "status": "ok",
        "to": "fatreasury",
        "amount": int(sess["amount"]),
        "asset": "fusd",
        "refs": [sess["reference"]],
        "finality": "finalized",
        **({"time": when} if when is not None else {}),
    }


def _read(client, sess: dict) -> dict:
    r = client.get(f"/v1/payment-sessions/{sess['id']}", headers=auth())
    assert r.status_code == 200, r.text
    return r.json()


def _stored_status(engine, session_id: str) -> str:
    with engine.db.tx() as s:
        return s.scalar(select(PaymentSession.status).where(PaymentSession.id == session_id))


def test_an_open_session_reads_open_with_its_instructions_until_it_expires(client, engine):
    sess = _open(client)
    advance(engine, TTL)  # at the expiry itself: still open
    got = _read(client, sess)
    assert got["status"] == "open" and got["payment_requirements"] is not None
    advance(engine, 1)
    got = _read(client, sess)
    assert (got["status"], got["payment_requirements"]) == ("expired", None)
    assert _stored_status(engine, sess["id"]) == "open"  # read so, never written


def test_an_unpaid_session_past_its_expiry_reads_expired_and_still_takes_its_late_proof(
    client, engine, chain
):
    sess = _open(client)
    opened = int(engine.now().timestamp())
    _pay(chain, "fx0b0b0b0b01", sess, when=opened + 60)  # paid inside the window
    advance(engine, TTL + 5)
    assert _read(client, sess)["status"] == "expired"
    late = client.post(
        "/v1/proofs", headers=auth(), json={"session_id": sess["id"], "proof": "fx0b0b0b0b01"}
    )
    assert late.status_code == 201 and late.json()["status"] == "verified", late.text
    r = client.post(f"/v1/admin/proofs/{late.json()['id']}/apply", headers=STAFF, json=OPS)
    assert r.status_code == 200 and r.json()["applied"] is True, r.text
    got = _read(client, sess)
    assert got["status"] == "paid" and got["paid_at"] is not None


def test_a_paid_session_reads_paid_past_its_expiry(client, engine, chain):
    sess = _open(client)
    _pay(chain, "fx0b0b0b0b02", sess)
    proof = client.post(
        "/v1/proofs", headers=auth(), json={"session_id": sess["id"], "proof": "fx0b0b0b0b02"}
    ).json()
    r = client.post(f"/v1/admin/proofs/{proof['id']}/apply", headers=STAFF, json=OPS)
    assert r.json()["applied"] is True, r.text
    advance(engine, TTL + 5)
    assert _read(client, sess)["status"] == "paid"


def test_the_console_shows_an_expired_session_as_expired(engine, chain):
    app = create_app(engine, console=console_router(engine))
    with TestClient(app, raise_server_exceptions=False, follow_redirects=False) as c:
        sess = _open(c)
        _pay(chain, "fx0b0b0b0b03", sess)
        proof = c.post(
            "/v1/proofs", headers=auth(), json={"session_id": sess["id"], "proof": "fx0b0b0b0b03"}
        ).json()
        advance(engine, TTL + 5)
        form = c.get("/console/login")
        token = _CSRF.search(form.text)[1]
        assert c.post("/console/login", data={"token": STAFF_TOKEN, "csrf_token": token})
        page = c.get(f"/console/proofs/{proof['id']}")
        assert page.status_code == 200, page.text
        assert '<dt>status</dt><dd><code class="wrap">expired</code></dd>' in page.text


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


def test_a_stored_session_whose_network_left_the_catalog_still_reads(client, db_url):
    # The rail stays; its network is retired (a testnet at a mainnet launch).
    r = client.post("/v1/payment-sessions", headers=auth(), json=FAKE_SESSION)
    assert r.status_code == 201, r.text
    sess = r.json()
    cat = catalog_with_fake()
    without = cat.model_copy(
        update={"networks": {k: v for k, v in cat.networks.items() if k != sess["network"]}}
    )
    assert FAKE_SESSION["rail_id"] in without.rails
    eng = Engine(make_settings(db_url), catalog=without)
    try:
        with TestClient(create_app(eng), raise_server_exceptions=False) as c:
            got = c.get(f"/v1/payment-sessions/{sess['id']}", headers=auth())
        assert got.status_code == 200, got.text
        assert got.json()["payment_requirements"] is None
    finally:
        eng.db.dispose()
