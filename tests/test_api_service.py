"""The service API: auth, owner isolation on every endpoint, idempotency keys, and bad
input that gets a 4xx naming the field and writes nothing."""

import pytest
from sqlalchemy import func, select

from tests.conftest import OTHER_SERVICE_TOKEN, SERVICE_TOKEN, STAFF_TOKEN, auth
from tests.helpers import FAKE_SESSION
from verifier.http.api import SessionIn
from verifier.services.idempotency import request_hash
from verifier.storage.models import (
    AuditEvent,
    IdempotencyClaim,
    PaymentSession,
    Proof,
)

SESSION = dict(FAKE_SESSION)


def rows(engine):
    with engine.db.tx() as s:
        return tuple(
            s.scalar(select(func.count()).select_from(m))
            for m in (PaymentSession, Proof, AuditEvent)
        )


def new_session(client, token=SERVICE_TOKEN, **kw):
    r = client.post("/v1/payment-sessions", headers=auth(token), json={**SESSION, **kw})
    assert r.status_code == 201, r.text
    return r.json()


def paid_proof(client, chain, sess, tx="fx0123abcd"):
    chain.txs[tx] = {
        "status": "ok",
        "to": "fatreasury",
        "amount": 1500000,
        "asset": "fusd",
        "refs": [sess["reference"]],
    }
    r = client.post("/v1/proofs", headers=auth(), json={"session_id": sess["id"], "proof": tx})
    assert r.status_code == 201, r.text
    return r.json()


def test_health_and_openapi(client):
    assert client.get("/healthz").json()["status"] == "ok"
    spec = client.get("/openapi.json").json()
    assert "/v1/proofs" in spec["paths"] and "/v1/payment-sessions" in spec["paths"]


def test_session_shape_and_amount_as_string(client):
    body = new_session(client, amount="2500000")
    assert body["amount"] == "2500000" and body["status"] == "open"
    for k in (
        "id",
        "owner_id",
        "rail_id",
        "access_product_id",
        "recipient",
        "reference",
        "memo",
        "created_at",
        "expires_at",
        "payment_requirements",
    ):
        assert k in body


def test_proof_shape_and_status_codes(client, chain):
    sess = new_session(client)
    proof = paid_proof(client, chain, sess)
    for k in (
        "id",
        "fingerprint",
        "rail_id",
        "session_id",
        "owner_id",
        "status",
        "failure_code",
        "detail",
        "settlement",
        "receipt_id",
    ):
        assert k in proof
    assert proof["settlement"]["finality"] == "finalized"
    again = client.post(
        "/v1/proofs", headers=auth(), json={"session_id": sess["id"], "proof": "fx0123abcd"}
    )
    assert again.status_code == 200 and again.json()["id"] == proof["id"]
    assert client.get(f"/v1/proofs/{proof['id']}", headers=auth()).json()["status"] == "verified"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": "Basic abc"},
        {"Authorization": f"Bearer {STAFF_TOKEN}"},
    ],
)
def test_missing_or_wrong_token_is_401_and_writes_nothing(client, engine, headers):
    before = rows(engine)
    r = client.post("/v1/payment-sessions", headers=headers, json=SESSION)
    assert r.status_code == 401
    assert r.json()["error"]["field"] == "Authorization"
    assert rows(engine) == before


def test_service_token_cannot_use_staff_endpoints(client):
    r = client.get("/v1/admin/rails", headers=auth(SERVICE_TOKEN))
    assert r.status_code == 401


def test_owner_isolation_on_every_service_endpoint(client, engine, chain):
    sess = new_session(client)
    proof = paid_proof(client, chain, sess)
    bob = auth(OTHER_SERVICE_TOKEN)
    denials = lambda: sum(  # noqa: E731
        float(line.split()[-1])
        for line in engine.metrics.render().decode().splitlines()
        if line.startswith("railproof_owner_isolation_denials_total{")
    )
    start = denials()
    calls = [
        ("post", "/v1/payment-sessions", {**SESSION}),  # bob acting for alice
        ("get", f"/v1/payment-sessions/{sess['id']}", None),
        ("post", "/v1/proofs", {"session_id": sess["id"], "proof": "fx0123abcd"}),
        ("get", f"/v1/proofs/{proof['id']}", None),
        ("get", "/v1/entitlements?owner_id=alice", None),
    ]
    before = rows(engine)
    for method, path, body in calls:
        r = getattr(client, method)(path, headers=bob, **({"json": body} if body else {}))
        assert r.status_code == 404, (path, r.text)
        assert "error" in r.json()
    assert rows(engine) == before
    assert denials() - start == len(calls)
    # The same ids work for the owner's own token.
    assert client.get(f"/v1/payment-sessions/{sess['id']}", headers=auth()).status_code == 200


