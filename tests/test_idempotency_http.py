"""Idempotency-Key over HTTP: a replay is the first answer as it was and says so
(`Idempotent-Replayed: true`), and a key is one header line without a comma."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import func, select

from tests.conftest import auth
from tests.helpers import FAKE_SESSION, advance
from verifier.storage.models import IdempotencyClaim, PaymentSession
from verifier.worker import loop as worker

REPLAYED = "Idempotent-Replayed"


def _count(engine, model) -> int:
    with engine.db.tx() as s:
        return s.scalar(select(func.count()).select_from(model))


def test_a_session_replay_is_marked_and_a_first_answer_is_not(client):
    headers = {**auth(), "Idempotency-Key": "order-76-session"}
    first = client.post("/v1/payment-sessions", headers=headers, json=FAKE_SESSION)
    assert first.status_code == 201 and REPLAYED not in first.headers, first.text
    again = client.post("/v1/payment-sessions", headers=headers, json=FAKE_SESSION)
    assert again.status_code == 201 and again.json() == first.json()
    assert again.headers[REPLAYED] == "true"
    # No key, nothing replayed.
    plain = client.post("/v1/payment-sessions", headers=auth(), json=FAKE_SESSION)
    assert plain.status_code == 201 and REPLAYED not in plain.headers


def test_a_proof_replay_is_its_first_answer_marked_and_get_reads_it_now(client, engine, chain):
    """The key is tied to the order; the first answer was pending (the node had not seen the
    transfer) and the worker verified the proof since. The same call with the same key answers
    what it answered then, marked as a replay; GET tells the proof's state now."""
    sess = client.post("/v1/payment-sessions", headers=auth(), json=FAKE_SESSION).json()
    body = {"session_id": sess["id"], "proof": "fx0123abcdef"}
    headers = {**auth(), "Idempotency-Key": "order-77-proof"}
    first = client.post("/v1/proofs", headers=headers, json=body)
    assert first.status_code == 201 and first.json()["status"] == "pending", first.text
    assert REPLAYED not in first.headers
    chain.txs["fx0123abcdef"] = {
        "status": "ok",
        "to": "fatreasury",
        "amount": 1500000,
        "asset": "fusd",
        "refs": [sess["reference"]],
    }
    advance(engine, 120)
    worker.sweep(engine, "w1")
    replay = client.post("/v1/proofs", headers=headers, json=body)
    assert (replay.status_code, replay.json()) == (201, first.json()), replay.text
    assert replay.headers[REPLAYED] == "true"
    now = client.get(f"/v1/proofs/{first.json()['id']}", headers=auth())
    assert now.json()["status"] == "verified" and REPLAYED not in now.headers, now.text
    fresh = client.post("/v1/proofs", headers={**auth(), "Idempotency-Key": "other"}, json=body)
    assert (fresh.status_code, fresh.json()["status"]) == (200, "verified"), fresh.text
    assert REPLAYED not in fresh.headers


@pytest.mark.parametrize("path,body", [("/v1/payment-sessions", FAKE_SESSION)])
def test_two_idempotency_key_lines_are_refused_not_joined(client, engine, path, body):
    """Idempotency-Key is a singleton field. Sent twice (a client's default header and a
    per-call one, or a proxy adding its own), the lines are not joined into one key "a, b"
    that a retry carrying only "a" would not match: the request is refused, nothing runs."""
    h = httpx.Headers([*auth().items(), ("Idempotency-Key", "a"), ("Idempotency-Key", "b")])
    r = client.post(path, headers=h, json=body)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert (err["code"], err["field"]) == ("invalid_idempotency_key", "Idempotency-Key")
    assert _count(engine, IdempotencyClaim) == 0
    assert _count(engine, PaymentSession) == 0


@pytest.mark.parametrize("key", ["a, b", "a,b", ","])
def test_a_key_holding_a_comma_is_refused(client, engine, key):
    """What a proxy folding two lines into one would send; no key of a client holds one."""
    r = client.post(
        "/v1/payment-sessions", headers={**auth(), "Idempotency-Key": key}, json=FAKE_SESSION
    )
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert (err["code"], err["field"]) == ("invalid_idempotency_key", "Idempotency-Key")
    assert "no comma" in err["message"]
    assert _count(engine, PaymentSession) == 0


KEYED = [
    ("/v1/payment-sessions", ["201"]),
    ("/v1/proofs", ["200", "201", "409"]),
]


@pytest.mark.parametrize("path,replayed", KEYED, ids=[p for p, _ in KEYED])
def test_the_document_declares_the_key_and_the_replay_marker(client, path, replayed):
    spec = client.app.openapi()["paths"][path]["post"]
    headers = {p["name"] for p in spec["parameters"] if p["in"] == "header"}
    assert "Idempotency-Key" in headers
    marked = sorted(s for s, r in spec["responses"].items() if REPLAYED in r.get("headers", {}))
    assert marked == replayed
