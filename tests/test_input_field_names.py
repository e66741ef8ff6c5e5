"""422s name the offending field as the request spelled it (README, "API error codes":
`invalid_request` ... "`field` names it"): an unknown key spelled with a dash or starting with a
digit (a client's typo of a real field: `owner-id`, `event-types`) is named, as is a nested
one, while pydantic's names for a union's branches (`constrained-str`) never are.
"""

from __future__ import annotations

import pytest

from tests.conftest import auth
from tests.test_tenant_api_input import SESSION


@pytest.mark.parametrize("key", ["owner-id", "access-product-id", "2nd_owner"])
def test_an_unknown_session_key_is_named_in_the_422(client, key):
    r = client.post("/v1/payment-sessions", headers=auth(), json={**SESSION, key: "x"})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_request", err
    assert err["field"] == key, err
    assert err["message"].startswith(f"{key}:"), err


def test_an_unknown_webhook_endpoint_key_is_named_in_the_422(client):
    body = {"url": "http://127.0.0.1:18499/hook", "event_types": ["proof.verified"]}
    r = client.post("/v1/webhook-endpoints", headers=auth(), json={**body, "event-types": []})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "event-types", r.text


def test_a_missing_field_and_a_union_branch_are_named_by_the_request_field(client):
    body = {k: v for k, v in SESSION.items() if k != "owner_id"}
    r = client.post("/v1/payment-sessions", headers=auth(), json=body)
    assert (r.status_code, r.json()["error"]["field"]) == (422, "owner_id"), r.text
    # `proof` is a string or a JSON object: a list fails both branches, named `proof`.
    r = client.post("/v1/proofs", headers=auth(), json={"session_id": "x", "proof": [1]})
    assert (r.status_code, r.json()["error"]["field"]) == (422, "proof"), r.text
