"""A gzip bomb from an RPC node is inflated whole into memory.

None of the live transports bounds the size of an answer: urllib3 (`response.data`, Solana),
requests (`response.content`, web3 for EVM) and httpx (`response.content`, Tron) all inflate a
`Content-Encoding: gzip` body completely before anything looks at it. 32 KB on the wire
becomes a 32 MB buffer here (and its JSON parse on top); a 10 MB answer would be ~10 GB and
kill the API or worker process (OOM) — a crash from a hostile or broken node, where the
contract is "pending rpc_unavailable, never a crash". A getTransaction answer is a few KB; a
bound of a few MB on the inflated answer (read in chunks, stop past it →
MalformedResponse) keeps every real answer.
"""

from __future__ import annotations

import gzip
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest

from rails.errors import TransportError
from rails.transport.evm_http import EvmHttpTransport
from rails.transport.failover import RetryPolicy as FailoverPolicy
from rails.transport.solana_http import RetryPolicy as SolanaPolicy
from rails.transport.solana_http import SolanaRpcTransport
from rails.transport.tron_http import TronHttpTransport
from tests import loopback_http as loopback

INFLATED = 32 * 1024 * 1024  # what the body inflates to
BOUND = 12 * 1024 * 1024  # far above any real answer, far below the bomb
BOMB = gzip.compress(b"[" + b" " * INFLATED + b"]", 9)


@pytest.fixture(scope="module")
def bomb_node() -> Iterator[str]:
    class Handler(loopback.Handler):
        def do_POST(self) -> None:  # noqa: N802
            self.body()
            self.answer(BOMB, {"Content-Encoding": "gzip"})

    with loopback.serving(Handler) as base:
        yield f"{base}/"


@pytest.mark.parametrize("family", ["solana", "evm", "tron"])
def test_a_gzip_bomb_is_not_inflated_whole(bomb_node, family):
    assert len(BOMB) < 64 * 1024
    fast = FailoverPolicy(attempts=1, per_url_seconds=10, total_seconds=10, timeout=10)
    if family == "solana":
        t: Any = SolanaRpcTransport(
            [bomb_node], "solana-mainnet", SolanaPolicy(attempts=1, timeout=10, total_seconds=10)
        )
        method = "getSlot"
    elif family == "evm":
        t = EvmHttpTransport([bomb_node], "ethereum", fast)
        method = "eth_blockNumber"
    else:
        t = TronHttpTransport([bomb_node], "tron-mainnet", fast)
        method = "getnowblock"
    tracemalloc.start()
    try:
        with pytest.raises(TransportError):  # whatever it is, it is not an answer
            t.call(method, [])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < BOUND, (
        f"{family}: {len(BOMB)} bytes on the wire took {peak / 1e6:.0f} MB of memory "
        f"(the body was inflated whole: {INFLATED / 1e6:.0f} MB)"
    )
