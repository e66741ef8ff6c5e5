"""RAILPROOF_RPC_QUORUM counts nodes, not URLs, and one node cannot change alone what the
engine decides with.

- The same node listed twice, its URL written two ways (a trailing slash, the scheme's case,
  an empty query or fragment), is one vote: one forging node doubling the amount received
  is not two nodes agreeing (docs/scaling.md: "Listing one URL twice still counts as one
  node").
- A node leaving another session's reference out of the transaction's keys, everything else
  as the chain has it, does not turn an ambiguous transfer (held for review) into verified:
  the nodes must agree on the keys, and on the block time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.fault_rpc import Behaviour, FaultRpcNode
from tests.test_chain_faults import (
    DEMO,
    DEMO_CASSETTE,
    OTHER_CASSETTE,
    STEADY,
    Live,
    now_block_time,
)
from verifier.storage.db import upgrade


@pytest.fixture
def nodes() -> Iterator[Any]:
    started: list[FaultRpcNode] = []

    def start(n: int = 1) -> list[FaultRpcNode]:
        out = []
        for _ in range(n):
            node = FaultRpcNode([DEMO_CASSETTE, OTHER_CASSETTE], block_time=now_block_time)
            started.append(node.start())
            out.append(node)
        return out

    yield start
    for node in started:
        node.release()
        node.stop()


@pytest.fixture
def live(tmp_path) -> Iterator[Any]:
    made: list[Live] = []

    def make(urls: list[str], quorum: int = 1) -> Live:
        url = f"sqlite:///{tmp_path}/railproof-{len(made)}.db"
        upgrade(url)
        lv = Live(url, urls, quorum, STEADY)
        made.append(lv)
        return lv

    yield make
    for lv in made:
        lv.close()


def _spellings(url: str) -> dict[str, str]:
    """Other ways of writing the same node's URL (url is http://127.0.0.1:PORT/)."""
    port = url.rstrip("/").rsplit(":", 1)[1]
    return {
        "no-trailing-slash": f"http://127.0.0.1:{port}",
        "upper-case-scheme": f"HTTP://127.0.0.1:{port}/",
        "empty-query": f"http://127.0.0.1:{port}/?",
        "empty-fragment": f"http://127.0.0.1:{port}/#",
    }


@pytest.mark.parametrize(
    "spelling", ["no-trailing-slash", "upper-case-scheme", "empty-query", "empty-fragment"]
)
def test_one_forging_node_listed_twice_in_two_spellings_is_not_a_quorum(nodes, live, spelling):
    (node,) = nodes()
    node.behave(Behaviour.forging)  # it reports twice the amount the payer sent
    lv = live([node.url, _spellings(node.url)[spelling]], quorum=2)
    view = lv.pay(amount=str(2 * int(DEMO["amount"])))
    assert view["status"] == "pending", (
        f"one forging node, its URL written two ways, verified a doubled amount as two "
        f"independent nodes: {view['status']} {view['detail']!r}"
    )
    assert view["receipt_id"] is None


# -- a lie the quorum does not compare: the transaction's other keys ---------------------------

# Another session's reference, a key the honest chain shows in the payment (a Solana Pay
# transfer may carry several reference keys): the transfer could back that session too.
OTHER_REFERENCE = "9xQeWvG816bUx9EPjHmaT23yvVM2ZWbrrpZb9PusVFin"


def _with_other_reference(result: dict[str, Any]) -> dict[str, Any]:
    """The transaction as the chain has it: one more read-only key, OTHER_REFERENCE."""
    result["transaction"]["message"]["accountKeys"].append(
        {"pubkey": OTHER_REFERENCE, "signer": False, "source": "transaction", "writable": False}
    )
    for field in ("preBalances", "postBalances"):
        result["meta"][field].append(0)
    return result


def _honest(node: FaultRpcNode) -> FaultRpcNode:
    node.forge = _with_other_reference
    return node.behave(Behaviour.forging)  # "forging" here serves the chain's own answer


def _two_sessions(lv: Live) -> dict[str, Any]:
    """Alice's session (the demo reference) and an open one of the same terms whose reference
    is OTHER_REFERENCE; returns alice's proof view."""
    other = lv.session(reference=OTHER_REFERENCE, memo=None)
    assert other["status"] == "open"
    return lv.pay()


def test_control_the_honest_chain_holds_the_transfer_for_review(nodes, live):
    a, b = nodes(2)
    lv = live([_honest(a).url, _honest(b).url], quorum=2)
    view = _two_sessions(lv)
    assert (view["status"], view["failure_code"]) == ("requires_review", "ambiguous_transfer")


@pytest.mark.parametrize("liar_at", ["first", "second-less-final"])
def test_one_node_hiding_another_sessions_reference_does_not_verify_under_quorum(
    nodes, live, liar_at
):
    """Node 1 answers the asked transaction with OTHER_REFERENCE left out of its keys (every
    field the quorum compares — amount, recipient, sender, asset, slot — unchanged); node 2
    is honest. Both verify alice's session on their own; decide_quorum takes the least final
    verdict, on a tie the first (node 1's), and its `references` decide whether the transfer
    could back another session (verifier/services/proofs.py _unambiguous_behind). One lying
    node turns requires_review (ambiguous_transfer) into verified. Listed second, the liar
    only has to report a lower commitment ("confirmed") to be the one believed."""
    liar, honest = nodes(2)
    _honest(honest)
    if liar_at == "first":
        urls = [liar.url, honest.url]
    else:
        liar.behave(Behaviour.lagging)  # the recorded keys, status "confirmed"
        urls = [honest.url, liar.url]
    lv = live(urls, quorum=2)
    view = _two_sessions(lv)
    assert view["status"] != "verified", (
        "one node hiding a key of the transaction made an ambiguous transfer verified under "
        f"RAILPROOF_RPC_QUORUM=2: {view['status']} {view['detail']!r}"
    )
