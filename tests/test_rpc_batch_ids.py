"""A batch answer must hold one answer per request asked, under the request's id.

The Solana transport sends getTransaction and its getSignatureStatuses as one JSON-RPC batch
and indexed the answers by id: a second member under the status request's id silently replaced
the first. JSON-RPC gives exactly one response per request; two under one id, or one under an
id not asked, are answers to other requests (a proxy or load balancer mixing answers up, as
tests/test_rpc_answer_ids.py refuses on the single-call path). Here the node answers the
status twice — "confirmed", then "finalized" — which must not make a settlement final: such a
batch is malformed, `pending rpc_unavailable`.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from rails import adapter_class
from rails.base import Terms
from rails.transport.solana_http import RetryPolicy, SolanaRpcTransport
from registry.catalog import load_catalog
from tests import loopback_http as loopback
from tests.fault_rpc import DEMO_CASSETTE
from verifier.core.checking import run_verify

DOC = json.loads(DEMO_CASSETTE.read_text())
DEMO = DOC["demo"]
TX = DOC["calls"][0]["result"]
FINALIZED = DOC["calls"][1]["result"]
CONFIRMED = copy.deepcopy(FINALIZED)
CONFIRMED["value"][0].update(confirmationStatus="confirmed", confirmations=3)


def _ok(rid: Any, result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "result": result}


# What the node answers a batch [getTransaction t, getSignatureStatuses s] with.
BATCHES = {
    "status-twice": lambda t, s, tx: [_ok(t, tx), _ok(s, CONFIRMED), _ok(s, FINALIZED)],
    "id-not-asked": lambda t, s, tx: [_ok(t, tx), _ok(s, CONFIRMED), _ok(s + 100, FINALIZED)],
}


@pytest.fixture(params=list(BATCHES))
def mixing_node(request) -> Iterator[str]:
    answer = BATCHES[request.param]

    class Handler(loopback.Handler):
        def do_POST(self) -> None:  # noqa: N802
            req = json.loads(self.body())
            tx = dict(TX, blockTime=int(time.time()))
            if isinstance(req, list):
                t, s = req
                out: Any = answer(t["id"], s["id"], tx)
            else:
                out = _ok(req["id"], tx if req["method"] == "getTransaction" else CONFIRMED)
            self.answer(json.dumps(out).encode())

    with loopback.serving(Handler) as base:
        yield f"{base}/"


def test_a_batch_answer_with_a_repeated_or_unasked_id_settles_nothing(mixing_node):
    rail = load_catalog().resolve("solana_usdc")
    adapter = adapter_class(rail.family)(rail)
    chain = SolanaRpcTransport(
        [mixing_node], rail.network, RetryPolicy(attempts=1, timeout=3, total_seconds=5)
    )
    now = datetime.now(UTC)
    terms = Terms(
        recipient=DEMO["recipient"],
        amount=int(DEMO["amount"]),
        reference=DEMO["reference"],
        memo=DEMO["memo"],
        now=now + timedelta(seconds=5),
        not_before=now - timedelta(hours=1),
    )
    try:
        v = run_verify(adapter, DEMO["signature"], terms, chain).verdict
    finally:
        chain.close()
    assert (v.status.value, v.code.value if v.code else None) == ("pending", "rpc_unavailable"), (
        "a batch answer with an id repeated or not asked was believed: "
        f"{v.status.value}, settlement final={v.settlement.is_final if v.settlement else None}"
    )
