"""A node that trickles its status line or headers is cut off at the call's end.

tests/test_rpc_trickle.py covers a body trickled after complete headers (read through
rails.transport.bodies.read_bounded). The head is read by the HTTP clients themselves —
http.client under urllib3 (Solana) and requests (EVM), h11 under httpx (Tron) — line by line,
each socket read bounded by the request's `timeout` and the whole head by nothing: a node that
sends `HTTP/1.1 200 ` and then one byte every 0.2 s never lets a read time out. Every transport
now bounds the head as a whole too (rails.transport.heads).

The node here trickles for at most TRICKLE_S; the policy allows ~1 s; each test waits WAIT_S
(a generous bound, not a speed claim).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from rails import adapter_class
from rails.base import Terms
from rails.errors import TransportError
from rails.transport.evm_http import EvmHttpTransport
from rails.transport.solana_http import RetryPolicy as SolanaPolicy
from rails.transport.solana_http import SolanaRpcTransport
from rails.transport.tron_http import TronHttpTransport
from registry.catalog import load_catalog
from tests.test_rpc_trickle import FAST_FAILOVER, SIG, WAIT_S, _ends_within
from verifier.core.chains import Chains
from verifier.core.config import Settings

TRICKLE_S = 30.0

HEADS = {
    # the status line itself, a byte at a time (a reason phrase that never ends)
    "status-line": (b"HTTP/1.1 200 ", b"O"),
    # short header lines, each whole, one after another (no line limit is ever reached)
    "many-headers": (b"HTTP/1.1 200 OK\r\n", b"X-A: b\r\n"),
}


def _trickling(head: bytes, drip: bytes) -> Iterator[str]:
    stop = threading.Event()
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)

    def serve(conn: socket.socket) -> None:
        try:
            conn.recv(65536)
            conn.sendall(head)
            until = time.monotonic() + TRICKLE_S
            while not stop.is_set() and time.monotonic() < until:
                conn.sendall(drip)
                stop.wait(0.2)
        except OSError:
            pass
        finally:
            conn.close()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}/v2/KEY"
    finally:
        stop.set()
        server.close()


@pytest.fixture(params=list(HEADS))
def trickling_head(request) -> Iterator[str]:
    yield from _trickling(*HEADS[request.param])


@pytest.fixture
def trickling_header() -> Iterator[str]:
    """The status line whole, then a header line that never ends."""
    yield from _trickling(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Slow: ", b"a")


@pytest.mark.parametrize("family", ["solana", "evm", "tron"])
def test_a_node_trickling_its_head_is_cut_off_at_the_policys_total_time(trickling_head, family):
    if family == "solana":
        t: Any = SolanaRpcTransport(
            [trickling_head],
            "solana-mainnet",
            SolanaPolicy(attempts=1, timeout=0.5, total_seconds=1.0),
        )
        call = lambda: t.call("getSlot", [])  # noqa: E731
    elif family == "evm":
        t = EvmHttpTransport([trickling_head], "ethereum", FAST_FAILOVER)
        call = lambda: t.call("eth_blockNumber", [])  # noqa: E731
    else:
        t = TronHttpTransport([trickling_head], "tron-mainnet", FAST_FAILOVER)
        call = lambda: t.call("getnowblock", [])  # noqa: E731
    ended, took, out = _ends_within(call, WAIT_S)
    assert ended, (
        f"{family}: the call was still reading a trickled status line/headers {took:.1f}s into "
        "a 1s total budget"
    )
    # The transport's own error (pending), not whatever the half-read head made of it.
    assert isinstance(out, TransportError), repr(out)
    assert "every RPC URL failed" in str(out), out


def test_the_workers_recheck_ends_when_a_node_trickles_its_head(trickling_header):
    """The worker's path: Chains.verify without a budget, RAILPROOF_RPC_TOTAL_S=1."""
    settings = Settings(
        chain="live",
        rpc_total_s=1,
        rpc_timeout_s=0.5,
        rpc_attempts=1,
        env={"RAILPROOF_RPC_SOLANA_MAINNET": trickling_header},
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
        f"a worker re-check was still waiting on one node's head {took:.1f}s into "
        "RAILPROOF_RPC_TOTAL_S=1"
    )
    assert out.verdict.status.value == "pending", out
