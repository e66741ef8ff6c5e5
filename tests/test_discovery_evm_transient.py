"""EVM discovery's per-payer reading of a block the node refuses whole passes a payer's
transfers over only when the refusal lasts (`discovery.STUCK_LIMIT` cycles in a row): a
provider's passing trouble answered as a JSON-RPC error (a rate limit) in one cycle stops the
watch before the block, which is read again the next cycle, and the payment in it is found.
Local py-evm chain (tests/test_reconciliation's `evm` world), loopback only."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from rails.errors import RpcErrorResponse
from scripts.make_evm_inflow_cassettes import LogsNode
from tests.helpers import advance
from tests.test_reconciliation import evm  # noqa: F401  (the local EVM chain)
from verifier.services import discovery
from verifier.services.sessions import NewSession, open_session
from verifier.storage.models import Proof


class BusyOnceNode(LogsNode):
    """A hosted node that, while `busy`, answers eth_getLogs over `block` with a JSON-RPC error
    (rate limited), then answers normally."""

    def __init__(self, chain):
        super().__init__(chain, cap=8)
        self.busy = False
        self.block: int | None = None

    def call(self, method: str, params: list[Any]) -> Any:
        if method == "eth_getLogs" and self.busy and self.block is not None:
            lo, hi = int(params[0]["fromBlock"], 16), int(params[0]["toBlock"], 16)
            if lo <= self.block <= hi:
                raise RpcErrorResponse(
                    method, {"code": -32005, "message": "request rate exceeded, retry later"}
                )
        return super().call(method, params)


def test_a_transient_error_answer_does_not_lose_a_payment_for_good(evm):  # noqa: F811
    e, chain, token = evm["engine"], evm["chain"], evm["token"]
    e.settings.discovery = True
    node = BusyOnceNode(chain)
    e.chains.set_transport("ethereum", node)
    bobs = open_session(
        e,
        NewSession(
            owner_id="bob",
            rail_id="evm_usdc",
            access_product_id="pro",
            amount=5_000_000,
            payer=evm["payer"],
            reference=None,
        ),
        actor="svc",
    )
    chain.mine(1)
    paid = chain.transfer(token, evm["payer"], evm["treasury"], 5_000_000)
    node.block = int(chain.w3.eth.get_transaction_receipt(paid)["blockNumber"])
    chain.mine(70)  # deeper than the 64 blocks each watch reads again

    node.busy = True  # one cycle of a rate-limited provider
    discovery.watch_evm(e, e.rail("evm_usdc"))
    node.busy = False
    advance(e, 120)
    for _ in range(6):  # the provider answers again: the next cycles read the block
        discovery.watch_evm(e, e.rail("evm_usdc"))
        advance(e, 120)
    with e.db.tx() as s:
        refs = s.scalars(select(Proof.ref).where(Proof.session_id == bobs["id"])).all()
    assert refs == [paid.lower()], "Bob's payment was passed over for a transient error answer"
