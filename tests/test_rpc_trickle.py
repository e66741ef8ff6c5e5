"""A node that answers byte by byte (a "slowloris" answer) is cut off at the call's time.

Each HTTP client bounds a socket read (`timeout`), not the answer: a node that sends the
status line and headers at once, then one byte of body every 0.1 s, never lets a single read
time out. The submission path was saved by `verify_within` abandoning its thread, but the
worker's re-check (`Chains.verify` without a budget) and the finality sweep were held for as
long as the node trickled. Every transport now reads its answer against the end of the call
(rails.transport.bodies).

The node here trickles for at most TRICKLE_S and the policy allows ~1 s; each test waits
WAIT_S for the call to end, far more than the policy allows, far less than the trickle."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from rails import adapter_class
from rails.base import Terms
from rails.transport.evm_http import EvmHttpTransport
from rails.transport.failover import RetryPolicy as FailoverPolicy
from rails.transport.solana_http import RetryPolicy as SolanaPolicy
from rails.transport.solana_http import SolanaRpcTransport
from rails.transport.tron_http import TronHttpTransport
from registry.catalog import load_catalog
from tests import loopback_http as loopback
from verifier.core.chains import Chains
from verifier.core.config import Settings

TRICKLE_S = 20.0  # how long the node keeps dribbling (unless the test ends first)
WAIT_S = 6.0  # the policy below allows ~1 s; 6 s is a generous bound, not a speed claim
SIG = "2QDmA4v3FomQSDNL2KuZVbq9pfWQ1PcABZjZnZ4ZA51jsmZrdCbo9nAZQ2iqT5tcx1HKD8bfHtUXnbWmDLUzhH2T"


@pytest.fixture
def trickling_node() -> Iterator[str]:
    """A node that answers 200 with a 1 MB Content-Length, then one byte every 0.1 s."""
    stop = threading.Event()

    class Handler(loopback.Handler):
        def do_POST(self) -> None:  # noqa: N802
            self.body()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(1 << 20))
            self.end_headers()
            until = time.monotonic() + TRICKLE_S
            try:
                while not stop.is_set() and time.monotonic() < until:
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    stop.wait(0.1)
            except OSError:
                pass
            self.close_connection = True

    try:
        with loopback.serving(Handler) as base:
            yield f"{base}/v2/KEY"
    finally:
        stop.set()


def _ends_within(fn: Any, wait_s: float) -> tuple[bool, float, Any]:
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(fn())
        except Exception as e:  # noqa: BLE001 - any outcome is fine, only its time matters
            box.append(e)

    started = time.monotonic()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(wait_s)
    return (not t.is_alive(), time.monotonic() - started, box[0] if box else None)


FAST_FAILOVER = FailoverPolicy(
    attempts=1, per_url_seconds=1.0, total_seconds=1.0, timeout=0.5, initial_wait=0.01
)


@pytest.mark.parametrize("family", ["solana", "evm", "tron"])
def test_a_trickling_node_is_cut_off_at_the_policys_total_time(trickling_node, family):
    if family == "solana":
        t: Any = SolanaRpcTransport(
            [trickling_node],
            "solana-mainnet",
            SolanaPolicy(attempts=1, timeout=0.5, total_seconds=1.0),
        )
        call = lambda: t.call("getSlot", [])  # noqa: E731
    elif family == "evm":
        t = EvmHttpTransport([trickling_node], "ethereum", FAST_FAILOVER)
        call = lambda: t.call("eth_blockNumber", [])  # noqa: E731
    else:
        t = TronHttpTransport([trickling_node], "tron-mainnet", FAST_FAILOVER)
        call = lambda: t.call("getnowblock", [])  # noqa: E731
    ended, took, out = _ends_within(call, WAIT_S)
    assert ended, (
        f"{family}: the call was still reading a trickling answer {took:.1f}s into a 1s total "
        "budget (each read waits < timeout, so only a whole-request deadline can stop it)"
    )


def test_a_trickling_node_is_cut_off_at_the_callers_deadline(trickling_node):
    t = SolanaRpcTransport(
        [trickling_node], "solana-mainnet", SolanaPolicy(attempts=1, timeout=0.5, total_seconds=30)
    )
    ended, took, out = _ends_within(
        lambda: t.call("getSlot", [], deadline=time.monotonic() + 0.5), WAIT_S
    )
    assert ended, f"the call outlived its 0.5s deadline by {took:.1f}s+"


def test_the_workers_recheck_is_held_by_a_trickling_node(trickling_node):
    """The worker's path: Chains.verify without a budget, RAILPROOF_RPC_TOTAL_S=1."""
    settings = Settings(
        chain="live",
        rpc_total_s=1,
        rpc_timeout_s=0.5,
        rpc_attempts=1,
        env={"RAILPROOF_RPC_SOLANA_MAINNET": trickling_node},
    )
    chains = Chains(settings)
    rail = load_catalog().resolve("solana_usdc")
    adapter = adapter_class(rail.family)(rail)
    now = datetime.now(UTC)
    terms = Terms(
        recipient="C1bL1CaQ6PjLKZyYRn11ZtydLqEfGUxdcvUS3frx8ocg",
        amount=1,
        now=now,
        not_before=now - timedelta(hours=1),
    )
    ended, took, out = _ends_within(lambda: chains.verify(adapter, SIG, terms), WAIT_S)
    assert ended, (
        f"a worker re-check was still waiting on one node {took:.1f}s into RAILPROOF_RPC_TOTAL_S=1"
    )
