"""A JSON body naming a field twice whose name (or an enclosing name) is a lone surrogate
escape: the guard names the field by its path, escaped; the answer is the documented 422."""

from __future__ import annotations

import pytest

from tests.conftest import auth


@pytest.mark.parametrize(
    "raw",
    [
        rb'{"owner_id": "alice", "\ud800": 1, "\ud800": 2}',
        rb'{"proof": {"\udc00": {"to": "A", "to": "B"}}}',
    ],
)
def test_a_repeated_surrogate_name_is_a_422_not_a_500(client, raw):
    r = client.post(
        "/v1/payment-sessions",
        headers={**auth(), "Content-Type": "application/json"},
        content=raw,
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_request"
