"""The tenant API's input handling (POST /v1/proofs and the Idempotency-Key header): what the
README promises for bad input and for keys.

README, "API error codes": `invalid_request` — "a field is missing, malformed or holds
control characters ...; `field` names it"; "Errors are always {"error": {"code", "message",
"field"?}} with a 4xx naming the field". The header's description (and the README's
`invalid_idempotency_key`): "1 to 256 printable characters"."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from tests.conftest import SERVICE_TOKEN, auth
from verifier.storage.models import IdempotencyClaim, PaymentSession, Proof

SESSION = {
    "owner_id": "alice",
    "rail_id": "fake_live",
    "access_product_id": "pro",
    "amount": "1500000",
    "recipient": "fatreasury",
}


def _count(engine, model) -> int:
    with engine.db.tx() as s:
        return s.scalar(select(func.count()).select_from(model))


@pytest.mark.parametrize(
    "proof",
    [123, 1.5, True, None, [], ["fx01020304"], "", "x" * 20_000],
    ids=["int", "float", "bool", "null", "empty-list", "list", "empty-string", "too-long"],
)
def test_a_proof_of_the_wrong_json_type_is_refused_naming_the_proof_field(client, engine, proof):
    """The request field is `proof`: a client reading `error.field` must be told `proof`, not
    pydantic's internal name of one branch of the model's union (`proof.constrained-str`)."""
    sess = client.post("/v1/payment-sessions", headers=auth(), json=SESSION)
    assert sess.status_code == 201, sess.text
    before = _count(engine, Proof)
    r = client.post(
        "/v1/proofs",
        headers=auth() | {"Idempotency-Key": "atk-proof-type"},
        json={"session_id": sess.json()["id"], "proof": proof},
    )
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["field"] == "proof", err
    assert err["message"].startswith("proof:"), err
    assert _count(engine, Proof) == before  # nothing stored
    assert _count(engine, IdempotencyClaim) == 0  # a refusal that ran nothing keeps no claim


# Printable, non-ASCII keys of 1 to 4 characters, sent as UTF-8. The server hands a header over
# one character a byte: judged so, "\u00e9" (C3 A9) passed and was stored as "\u00c3\u00a9",
# while "\u952e" (E9 94 AE) was refused as a control character. Keys are printable ASCII (a
# Structured Fields string's characters), so every one of these is refused alike.
NON_ASCII_KEYS = ["\u00e9", "\u00fc\u00fc", "\u952e", "\u043a\u043b\u044e\u0447", "\U0001f600"]


def test_non_ascii_idempotency_keys_are_refused_alike_and_nothing_is_stored(client, engine):
    for i, key in enumerate(NON_ASCII_KEYS):
        headers = {"Authorization": f"Bearer {SERVICE_TOKEN}", "Idempotency-Key": key.encode()}
        body = {**SESSION, "access_product_id": f"pro-{i}"}
        r = client.post("/v1/payment-sessions", headers=headers, json=body)
        assert r.status_code == 422, (key, r.text)
        err = r.json()["error"]
        assert (err["code"], err["field"]) == ("invalid_idempotency_key", "Idempotency-Key")
        assert "printable ASCII" in err["message"]
    assert _count(engine, IdempotencyClaim) == 0
    assert _count(engine, PaymentSession) == 0
    # A printable ASCII key still runs, and replays.
    headers = {"Authorization": f"Bearer {SERVICE_TOKEN}", "Idempotency-Key": "order-1001 ~!"}
    first = client.post("/v1/payment-sessions", headers=headers, json=SESSION)
    again = client.post("/v1/payment-sessions", headers=headers, json=SESSION)
    assert first.status_code == 201 and again.json() == first.json()
