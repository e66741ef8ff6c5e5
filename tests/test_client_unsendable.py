"""What the Python client cannot send is refused before sending, naming the argument.

A lone surrogate in an id or a query value, or a non-ASCII Idempotency-Key, reached httpx,
whose UnicodeEncodeError named neither the argument nor the rule; a caller catching the
client's errors or ValueError for bad input caught neither. Nothing is sent for them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "clients" / "python"))

from railproof_client import RailproofClient  # noqa: E402


def _client(sent: list[httpx.Request]) -> RailproofClient:
    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(404, json={"error": {"code": "not_found", "message": "no"}})

    return RailproofClient(
        "http://127.0.0.1:9", "token", transport=httpx.MockTransport(handler), max_attempts=1
    )


SESSION: dict[str, Any] = {
    "owner_id": "owner-1",
    "rail_id": "solana-usdc",
    "access_product_id": "p",
    "amount": 1,
}


@pytest.mark.parametrize(
    "call,field",
    [
        (lambda c: c.get_proof("pr\ud800"), "proof_id"),
        (lambda c: c.get_session("\udfffs"), "session_id"),
        (lambda c: c.list_entitlements("own\ud83d"), "owner_id"),
        (lambda c: c.list_entitlements("owner-1", after="\ud800"), "after"),
        (lambda c: c.open_session(**SESSION, idempotency_key="clé-1"), "idempotency_key"),
        (lambda c: c.open_session(**SESSION, idempotency_key="k\n1"), "idempotency_key"),
        (lambda c: c.open_session(**SESSION, idempotency_key="k" * 257), "idempotency_key"),
        (lambda c: c.open_session(**SESSION, idempotency_key="order-1,2"), "idempotency_key"),
        (
            lambda c: c.submit_proof(session_id="s", proof="p", idempotency_key="ключ"),
            "idempotency_key",
        ),
    ],
)
def test_an_unsendable_argument_is_refused_by_name(call, field):
    sent: list[httpx.Request] = []
    with pytest.raises(ValueError) as err:
        call(_client(sent))
    assert not isinstance(err.value, UnicodeError)
    assert str(err.value).startswith(f"{field}: ")
    assert sent == []


def test_a_key_at_the_servers_bound_is_sent():
    sent: list[httpx.Request] = []
    with pytest.raises(Exception) as err:
        _client(sent).open_session(**SESSION, idempotency_key="k" * 256)
    assert not isinstance(err.value, ValueError)
    assert [r.headers["Idempotency-Key"] for r in sent] == ["k" * 256]
