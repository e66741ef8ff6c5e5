"""Idempotency-Key over HTTP: every service POST takes it (webhook endpoints too: a lost 201 is
the only answer carrying a signing secret, which the key keeps only as a digest and replays
only while it is the endpoint's secret), a replay is the first answer as it was and says so
(`Idempotent-Replayed: true`), and a key is one header line without a comma."""

from __future__ import annotations

import hashlib

import httpx
import pytest
from sqlalchemy import func, select

from rails.base import canonical_json
from tests.conftest import OTHER_SERVICE_TOKEN, auth
from tests.helpers import FAKE_SESSION, advance
from verifier.storage.models import IdempotencyClaim, PaymentSession
from verifier.worker import loop as worker

HOOK = {"url": "http://127.0.0.1:9/railproof-hook", "event_types": ["proof.verified"]}
REPLAYED = "Idempotent-Replayed"


def _count(engine, model) -> int:
    with engine.db.tx() as s:
        return s.scalar(select(func.count()).select_from(model))


def _endpoints(client, token=None):
    r = client.get("/v1/webhook-endpoints", headers=auth(token) if token else auth())
    assert r.status_code == 200, r.text
    return r.json()


def test_a_webhook_endpoint_create_retried_with_its_key_gets_the_secret_again(client):
    headers = {**auth(), "Idempotency-Key": "wh-create-1"}
    first = client.post("/v1/webhook-endpoints", headers=headers, json=HOOK)
    assert first.status_code == 201, first.text
    assert first.json()["secret"].startswith("whsec_")
    assert REPLAYED not in first.headers
    # The answer was lost on the way (a proxy timeout); the client retries the same call.
    again = client.post("/v1/webhook-endpoints", headers=headers, json=HOOK)
    assert again.status_code == 201, again.text
    assert again.json() == first.json()  # its id and its secret
    assert again.headers[REPLAYED] == "true"
    assert again.headers["Cache-Control"] == "no-store"
    assert [ep["id"] for ep in _endpoints(client)] == [first.json()["id"]]
    # Without the key a second create is what it always was: the URL is taken.
    fresh = client.post("/v1/webhook-endpoints", headers=auth(), json=HOOK)
    assert fresh.status_code == 409 and fresh.json()["error"]["code"] == "webhook_endpoint_exists"


def test_a_webhook_endpoint_create_key_with_another_body_is_a_conflict(client):
    headers = {**auth(), "Idempotency-Key": "wh-create-2"}
    assert client.post("/v1/webhook-endpoints", headers=headers, json=HOOK).status_code == 201
    other = {**HOOK, "url": "http://127.0.0.1:9/another-hook"}
    r = client.post("/v1/webhook-endpoints", headers=headers, json=other)
    assert r.status_code == 409, r.text
    assert (r.json()["error"]["code"], r.json()["error"]["field"]) == (
        "idempotency_conflict",
        "Idempotency-Key",
    )
    assert len(_endpoints(client)) == 1  # no second endpoint


def test_a_webhook_endpoint_create_is_replayed_only_to_the_token_that_made_it(client):
    headers = {"Idempotency-Key": "wh-create-3"}
    mine = client.post("/v1/webhook-endpoints", headers={**auth(), **headers}, json=HOOK)
    assert mine.status_code == 201, mine.text
    # Another token's owners, the same key and body: its own create, never alice's secret.
    theirs = client.post(
        "/v1/webhook-endpoints", headers={**auth(OTHER_SERVICE_TOKEN), **headers}, json=HOOK
    )
    assert theirs.status_code == 201, theirs.text
    assert REPLAYED not in theirs.headers
    assert theirs.json()["id"] != mine.json()["id"]
    assert theirs.json()["secret"] != mine.json()["secret"]
    assert theirs.json()["owners"] == ["bob"]


def test_a_refused_webhook_endpoint_create_releases_its_key(client):
    headers = {**auth(), "Idempotency-Key": "wh-create-4"}
    assert client.post("/v1/webhook-endpoints", headers=auth(), json=HOOK).status_code == 201
    taken = client.post("/v1/webhook-endpoints", headers=headers, json=HOOK)
    assert taken.json()["error"]["code"] == "webhook_endpoint_exists"
    # The refusal ran nothing, so the key is free for the request once it can succeed.
    client.delete(f"/v1/webhook-endpoints/{_endpoints(client)[0]['id']}", headers=auth())
    created = client.post("/v1/webhook-endpoints", headers=headers, json=HOOK)
    assert created.status_code == 201 and REPLAYED not in created.headers, created.text


