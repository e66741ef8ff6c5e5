"""Everything railproof_client raises is a RailproofError (errors.py). A response whose body
cannot be decoded (a proxy's corrupt `Content-Encoding: gzip` answer; httpx asks for gzip by
default) is one too, a retryable ConnectionFailed: after a POST whose session may already
exist, a retry with the same Idempotency-Key gets the stored answer.
"""

from __future__ import annotations

import httpx
import pytest
from railproof_client import RailproofClient, RailproofError


def test_an_undecodable_answer_is_a_railproof_error_not_a_raw_httpx_error():
    keys: list[str | None] = []

    def handle(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers.get("Idempotency-Key"))
        return httpx.Response(
            201,
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
            content=b'{"id": "not gzip"}',
        )

    with RailproofClient(
        "http://127.0.0.1:1", "tok", transport=httpx.MockTransport(handle), sleep=lambda s: None
    ) as rp:
        with pytest.raises(RailproofError):
            rp.open_session(
                owner_id="o1", rail_id="solana_usdc", access_product_id="p1", amount=1_500_000
            )
    assert len(keys) > 1 and len(set(keys)) == 1 and keys[0], keys  # retried, one key
