"""A JSON-RPC answer whose `id` is not the request's was believed on the single-call path;
it is a malformed answer now.

The Solana transport matches a batch's answers by id (an answer without the asked id is
MalformedResponse), but `_single_once` (rails/transport/solana_http.py) did not compare the
answer's id with the request's, and neither did the EVM transport (web3's
`HTTPProvider.make_request` returns whatever object came back). A mismatched id is an answer
to another request — a caching or pooling proxy mixing up answers, a broken gateway — and the
README lists "mismatched answers" among what is `pending rpc_unavailable`. The worker's
finality sweep asks `getSignatureStatuses` alone, so such an answer decides a settlement: here
a status answered under another request's id makes the settlement final.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from rails import adapter_class
from rails.errors import TransportError
from rails.transport.evm_http import EvmHttpTransport
from rails.transport.failover import RetryPolicy as FailoverPolicy
from rails.transport.solana_http import RetryPolicy, SolanaRpcTransport
from registry.catalog import load_catalog
from tests import loopback_http as loopback

SIG = "2QDmA4v3FomQSDNL2KuZVbq9pfWQ1PcABZjZnZ4ZA51jsmZrdCbo9nAZQ2iqT5tcx1HKD8bfHtUXnbWmDLUzhH2T"
FINALIZED = {"slot": 1, "confirmations": None, "err": None, "confirmationStatus": "finalized"}


@pytest.fixture
def wrong_id_node() -> Iterator[str]:
    """Answers each call correctly in content, but under another request's id."""

    class Handler(loopback.Handler):
        def do_POST(self) -> None:  # noqa: N802
            req = json.loads(self.body())
            method = req.get("method")
            if method == "getSignatureStatuses":
                result: Any = {"context": {"slot": 5}, "value": [FINALIZED] * len(req["params"][0])}
            else:
                result = "0x1"
            body = json.dumps({"jsonrpc": "2.0", "id": 987654, "result": result}).encode()
            self.answer(body)

    with loopback.serving(Handler) as base:
        yield f"{base}/"


def test_a_solana_status_answered_under_another_id_settles_nothing(wrong_id_node):
    rail = load_catalog().resolve("solana_usdc")
    adapter = adapter_class(rail.family)(rail)
    chain = SolanaRpcTransport(
        [wrong_id_node], rail.network, RetryPolicy(attempts=1, timeout=3, total_seconds=5)
    )
    try:
        settled = adapter.finality([SIG], chain)
    except TransportError:
        return  # refused: what is expected
    assert not any(s.is_final for s in settled), (
        f"an answer to request id 987654 made the settlement final: {settled}"
    )


def test_an_evm_answer_under_another_id_is_refused(wrong_id_node):
    chain = EvmHttpTransport([wrong_id_node], "ethereum", FailoverPolicy(attempts=1, timeout=3))
    with pytest.raises(TransportError):
        chain.call("eth_chainId", [])