def test_a_rotate_secret_retried_with_its_key_rotates_once(client):
    ep = client.post("/v1/webhook-endpoints", headers=auth(), json=HOOK).json()
    other = client.post(
        "/v1/webhook-endpoints",
        headers=auth(),
        json={**HOOK, "url": "http://127.0.0.1:9/another-hook"},
    ).json()
    headers = {**auth(), "Idempotency-Key": "wh-rotate-1"}
    url = f"/v1/webhook-endpoints/{ep['id']}/rotate-secret"
    first = client.post(url, headers=headers)
    assert first.status_code == 200, first.text
    assert first.json()["secret"] != ep["secret"] and REPLAYED not in first.headers
    again = client.post(url, headers=headers)
    assert again.status_code == 200 and again.json() == first.json(), again.text
    assert again.headers[REPLAYED] == "true"
    assert again.headers["Cache-Control"] == "no-store"
    # The same key for another endpoint is another request.
    r = client.post(f"/v1/webhook-endpoints/{other['id']}/rotate-secret", headers=headers)
    assert r.status_code == 409 and r.json()["error"]["code"] == "idempotency_conflict", r.text
    # Without a key each call rotates anew.
    third = client.post(url, headers=auth())
    assert third.json()["secret"] not in (ep["secret"], first.json()["secret"])


def _stale(r) -> None:
    assert r.status_code == 409, r.text
    assert (r.json()["error"]["code"], r.json()["error"]["field"]) == (
        "idempotency_answer_stale",
        "Idempotency-Key",
    )
    assert "whsec_" not in r.text


def test_a_signing_secret_is_never_kept_under_its_key(client, engine):
    created = client.post(
        "/v1/webhook-endpoints", headers={**auth(), "Idempotency-Key": "wh-kept-1"}, json=HOOK
    ).json()
    url = f"/v1/webhook-endpoints/{created['id']}/rotate-secret"
    rotated = client.post(url, headers={**auth(), "Idempotency-Key": "wh-kept-2"}).json()
    with engine.db.tx() as s:
        stored = [c.response for c in s.scalars(select(IdempotencyClaim))]
    assert len(stored) == 2
    for answer in stored:
        assert "secret" not in answer
        assert created["secret"] not in str(answer) and rotated["secret"] not in str(answer)
    assert sorted(a["secret_sha256"] for a in stored) == sorted(
        hashlib.sha256(x["secret"].encode()).hexdigest() for x in (created, rotated)
    )


def test_a_create_replayed_after_a_rotation_is_refused_not_given_the_old_secret(client):
    headers = {**auth(), "Idempotency-Key": "wh-stale-1"}
    first = client.post("/v1/webhook-endpoints", headers=headers, json=HOOK)
    assert first.status_code == 201, first.text
    rotated = client.post(
        f"/v1/webhook-endpoints/{first.json()['id']}/rotate-secret", headers=auth()
    )
    assert rotated.status_code == 200, rotated.text
    # The client's delayed retry of its create (a queue, a redeploy of a provisioning job).
    _stale(client.post("/v1/webhook-endpoints", headers=headers, json=HOOK))


def test_a_create_replayed_after_the_endpoint_was_deleted_is_refused(client):
    headers = {**auth(), "Idempotency-Key": "wh-stale-2"}
    first = client.post("/v1/webhook-endpoints", headers=headers, json=HOOK)
    assert first.status_code == 201, first.text
    gone = client.delete(f"/v1/webhook-endpoints/{first.json()['id']}", headers=auth())
    assert gone.status_code == 200, gone.text
    # Not a 201 "active" with a secret for an endpoint that receives nothing.
    _stale(client.post("/v1/webhook-endpoints", headers=headers, json=HOOK))
    assert _endpoints(client) == []


def test_a_rotate_replayed_after_a_later_rotation_is_refused(client):
    ep = client.post("/v1/webhook-endpoints", headers=auth(), json=HOOK).json()
    url = f"/v1/webhook-endpoints/{ep['id']}/rotate-secret"
    k1 = {**auth(), "Idempotency-Key": "wh-stale-3"}
    first = client.post(url, headers=k1)
    assert first.status_code == 200, first.text
    latest = client.post(url, headers={**auth(), "Idempotency-Key": "wh-stale-4"})
    assert latest.status_code == 200, latest.text
    _stale(client.post(url, headers=k1))
    # The latest one still replays: its secret is the one that signs.
    again = client.post(url, headers={**auth(), "Idempotency-Key": "wh-stale-4"})
    assert again.status_code == 200 and again.json() == latest.json(), again.text
    assert again.headers[REPLAYED] == "true"


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


