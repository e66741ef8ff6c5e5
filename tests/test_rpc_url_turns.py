"""A hanging URL leaves the next URL its turn (README "Reliability", the RAILPROOF_RPC_* row).

Each URL's share of a call's time is at least one request's timeout (a slow but healthy node
answers), but never all that is left while another URL waits. Two ordinary cases, on Solana,
EVM and Tron, where a share of all that is left would leave the healthy URL "not tried (time
budget spent)":

- a caller's deadline shorter than one request's timeout: `POST /v1/proofs` verifies within
  RAILPROOF_SUBMIT_VERIFY_BUDGET_S (3 s) while a request may take 8 s;
- four URLs with the shipped bounds (8 s, 20 s), three of them hanging.

The shipped bounds are scaled tenfold down, as in tests/test_rpc_failover_budget.py.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from rails.transport.evm_http import EvmHttpTransport
from rails.transport.solana_http import SolanaRpcTransport
from rails.transport.tron_http import TronHttpTransport
from tests.test_rpc_failover_budget import (  # noqa: F401 - fixtures
    FAILOVER,
    SCALED,
    SOLANA,
    answering_node,
    hanging_node,
)

SUBMIT_BUDGET_S = 0.3  # RAILPROOF_SUBMIT_VERIFY_BUDGET_S (3 s), scaled tenfold down


def _call(family: str, urls: list[str]) -> Any:
    t: Any
    if family == "solana":
        t = SolanaRpcTransport(urls, "solana-mainnet", SOLANA)
        return lambda deadline=None: t.call("getSlot", [], deadline=deadline)
    if family == "evm":
        t = EvmHttpTransport(urls, "ethereum", FAILOVER)
        return lambda deadline=None: t.call("eth_blockNumber", [], deadline=deadline)
    t = TronHttpTransport(urls, "tron-mainnet", FAILOVER)
    return lambda deadline=None: t.call("getnowblock", [], deadline=deadline)


@pytest.mark.parametrize("family", ["solana", "evm", "tron"])
def test_a_hanging_first_url_leaves_the_second_its_turn_within_a_short_deadline(
    hanging_node,  # noqa: F811
    answering_node,  # noqa: F811
    family,
):
    assert SUBMIT_BUDGET_S < SCALED.timeout_s
    url, asked = answering_node
    call = _call(family, [hanging_node, url])
    started = time.monotonic()
    answer = call(deadline=started + SUBMIT_BUDGET_S)
    assert answer in ("0x1", {"blockID": "00"})
    assert len(asked) == 1
    assert time.monotonic() - started < SUBMIT_BUDGET_S + 0.2


@pytest.mark.parametrize("family", ["solana", "evm", "tron"])
def test_three_hanging_urls_leave_the_fourth_its_turn(
    hanging_node,  # noqa: F811
    answering_node,  # noqa: F811
    family,
):
    url, asked = answering_node
    urls = [f"{hanging_node}a/", f"{hanging_node}b/", f"{hanging_node}c/", url]
    started = time.monotonic()
    answer = _call(family, urls)()
    assert answer in ("0x1", {"blockID": "00"})
    assert len(asked) == 1
    assert time.monotonic() - started < SCALED.total_s + 0.2
