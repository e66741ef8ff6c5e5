# ruff: noqa: F811  (fixtures imported from tests.test_x402_adapter)
"""A settlement block's timestamp no calendar holds, from one node, in the x402 rail's
finality (the worker's refresh): a malformed answer from that node (as the EVM rail reads
one), so the other nodes of an RPC quorum still decide the settlement."""

from __future__ import annotations

import pytest

from rails.errors import MalformedResponse
from tests.test_x402_adapter import (  # noqa: F401  (fixture)
    BLOCK_HASH,
    REF,
    live_chain,
    sepolia,
    settlement_logs,
)
from verifier.core.checking import run_finality_quorum


@pytest.mark.parametrize("stamp", [2**64, 253402300800])  # past time_t / past year 9999
def test_a_settlement_timestamp_no_calendar_holds_is_a_malformed_answer(sepolia, stamp):
    chain = live_chain(used=True, logs=settlement_logs(), head=120, mined=stamp)
    with pytest.raises(MalformedResponse):
        sepolia.finality([REF], chain)


def test_one_node_with_an_absurd_settlement_timestamp_does_not_stop_the_quorum(sepolia):
    honest = [live_chain(used=True, logs=settlement_logs(), head=120) for _ in range(2)]
    liar = live_chain(used=True, logs=settlement_logs(), head=120, mined=2**64)
    # Two honest nodes of three agree: quorum 2 decides the settlement, whatever the third says.
    [st] = run_finality_quorum(sepolia, [REF], [honest[0], liar, honest[1]], 2)
    assert st.is_final and st.block_hash == BLOCK_HASH


class _NoCode:
    """A node asked `authorizationState` of an address without code: the empty answer."""

    def call(self, method: str, params: list) -> str:
        assert method == "eth_call"
        return "0x"


def test_an_empty_authorization_state_is_a_malformed_answer_not_unused():
    from rails.x402 import authorization_used

    with pytest.raises(MalformedResponse):
        authorization_used(_NoCode(), b"\x01" * 20, b"\x02" * 20, b"\x03" * 32)  # type: ignore[arg-type]
