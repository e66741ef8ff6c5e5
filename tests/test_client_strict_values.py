"""The Python client (railproof_client) does not turn a value the API refuses into one it
accepts. The server refuses a JSON boolean or float `amount` (422 invalid_amount) and a
non-integer `expires_in_seconds` (422 invalid_expiry); a lax `int` in the client's request
model sent `amount=True` as `"amount": 1` (a session for one base unit) and
`expires_in_seconds=True` as a one-second session. The client promises (clients/python/
README.md): "What cannot be sent is a ValueError naming the argument, before anything is
sent".
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from railproof_client import RailproofClient

SESSION = {
    "id": "ses_1",
    "status": "open",
    "owner_id": "o1",
    "rail_id": "solana_usdc",
    "access_product_id": "p1",
    "amount": "1",
    "network": "solana-mainnet",
    "asset": "EPjF",
    "recipient": "C1bL",
    "reference": "ref",
    "payer": None,
    "memo": None,
    "created_at": "2026-01-01T00:00:00Z",
    "expires_at": "2026-01-01T01:00:00Z",
    "paid_at": None,
    "payment_requirements": {"url": "solana:C1bL"},
}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("amount", True),  # sent as 1: a 0.000001 USDC session
        ("amount", 1500000.0),  # a float amount; the API answers 422 invalid_amount
        ("expires_in_seconds", True),  # sent as 1: a session that expires in a second
        ("expires_in_seconds", 3600.0),  # the API answers 422 invalid_expiry
    ],
)
def test_open_session_refuses_what_the_api_refuses_instead_of_coercing_it(field: str, value: Any):
    sent: list[dict[str, Any]] = []

    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(201, json=SESSION)

    kwargs: dict[str, Any] = {
        "owner_id": "o1",
        "rail_id": "solana_usdc",
        "access_product_id": "p1",
        "amount": 1_500_000,
        field: value,
    }
    with RailproofClient(
        "http://127.0.0.1:1", "tok", transport=httpx.MockTransport(handle), sleep=lambda s: None
    ) as rp:
        with pytest.raises(ValueError):
            rp.open_session(**kwargs)
    assert sent == [], f"the client sent {field}={sent[0][field]!r} for {value!r}"
