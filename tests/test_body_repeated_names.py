"""A JSON body that names one field twice is refused (422 invalid_request, naming the field's
dotted path) on every route, at any depth: the API would read the last value, while a proxy,
a log reader or the client's own checks may read the first: one body, two requests."""

from __future__ import annotations

import pytest

from rails.jsontext import RepeatedName, loads_unique
from tests.conftest import STAFF_TOKEN, auth
from verifier.http.guards import body_refusal

SESSION_FIELDS = b'"rail_id": "fake_live", "access_product_id": "pro", "recipient": "fatreasury"'


@pytest.mark.parametrize(
    "raw,field",
    [
        (
            b'{"owner_id": "alice", ' + SESSION_FIELDS + b', "amount": 1500000, "amount": 1}',
            "amount",
        ),
        (
            b'{"owner_id": "alice", "owner_id": "alice-2", '
            + SESSION_FIELDS
            + b', "amount": 1500000}',
            "owner_id",
        ),
    ],
)
def test_a_session_body_naming_a_field_twice_is_refused(client, raw, field):
    r = client.post(
        "/v1/payment-sessions",
        headers={**auth(), "Content-Type": "application/json"},
        content=raw,
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_request"
    assert r.json()["error"]["field"] == field
    assert client.get("/v1/entitlements?owner_id=alice", headers=auth()).json() == []


def test_the_same_session_body_naming_each_field_once_is_taken(client):
    raw = b'{"owner_id": "alice", ' + SESSION_FIELDS + b', "amount": 1500000}'
    r = client.post(
        "/v1/payment-sessions",
        headers={**auth(), "Content-Type": "application/json"},
        content=raw,
    )
    assert r.status_code == 201, r.text
    assert r.json()["amount"] == "1500000"


def test_a_confirm_given_twice_does_not_confirm(client):
    r = client.post(
        "/v1/admin/rails/fake_live/pause",
        headers={**auth(STAFF_TOKEN), "Content-Type": "application/json"},
        content=b'{"confirm": false, "incident_id": "INC-1", "operator_reason": "x", '
        b'"confirm": true}',
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "confirm"
    rails = client.get("/v1/admin/rails", headers=auth(STAFF_TOKEN)).json()
    assert not next(x for x in rails if x["rail_id"] == "fake_live")["paused"]


@pytest.mark.parametrize(
    "raw,path",
    [
        (b'{"a": 1, "a": 1}', "a"),  # the same value twice too
        (b'{"proof": {"x": [1, {"to": "A", "to": "B"}]}}', "proof.x.1.to"),
        (b'[{"k": 1}, {"k": 1, "z": 2, "k": 3}]', "1.k"),
        (b'{"a": {"b": 1, "b": 2}, "a": 3}', "a"),
    ],
)
def test_a_repeated_name_is_named_by_its_path_at_any_depth(raw, path):
    with pytest.raises(RepeatedName) as e:
        loads_unique(raw)
    assert e.value.path == path
    assert body_refusal(raw) == (path, "given twice; name each field once")


@pytest.mark.parametrize("raw", [b'{"a": {"a": 1}, "b": [{"a": 2}, {"a": 3}]}', b"", b"a=1&a=2"])
def test_one_name_in_different_objects_or_no_json_is_no_refusal(raw):
    assert body_refusal(raw) is None
