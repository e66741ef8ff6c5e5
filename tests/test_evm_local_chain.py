"""The EVM rail against a real chain: py-evm in process (eth-tester), with the 6-decimal test
token deployed from the bytecode kept in fixtures/evm/token/. Transfers, reverts,
confirmations growing block by block, and a reorg made with evm_snapshot/evm_revert."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from rails.base import Status, Terms
from rails.codes import FailureCode
from rails.evm import EvmAdapter
from registry.catalog import Stage
from tests.evm_chain import LocalEvmChain
from verifier.core.checking import run_verify

PAID = 25_000_000  # 25.00 test USDC


@pytest.fixture
def chain():
    return LocalEvmChain()


@pytest.fixture
def token(chain):
    token = chain.deploy_token()
    token.functions.mint(chain.accounts[1], 1_000 * 10**6).transact({"from": chain.accounts[0]})
    return token


def payer(chain):
    return chain.accounts[1]


def treasury(chain):
    return chain.accounts[2]


def terms(chain, amount=PAID, **kw):
    return Terms(recipient=treasury(chain), amount=amount, now=datetime.now(UTC), **kw)


def block_time(chain, number):
    return datetime.fromtimestamp(chain.w3.eth.get_block(number).timestamp, tz=UTC)


def test_a_real_transfer_verifies(chain, token):
    tx = chain.transfer(token, payer(chain), treasury(chain), PAID)
    adapter = EvmAdapter(chain.rail(token.address))
    v = adapter.verify(tx, terms(chain), chain)

    assert v.status is Status.verified
    o = v.observed
    assert (o["amount"], o["sender"], o["recipient"]) == (str(PAID), payer(chain), treasury(chain))
    assert o["tx_to"] == token.address and o["chain_id"] == chain.chain_id
    receipt = chain.w3.eth.get_transaction_receipt(tx)
    assert (o["block_number"], o["block_hash"]) == (
        receipt.blockNumber,
        receipt.blockHash.to_0x_hex(),
    )
    assert token.functions.balanceOf(treasury(chain)).call() == PAID  # the ledger agrees


def test_not_found_until_mined_then_verified(chain, token):
    adapter = EvmAdapter(chain.rail(token.address))
    chain.tester.disable_auto_mine_transactions()
    tx = chain.transfer(token, payer(chain), treasury(chain), PAID)
    pending = adapter.verify(tx, terms(chain), chain)
    assert (pending.status, pending.code) == (Status.pending, FailureCode.tx_not_found)
    chain.mine()
    assert adapter.verify(tx, terms(chain), chain).status is Status.verified


def test_confirmations_grow_block_by_block_until_final(chain, token):
    adapter = EvmAdapter(chain.rail(token.address, confirmations=3))
    tx = chain.transfer(token, payer(chain), treasury(chain), PAID)
    first = adapter.verify(tx, terms(chain), chain).settlement
    assert (first.confirmations, first.is_final, first.finality) == (1, False, "confirmed")

    seen = []
    for _ in range(3):
        chain.mine()
        chain.calls.clear()
        [s] = adapter.finality([tx], chain)
        seen.append((s.confirmations, s.is_final, s.finality))
        assert [m for m, _ in chain.calls].count("eth_blockNumber") == 1
    assert seen == [(2, False, "confirmed"), (3, True, "finalized"), (4, True, "finalized")]


def test_finalized_tag_counts_when_the_policy_trusts_it(chain, token):
    chain.finalized_lag = 4  # the chain finalizes 4 blocks behind its head
    adapter = EvmAdapter(chain.rail(token.address, confirmations=100, finalized_tag=True))
    tx = chain.transfer(token, payer(chain), treasury(chain), PAID)
    chain.mine(3)
    [s] = adapter.finality([tx], chain)
    assert (s.confirmations, s.is_final) == (4, False)  # finalized block is still below ours
    chain.mine()
    [s] = adapter.finality([tx], chain)
    assert (s.confirmations, s.is_final, s.finality) == (5, True, "finalized")


def test_reorg_made_with_snapshot_and_revert_is_detected(chain, token):
    adapter = EvmAdapter(chain.rail(token.address, confirmations=3))
    snapshot = chain.snapshot()
    tx = chain.transfer(token, payer(chain), treasury(chain), PAID)
    verified = adapter.verify(tx, terms(chain), chain)
    height, old_hash = verified.observed["block_number"], verified.observed["block_hash"]
    assert verified.status is Status.verified and not verified.settlement.reorged

    chain.revert(snapshot)
    # A different block at the same height: the payer's money went elsewhere instead.
    chain.transfer(token, payer(chain), chain.accounts[3], PAID)
    chain.mine(2)
    new_block = chain.call("eth_getBlockByNumber", [hex(height), False])
    assert int(new_block["number"], 16) == height and new_block["hash"] != old_hash

    [s] = adapter.finality([tx], chain)
    assert (s.reorged, s.finality, s.is_final) == (True, "reorged", False)
    again = adapter.verify(tx, terms(chain), chain)
    assert (again.status, again.code) == (Status.pending, FailureCode.tx_not_found)


def test_stale_receipt_from_a_lagging_node_is_reorged_by_the_canonical_hash(chain, token):
    """One backend still serves the pre-reorg receipt; the canonical block at its height has
    another hash, so the receipt is a fork's: no verdict, and the settlement is reorged, even
    though the receipt says success."""
    adapter = EvmAdapter(chain.rail(token.address, confirmations=3))
    snapshot = chain.snapshot()
    tx = chain.transfer(token, payer(chain), treasury(chain), PAID)
    stale_receipt = chain.call("eth_getTransactionReceipt", [tx])
    chain.revert(snapshot)
    chain.transfer(token, payer(chain), chain.accounts[3], PAID)

    class LaggingReceipts:
        source = "local"

        def call(self, method, params):
            if method == "eth_getTransactionReceipt" and params == [tx]:
                return stale_receipt
            return chain.call(method, params)

    v = adapter.verify(tx, terms(chain), LaggingReceipts())
    assert (v.status, v.code, v.settlement) == (Status.pending, FailureCode.reorged, None)
    assert stale_receipt["blockHash"].lower() in v.detail
    [s] = adapter.finality([tx], LaggingReceipts())
    assert s.reorged and s.finality == "reorged"
    assert s.block_hash == stale_receipt["blockHash"].lower()


def test_reverted_transfer_is_tx_failed_onchain_once_its_block_is_final(chain, token):
    too_much = 10**12  # more than the payer holds: the token reverts
    tx = chain.transfer(token, payer(chain), treasury(chain), too_much, gas=200_000)
    assert chain.w3.eth.get_transaction_receipt(tx).status == 0
    adapter = EvmAdapter(chain.rail(token.address, confirmations=3))
    # One confirmation of three: a reorg may yet put the transaction in another block.
    v = adapter.verify(tx, terms(chain, too_much), chain)
    assert (v.status, v.code) == (Status.pending, FailureCode.not_final)
    assert "reverted" in v.detail and "failed once final" in v.detail
    chain.mine(2)
    v = adapter.verify(tx, terms(chain, too_much), chain)
    assert (v.status, v.code) == (Status.failed, FailureCode.tx_failed_onchain)


def test_a_reverted_receipt_from_a_block_the_chain_left_is_pending(chain, token):
    # A node behind a reorg serves the receipt as the orphaned block had it: the transaction
    # reverted there, and what it did on the canonical chain is not known from that answer.
    too_much = 10**12
    before = chain.snapshot()
    tx = chain.transfer(token, payer(chain), treasury(chain), too_much, gas=200_000)
    stale = chain.call("eth_getTransactionReceipt", [tx])
    chain.revert(before)
    chain.transfer(token, payer(chain), chain.accounts[3], PAID)  # another block there now
    chain.mine(5)  # and the chain well past it

    class Lagging:
        source = "local"

        def call(self, method, params):
            if method == "eth_getTransactionReceipt":
                return stale
            return chain.call(method, params)

    adapter = EvmAdapter(chain.rail(token.address, confirmations=3))
    v = adapter.verify(tx, terms(chain, too_much), Lagging())
    assert (v.status, v.code) == (Status.pending, FailureCode.reorged)
    assert "no longer the chain's block" in v.detail


def test_a_look_alike_token_is_wrong_asset(chain, token):
    fake = chain.deploy_token()  # same bytecode, same name and symbol, another contract
    fake.functions.mint(payer(chain), PAID).transact({"from": chain.accounts[0]})
    tx = chain.transfer(fake, payer(chain), treasury(chain), PAID)
    adapter = EvmAdapter(chain.rail(token.address))
    # One confirmation of three: the failure waits for the block to be final.
    v = adapter.verify(tx, terms(chain), chain)
    assert (v.status, v.code) == (Status.pending, FailureCode.not_final)
    assert v.detail.startswith("wrong_asset: ") and "failed once final" in v.detail
    chain.mine(2)
    v = adapter.verify(tx, terms(chain), chain)
    assert (v.status, v.code) == (Status.failed, FailureCode.wrong_asset)
    assert v.observed["other_tokens"] == [fake.address]


def test_payment_to_someone_else_and_underpayment(chain, token):
    adapter = EvmAdapter(chain.rail(token.address))
    elsewhere = chain.transfer(token, payer(chain), chain.accounts[3], PAID)
    short = chain.transfer(token, payer(chain), treasury(chain), PAID - 1)
    v = adapter.verify(short, terms(chain), chain)
    assert (v.status, v.code) == (Status.pending, FailureCode.not_final)
    assert v.detail.startswith("amount_mismatch: ")
    chain.mine(2)
    assert adapter.verify(elsewhere, terms(chain), chain).code is FailureCode.wrong_recipient
    v = adapter.verify(short, terms(chain), chain)
    assert (v.status, v.code, v.observed["amount"]) == (
        Status.failed,
        FailureCode.amount_mismatch,
        str(PAID - 1),
    )


def test_window_is_judged_by_the_block_time(chain, token):
    adapter = EvmAdapter(chain.rail(token.address))
    tx = chain.transfer(token, payer(chain), treasury(chain), PAID)
    mined = block_time(chain, chain.head())
    early = adapter.verify(tx, terms(chain, not_before=mined + timedelta(seconds=1)), chain)
    assert (early.status, early.code) == (Status.pending, FailureCode.not_final)
    assert early.detail.startswith("session_not_open: ")
    chain.mine(2)
    early = adapter.verify(tx, terms(chain, not_before=mined + timedelta(seconds=1)), chain)
    assert (early.status, early.code) == (Status.failed, FailureCode.session_not_open)
    late = adapter.verify(tx, terms(chain, not_after=mined - timedelta(seconds=1)), chain)
    assert (late.status, late.code) == (Status.failed, FailureCode.session_expired)
    ok = adapter.verify(tx, terms(chain, not_before=mined, not_after=mined), chain)
    assert ok.status is Status.verified


def test_review_only_rail_on_a_real_transfer_ends_in_review(chain, token):
    adapter = EvmAdapter(
        chain.rail(token.address, stage=Stage.review_only, rail_id="local_usdt", confirmations=2)
    )
    tx = chain.transfer(token, payer(chain), treasury(chain), PAID)
    # Not to review before the rail's finality: nothing re-checks a proof in review.
    early = run_verify(adapter, tx, terms(chain), chain).verdict
    assert (early.status, early.code) == (Status.pending, FailureCode.not_final)
    assert early.observed["amount"] == str(PAID) and "1/2 confirmations" in early.detail
    chain.mine()
    checked = run_verify(adapter, tx, terms(chain), chain)
    assert (checked.verdict.status, checked.verdict.code) == (
        Status.requires_review,
        FailureCode.review_only_rail,
    )
    assert checked.verdict.observed["amount"] == str(PAID)
    assert checked.source == "local" and checked.rpc_calls == 4
