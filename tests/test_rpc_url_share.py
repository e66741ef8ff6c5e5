"""Each RPC URL's share of a call's time is never less than one request's timeout.

RAILPROOF_RPC_TIMEOUT_S is one request's timeout. With three URLs configured and the shipped
ratio of bounds (8 s a request, 20 s a call; scaled down here, 2.4 s and 6 s, so that a
node's answer has 0.3 s to spare under a busy host's scheduling), a share of total/URLs-left (6.7 s) would cut off nodes
that answer within the timeout (7 s, healthy), one after the other: "every RPC URL failed",
pending, for every proof while every node is up. The first URL answers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from rails.transport.rpc_policy import RpcPolicy
from tests import loopback_http as loopback
from tests.test_rpc_failover_budget import head_call

# The shipped bounds' ratio, 3.33 times down: a share of total/URLs would be 2 s.
POLICY = RpcPolicy(timeout_s=2.4, attempts=3, total_s=6.0)
ANSWER_S = 2.1  # within the request timeout, beyond a share of total/URLs


@pytest.fixture
def slow_healthy_nodes() -> Iterator[list[str]]:
    """Three URLs, each answering every call correctly after ANSWER_S."""

    class Handler(loopback.Handler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.body()
            time.sleep(ANSWER_S)
            if "/wallet/" in self.path:
                self.answer(b'{"blockID": "00"}')
            else:
                rid = json.loads(body)["id"]
                self.answer(json.dumps({"jsonrpc": "2.0", "id": rid, "result": "0x1"}).encode())

    with loopback.serving(Handler) as base:
        yield [f"{base}/a/", f"{base}/b/", f"{base}/c/"]


@pytest.mark.parametrize("family", ["solana", "evm", "tron"])
def test_healthy_nodes_answering_within_the_request_timeout_are_not_all_cut_off(
    slow_healthy_nodes, family
):
    assert POLICY.total_s / 3 < ANSWER_S < POLICY.timeout_s and ANSWER_S * 2 < POLICY.total_s
    urls = slow_healthy_nodes
    assert head_call(family, urls, POLICY) in ("0x1", {"blockID": "00"})
