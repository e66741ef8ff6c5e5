"""EVM discovery when one block holds more transfers to the treasury than a node answers at
once (tests/test_reconciliation's local py-evm chain).

A provider caps how many results one eth_getLogs answer may hold (Infura and others: -32005
"query returned more than 10000 results"), whatever the range. Anyone can put more Transfer
logs to a shared treasury than that into one block (one transaction of a batching contract
moving 1 base unit each time). The range is split down to that block; the block is then asked
for the watched payers' transfers one payer at a time, so later payments are still found.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from rails.errors import RpcErrorResponse
from scripts.make_evm_inflow_cassettes import LogsNode
from tests.helpers import advance
from tests.test_evm_batched_transfers import created_by
from tests.test_reconciliation import evm  # noqa: F401  (the local EVM chain)
from tests.test_transfer_identity import _batching_initcode
from verifier.services import discovery
from verifier.services.sessions import NewSession, open_session
from verifier.storage.models import Proof

RESULTS_CAP = 5  # a hosted node's cap on the logs one answer holds, scaled down


class CappedNode(LogsNode):
    """The local chain behind a node that refuses an eth_getLogs answer of more than `results`
    logs, as hosted providers do (whatever the block range)."""

    def __init__(self, chain, results: int):
        super().__init__(chain, cap=8)
        self.results = results

    def call(self, method: str, params: list[Any]) -> Any:
        out = super().call(method, params)
        if method == "eth_getLogs" and isinstance(out, list) and len(out) > self.results:
            raise RpcErrorResponse(
                method,
                {"code": -32005, "message": f"query returned more than {self.results} results"},
            )
        return out


def dust_block(evm: dict[str, Any], sender: str, n: int) -> str:  # noqa: F811
    """One transaction (one block) moving 1 base unit from `sender` to the treasury n times."""
    chain, token, treasury = evm["chain"], evm["token"], evm["treasury"]
    builder = chain.accounts[0]
    batcher = created_by(builder, chain.w3.eth.get_transaction_count(builder))
    token.functions.approve(batcher, n).transact({"from": sender})
    call = bytes.fromhex(
        token.functions.transferFrom(sender, treasury, 1)._encode_transaction_data()[2:]
    )
    tx = chain.w3.eth.send_transaction(
        {"from": builder, "data": "0x" + _batching_initcode(token.address, [call] * n).hex()}
    ).to_0x_hex()
    receipt = chain.w3.eth.get_transaction_receipt(tx)
    assert receipt.status == 1 and len(receipt.logs) == n
    return tx


def test_a_dust_flood_in_one_block_never_stalls_evm_discovery_of_other_tenants(evm):  # noqa: F811
    e, chain, token = evm["engine"], evm["chain"], evm["token"]
    e.settings.discovery = True
    e.chains.set_transport("ethereum", CappedNode(chain, RESULTS_CAP))
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
    # The hostile party: one block of dust transfers to the shared treasury.
    dust_block(evm, evm["other"], RESULTS_CAP + 1)
    # Bob's customer pays, in a later block.
    paid = chain.transfer(token, evm["payer"], evm["treasury"], 5_000_000)
    chain.mine(2)
    for _ in range(12):  # a dozen worker cycles, each past the watch's back-off
        discovery.watch_evm(e, e.rail("evm_usdc"))
        advance(e, 120)
    with e.db.tx() as s:
        refs = s.scalars(select(Proof.ref).where(Proof.session_id == bobs["id"])).all()
    assert refs == [paid.lower()], "Bob's payment behind the dust block was never discovered"


def test_a_flood_from_a_watched_payer_passes_over_only_its_own_transfers(evm, caplog):  # noqa: F811
    # The flooding party is a tenant too: a session of its own names the flooding address as
    # payer, so asking payer by payer still meets a refusal, for that payer alone. The other
    # payers' transfers wait, and are found once it is passed over.
    e, chain, token = evm["engine"], evm["chain"], evm["token"]
    e.settings.discovery = True
    e.chains.set_transport("ethereum", CappedNode(chain, RESULTS_CAP))
    for owner, payer in (("mallory", evm["other"]), ("bob", evm["payer"])):
        open_session(
            e,
            NewSession(
                owner_id=owner,
                rail_id="evm_usdc",
                access_product_id="pro",
                amount=5_000_000,
                payer=payer,
                reference=None,
            ),
            actor="svc",
        )
    chain.mine(1)
    dust_block(evm, evm["other"], RESULTS_CAP + 1)
    paid = chain.transfer(token, evm["payer"], evm["treasury"], 5_000_000)
    chain.mine(2)
    # Its own refused block stops the watch there (a node's passing trouble looks the same)
    # for STUCK_LIMIT cycles in a row; then that payer's transfers there are passed over.
    for _ in range(discovery.STUCK_LIMIT + 1):
        discovery.watch_evm(e, e.rail("evm_usdc"))
        advance(e, 120)
    with e.db.tx() as s:
        refs = s.scalars(select(Proof.ref)).all()
    assert refs == [paid.lower()]
    assert any("passed over block" in r.getMessage() for r in caplog.records)
