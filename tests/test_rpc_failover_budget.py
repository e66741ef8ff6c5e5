"""Every configured RPC URL is asked within the call's total time, whatever the first does.

With the shipped ratio of bounds (RAILPROOF_RPC_TIMEOUT_S 8 s × RAILPROOF_RPC_ATTEMPTS 3 >
RAILPROOF_RPC_TOTAL_S 20 s), a first URL that accepts and never answers used to take the whole
call: its tries ran to the call's end and the second URL was "not tried (time budget spent)",
so no proof verified while a healthy second node was configured. Each URL now gets a share of
the time left (time left / URLs left) and its tries stop at the share's end.

The policies here are the shipped defaults scaled down tenfold (same ratios, fast tests), with
a short backoff so that a URL's tries fill the time they are given.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from rails.transport.evm_http import EvmHttpTransport
from rails.transport.failover import RetryPolicy as FailoverPolicy
from rails.transport.rpc_policy import RpcPolicy
from rails.transport.solana_http import RetryPolicy, SolanaRpcTransport
from rails.transport.tron_http import TronHttpTransport
from tests import loopback_http as loopback
from tests.test_chain_faults import Live, nodes  # noqa: F401 - fixture
from verifier.storage.db import upgrade

# The shipped defaults (8 s, 3 tries, 20 s), a tenth as long.
SCALED = RpcPolicy(timeout_s=0.8, attempts=3, total_s=2.0)


def solana_policy(policy: RpcPolicy) -> RetryPolicy:
    return replace(RetryPolicy.of(policy), backoff_initial=0.01, backoff_max=0.05)


def failover_policy(policy: RpcPolicy) -> FailoverPolicy:
    return replace(FailoverPolicy.of(policy), initial_wait=0.01, max_wait=0.05, jitter=0.01)


SOLANA, FAILOVER = solana_policy(SCALED), failover_policy(SCALED)


@pytest.fixture
def hanging_node() -> Iterator[str]:
    """Accepts the connection, reads the request, never answers (until the test ends)."""
    stop = threading.Event()

    class Handler(loopback.Handler):
        def do_POST(self) -> None:  # noqa: N802
            self.body()
            stop.wait(60)
            self.close_connection = True

    try:
        with loopback.serving(Handler) as base:
            yield f"{base}/"
    finally:
        stop.set()


@pytest.fixture
def answering_node() -> Iterator[Any]:
    """Answers any call at once: JSON-RPC "0x1", or a Tron block."""
    asked: list[str] = []

    class Handler(loopback.Handler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.body()
            asked.append(self.path)
            if self.path.startswith("/wallet/"):
                self.answer(b'{"blockID": "00"}')
            else:
                rid = json.loads(body)["id"]
                self.answer(json.dumps({"jsonrpc": "2.0", "id": rid, "result": "0x1"}).encode())

    with loopback.serving(Handler) as base:
        yield f"{base}/", asked


def head_call(family: str, urls: list[str], policy: RpcPolicy = SCALED) -> Any:
    """The family's cheapest call (the chain's head) through its live transport on `urls`,
    with `policy` (this file's scaled one by default): `"0x1"` or `{"blockID": "00"}` from
    the test nodes."""
    if family == "solana":
        return SolanaRpcTransport(urls, "solana-mainnet", solana_policy(policy)).call("getSlot", [])
    failover = failover_policy(policy)
    if family == "evm":
        return EvmHttpTransport(urls, "ethereum", failover).call("eth_blockNumber", [])
    return TronHttpTransport(urls, "tron-mainnet", failover).call("getnowblock", [])


@pytest.mark.parametrize("family", ["solana", "evm", "tron"])
def test_a_hanging_first_url_leaves_time_for_the_second(hanging_node, answering_node, family):
    url, asked = answering_node
    urls = [hanging_node, url]
    assert head_call(family, urls) in ("0x1", {"blockID": "00"})
    assert len(asked) == 1


def test_a_hanging_first_url_does_not_stop_a_proof_verifying_on_the_second(
    nodes,  # noqa: F811
    hanging_node,
    tmp_path,
):
    (honest,) = nodes()
    db = f"sqlite:///{tmp_path}/railproof.db"
    upgrade(db)
    lv: Any = Live(db, [hanging_node, honest.url], 1, SOLANA)
    try:
        view = lv.pay()
        assert view["status"] == "verified", view
        assert honest.count("getTransaction") >= 1
    finally:
        lv.close()
