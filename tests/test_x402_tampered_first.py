"""An x402 payload's fingerprint is its replay unit (chain_id:asset:from:nonce), not the
payload: two payloads that differ in a signed field (the signature, value, window) share it.

A tampered copy of the payer's payload (one signature byte changed, or a duplicate JSON key
overriding `value`, last one wins), submitted first to the session the payment was made for,
is stored `failed` against that fingerprint. The payer's genuine payload submitted next to the
same session was answered with that failed proof and never verified: the payment was lost for
its session. It is now verified, and recorded on the proof (an audit row names the
replacement) when it does not fail; a payload that fails too leaves the stored answer."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.conftest import auth, make_settings
from verifier.core.engine import Engine
from verifier.http.api import create_app

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "x402"
PAY_TO = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
PAYLOAD = (FIX / "x402_base_sepolia_payload_v1.json").read_text()


@pytest.fixture
def client(db_url):
    e = Engine(
        make_settings(
            db_url,
            clock=datetime(2025, 2, 27, 16, 1, 40, tzinfo=UTC),  # inside the payload's window
            env={"RAILPROOF_NETWORK_X402": "base-sepolia"},
        )
    )
    e.ensure_rail_states()
    with TestClient(create_app(e), raise_server_exceptions=False) as c:
        yield c
    e.db.dispose()


def _session(client) -> str:
    r = client.post(
        "/v1/payment-sessions",
        headers=auth(),
        json={
            "owner_id": "alice",
            "rail_id": "x402",
            "access_product_id": "api",
            "amount": 10000,
            "recipient": PAY_TO,
            "reference": None,
        },
    )
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _submit(client, session_id: str, payload_text: str):
    body = f'{{"session_id": "{session_id}", "proof": {payload_text}}}'
    return client.post(
        "/v1/proofs",
        headers={**auth(), "Content-Type": "application/json"},
        content=body.encode(),
    )


def test_the_genuine_payload_alone_verifies(client):
    # Control: the fixture's payload verifies for its session.
    r = _submit(client, _session(client), PAYLOAD)
    assert r.status_code == 201 and r.json()["status"] == "verified", r.text


TAMPERED = {
    # one byte of the signature changed (a garbled X-PAYMENT header)
    "signature": PAYLOAD.replace("0x2d6a7588d6acca", "0x2d6a7588d6accb"),
    # a duplicate key: JSON readers differ on which one counts; the API refuses the body (422,
    # nothing stored) when the payload is sent as a JSON object, the x402 reader when as text
    "duplicate_value_key": PAYLOAD.replace('"value": "10000"', '"value": "10000", "value": "1"'),
}


@pytest.mark.parametrize("kind", sorted(TAMPERED))
def test_a_tampered_copy_first_does_not_cost_the_genuine_payment_its_session(client, kind):
    sid = _session(client)
    first = _submit(client, sid, TAMPERED[kind])
    assert first.status_code in (201, 422), first.text
    stored = first.status_code == 201
    if stored:
        assert first.json()["status"] == "failed", first.text  # rightly: it does not verify
    genuine = _submit(client, sid, PAYLOAD)
    assert genuine.status_code in (200, 201), genuine.text
    view = genuine.json()
    assert view["status"] == "verified", json.dumps(view)[:400]
    # The tampered copy's failed attempt stays on the record (a refused body left none).
    attempts = 2 if stored else 1
    assert view["attempts"] == attempts
    # Once verified, another copy changes nothing.
    again = _submit(client, sid, TAMPERED[kind])
    if stored:
        assert again.status_code == 200, again.text
        assert (again.json()["id"], again.json()["status"]) == (view["id"], "verified")
    else:
        assert again.status_code == 422, again.text
    assert _submit(client, sid, PAYLOAD).json()["attempts"] == attempts


def test_a_second_failing_copy_leaves_the_stored_answer(client):
    sid = _session(client)
    first = _submit(client, sid, TAMPERED["signature"])
    assert first.status_code == 201 and first.json()["status"] == "failed", first.text
    other = PAYLOAD.replace("0x2d6a7588d6acca", "0x2d6a7588d6accc")
    second = _submit(client, sid, other)
    assert second.status_code == 200, second.text
    assert (second.json()["id"], second.json()["attempts"]) == (first.json()["id"], 1)