def test_idempotency_replay_conflict_and_in_progress(client, engine):
    h = {**auth(), "Idempotency-Key": "k-1"}
    r1 = client.post("/v1/payment-sessions", headers=h, json=SESSION)
    r2 = client.post("/v1/payment-sessions", headers=h, json=SESSION)
    assert r1.status_code == r2.status_code == 201
    assert r1.json() == r2.json()
    with engine.db.tx() as s:
        assert s.scalar(select(func.count()).select_from(PaymentSession)) == 1
    r3 = client.post("/v1/payment-sessions", headers=h, json={**SESSION, "amount": 7})
    assert r3.status_code == 409 and r3.json()["error"]["code"] == "idempotency_conflict"
    # A claim whose work never completed (a crashed process) answers "in progress" and is
    # listed as stuck; it is never deleted.
    with engine.db.tx() as s:
        s.add(
            IdempotencyClaim(
                principal="svc:alice,alice-2",
                endpoint="POST /v1/payment-sessions",
                key="k-stuck",
                request_hash="x" * 64,
                created_at=engine.now(),
            )
        )

    with engine.db.tx() as s:
        c = s.get(IdempotencyClaim, ("svc:alice,alice-2", "POST /v1/payment-sessions", "k-stuck"))
        c.request_hash = request_hash(SessionIn(**SESSION).model_dump(mode="json"))
    r4 = client.post(
        "/v1/payment-sessions", headers={**auth(), "Idempotency-Key": "k-stuck"}, json=SESSION
    )
    assert r4.status_code == 409 and r4.json()["error"]["code"] == "idempotency_in_progress"
    stuck = client.get(
        "/v1/admin/idempotency-claims/stuck?min_age_seconds=0", headers=auth(STAFF_TOKEN)
    ).json()
    assert [c["key"] for c in stuck] == ["k-stuck"]


def test_idempotent_refusal_is_not_stored(client, engine):
    # Only executed requests are stored: a refusal releases its key, and the retry runs again.
    h = {**auth(), "Idempotency-Key": "k-bad"}
    body = {"session_id": "nope", "proof": "fx12345678"}
    r1 = client.post("/v1/proofs", headers=h, json=body)
    assert r1.status_code == 404 and r1.json()["error"]["code"] == "session_not_found"
    with engine.db.tx() as s:
        assert s.scalar(select(func.count()).select_from(IdempotencyClaim)) == 0
    r2 = client.post("/v1/proofs", headers=h, json=body)
    assert r2.status_code == 404 and r1.json() == r2.json()


BAD_SESSIONS = [
    ({**SESSION, "rail_id": "doge_coin"}, "rail_id"),
    ({**SESSION, "amount": -5}, "amount"),
    ({**SESSION, "amount": 0}, "amount"),
    ({**SESSION, "amount": 1.5}, "amount"),
    ({**SESSION, "amount": "1.5"}, "amount"),
    ({**SESSION, "amount": "1e6"}, "amount"),
    ({**SESSION, "amount": True}, "amount"),
    ({**SESSION, "amount": 2**70}, "amount"),
    ({k: v for k, v in SESSION.items() if k != "owner_id"}, "owner_id"),
    ({**SESSION, "recipient": "not-a-fake-address"}, "recipient"),
    ({**SESSION, "expires_in_seconds": -1}, "expires_in_seconds"),
    ({**SESSION, "surprise": 1}, "surprise"),
]


@pytest.mark.parametrize("body,field", BAD_SESSIONS)
def test_bad_session_input_names_the_field_and_writes_nothing(client, engine, body, field):
    before = rows(engine)
    r = client.post("/v1/payment-sessions", headers=auth(), json=body)
    assert 400 <= r.status_code < 500, r.text
    err = r.json()["error"]
    assert err["field"] == field and field in err["message"]
    assert rows(engine) == before


def test_malformed_json_body(client, engine):
    before = rows(engine)
    r = client.post(
        "/v1/payment-sessions",
        headers={**auth(), "Content-Type": "application/json"},
        content=b'{"owner_id": "alice", ',
    )
    assert r.status_code == 422 and r.json()["error"]["field"] == "body"
    assert rows(engine) == before


def test_wrong_length_solana_signature_is_refused(client, engine):
    r = client.post(
        "/v1/payment-sessions",
        headers=auth(),
        json={
            **SESSION,
            "rail_id": "solana_usdc",
            "amount": 1000,
            "recipient": "3i476kTBBTy7pBGx4CXwJpJ6phuwLQgcwLTdHhU3c7ui",
        },
    )
    assert r.status_code == 201, r.text
    before = rows(engine)
    r = client.post(
        "/v1/proofs",
        headers=auth(),
        json={
            "session_id": r.json()["id"],
            "proof": "2S2rTZjaqzxYRw9mnqzwtyqitKtSsnE8GVqLn1KrD5R2",
        },
    )
    assert r.status_code == 422
    assert r.json()["error"] == {**r.json()["error"], "code": "proof_malformed", "field": "proof"}
    assert rows(engine) == before


def test_oversized_body_is_refused(client):
    r = client.post(
        "/v1/proofs",
        headers=auth(),
        content=b"{" + b" " * 70_000 + b"}",
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"


def test_unknown_path_is_json(client):
    r = client.get("/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_unknown_rail_and_session_codes(client, engine):
    before = rows(engine)
    r = client.post(
        "/v1/payment-sessions", headers=auth(), json={**SESSION, "rail_id": "doge_coin"}
    )
    assert r.status_code == 422
    assert (r.json()["error"]["code"], r.json()["error"]["field"]) == (
        "rail_not_registered",
        "rail_id",
    )
    r = client.post(
        "/v1/proofs", headers=auth(), json={"session_id": "no-such", "proof": "fx12345678"}
    )
    assert r.status_code == 404 and r.json()["error"]["code"] == "session_not_found"
    assert rows(engine) == before