def test_a_field_sent_as_its_default_is_the_same_request_and_another_value_is_not(client, engine):
    """The key is bound to what the request means: an optional field absent, or sent as the
    default the service takes without it, is one request (a client whose library writes out
    every null, a field added by a later version); any other value is another request."""
    headers = {**auth(), "Idempotency-Key": "order-78-session"}
    first = client.post("/v1/payment-sessions", headers=headers, json=FAKE_SESSION)
    assert first.status_code == 201, first.text
    spelled = {
        **FAKE_SESSION,
        "amount": "001500000",
        "reference": "auto",
        "payer": None,
        "memo": None,
        "expires_in_seconds": None,
    }
    again = client.post("/v1/payment-sessions", headers=headers, json=spelled)
    assert (again.status_code, again.json()) == (201, first.json()), again.text
    assert again.headers[REPLAYED] == "true"
    # null is "no reference", not the default "auto": another request.
    for other in ({**FAKE_SESSION, "reference": None}, {**FAKE_SESSION, "payer": "fapayer"}):
        r = client.post("/v1/payment-sessions", headers=headers, json=other)
        assert r.status_code == 409, r.text
        assert r.json()["error"]["code"] == "idempotency_conflict"
    assert _count(engine, PaymentSession) == 1

    body = {"session_id": first.json()["id"], "proof": "fx0123abcdef"}
    proof_headers = {**auth(), "Idempotency-Key": "order-78-proof"}
    proof = client.post("/v1/proofs", headers=proof_headers, json=body)
    assert proof.status_code == 201, proof.text
    again = client.post("/v1/proofs", headers=proof_headers, json={**body, "proof_type": None})
    assert (again.status_code, again.json()) == (201, proof.json()), again.text
    other = client.post("/v1/proofs", headers=proof_headers, json={**body, "proof": "fx01"})
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_conflict"


def _claimed_as(engine, key: str, form: dict) -> None:
    """The key's claim as a version that hashed `form` for its request stored it."""
    with engine.db.tx() as s:
        claim = s.scalar(select(IdempotencyClaim).where(IdempotencyClaim.key == key))
        claim.request_hash = hashlib.sha256(canonical_json(form)).hexdigest()


# The full dump of the session body as each version hashed it: 0.1.0's model had no payer.
SESSION_DUMP = {
    "owner_id": "alice",
    "rail_id": "fake_live",
    "access_product_id": "pro",
    "amount": 1500000,
    "recipient": "fatreasury",
    "reference": "auto",
    "memo": None,
    "expires_in_seconds": None,
}
SESSION_FORMS = {"0.1.0": SESSION_DUMP, "0.2.0-dev": {**SESSION_DUMP, "payer": None}}


@pytest.mark.parametrize("version", sorted(SESSION_FORMS))
def test_a_key_claimed_before_an_upgrade_replays_its_answer(client, engine, chain, version):
    """A backend lost the 201 and retries the same body with the same key; the service was
    upgraded in between. Its claim was hashed over the whole body model as it was then
    (`payer: null` in it or not): the retry is the same request and replays."""
    headers = {**auth(), "Idempotency-Key": "order-79-session"}
    first = client.post("/v1/payment-sessions", headers=headers, json=FAKE_SESSION)
    assert first.status_code == 201, first.text
    _claimed_as(engine, "order-79-session", SESSION_FORMS[version])
    again = client.post("/v1/payment-sessions", headers=headers, json=FAKE_SESSION)
    assert (again.status_code, again.json()) == (201, first.json()), again.text
    assert again.headers[REPLAYED] == "true"
    # A payer is no request 0.1.0 could make: its form never stands for one that names it.
    named = client.post(
        "/v1/payment-sessions", headers=headers, json={**FAKE_SESSION, "payer": "fapayer"}
    )
    assert named.status_code == 409 and named.json()["error"]["code"] == "idempotency_conflict"
    assert _count(engine, PaymentSession) == 1

    body = {"session_id": first.json()["id"], "proof": "fx0123abcdef"}
    proof_headers = {**auth(), "Idempotency-Key": "order-79-proof"}
    proof = client.post("/v1/proofs", headers=proof_headers, json=body)
    assert proof.status_code == 201, proof.text
    _claimed_as(engine, "order-79-proof", {**body, "proof_type": None})
    again = client.post("/v1/proofs", headers=proof_headers, json=body)
    assert (again.status_code, again.json()) == (201, proof.json()), again.text

    hook_headers = {**auth(), "Idempotency-Key": "order-79-hook"}
    hook = client.post("/v1/webhook-endpoints", headers=hook_headers, json=HOOK)
    assert hook.status_code == 201, hook.text
    _claimed_as(engine, "order-79-hook", HOOK)
    again = client.post("/v1/webhook-endpoints", headers=hook_headers, json=HOOK)
    assert (again.status_code, again.json()) == (201, hook.json()), again.text


@pytest.mark.parametrize(
    "path,body",
    [("/v1/payment-sessions", FAKE_SESSION), ("/v1/webhook-endpoints", HOOK)],
)
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
    assert _endpoints(client) == []


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
    ("/v1/webhook-endpoints", ["201"]),
    ("/v1/webhook-endpoints/{endpoint_id}/rotate-secret", ["200"]),
]


@pytest.mark.parametrize("path,replayed", KEYED, ids=[p for p, _ in KEYED])
def test_the_document_declares_the_key_and_the_replay_marker(client, path, replayed):
    spec = client.app.openapi()["paths"][path]["post"]
    headers = {p["name"] for p in spec["parameters"] if p["in"] == "header"}
    assert "Idempotency-Key" in headers
    marked = sorted(s for s, r in spec["responses"].items() if REPLAYED in r.get("headers", {}))
    assert marked == replayed
