"""The EVM rail under receipts, logs and blocks real data does not show, made from the real
Ethereum USDC cassette (fixtures/evm/eth_usdc_transfer.json), and discovery across a reorg.

A receipt's logs were never checked against the receipt: a log listed twice was counted
twice, one naming another transaction was this one's transfer. A status JSON-RPC never gives
(neither 0 nor 1) was a revert, and a log the node marks removed was dropped, both ending in a
definitive `failed`. The window's opening was compared to the microsecond against whole-second
block times. And the treasury watch never read a block again, so a payment a reorg moved into
a height it had read was never discovered. Each is a broken answer (read again) or decided as
the apply gate decides now.
"""

from __future__ import annotations

import copy
from datetime import timedelta

from sqlalchemy import select

from rails.base import Status
from rails.codes import FailureCode
from tests.helpers import advance
from tests.test_evm_adapter import (
    USDC_AMOUNT,
    USDC_FROM,
    USDC_TIME,
    USDC_TX,
    adapter,
    calls_of,
    terms,
    transport_from,
)
from tests.test_reconciliation import evm, evm_session  # noqa: F401  (the local chain)
from verifier.core.checking import run_verify
from verifier.services import discovery
from verifier.storage.models import Proof


def _receipt(calls):
    [r] = [c["result"] for c in calls if c["method"] == "eth_getTransactionReceipt"]
    return r


# -- 1. one log listed twice is counted twice ----------------------------------------------


def test_the_same_log_listed_twice_is_not_two_payments():
    # The payer sent half the price in one Transfer; the node's receipt lists that very log
    # twice (same logIndex, same everything). JSON-RPC promises one entry per log: the
    # duplicate is a broken answer (pending rpc_unavailable), or at most counted once, never
    # a second payment that makes up the other half.
    half = USDC_AMOUNT // 2
    calls = calls_of("eth_usdc_transfer.json")
    log = _receipt(calls)["logs"][0]
    log["data"] = "0x" + half.to_bytes(32, "big").hex()
    _receipt(calls)["logs"].append(copy.deepcopy(log))
    v = run_verify(
        adapter("evm_usdc"),
        USDC_TX,
        terms(amount=2 * half, sender=USDC_FROM),
        transport_from(calls),
    ).verdict
    assert (v.status, v.code) == (Status.pending, FailureCode.rpc_unavailable), v.detail
    assert "listed twice" in v.detail


def test_a_log_of_another_transaction_in_the_receipt_is_not_this_transactions_transfer():
    # The receipt asked for carries a log that says it belongs to another transaction (and
    # another block): a receipt about another transaction is a MalformedResponse per
    # rails/evm.py's docstring, but a log about another transaction is counted.
    calls = calls_of("eth_usdc_transfer.json")
    log = _receipt(calls)["logs"][0]
    log["transactionHash"] = "0x" + "ee" * 32
    log["blockHash"] = "0x" + "ef" * 32
    log["blockNumber"] = hex(int(log["blockNumber"], 16) - 1000)
    v = run_verify(
        adapter("evm_usdc"), USDC_TX, terms(sender=USDC_FROM), transport_from(calls)
    ).verdict
    assert (v.status, v.code) == (Status.pending, FailureCode.rpc_unavailable), v.detail


# -- 2. a status JSON-RPC never gives is a definitive failure -------------------------------


def test_a_receipt_status_other_than_0_or_1_is_not_a_definitive_failure():
    # status is 0x0 or 0x1 (EIP-658). "0x2" is not what JSON-RPC promises: per the module's
    # contract such a field is a MalformedResponse (pending rpc_unavailable), never a verdict.
    # It is read as "reverted" and, the block being final, `failed tx_failed_onchain` for good
    # (a wrong `failed` loses the customer: a failed proof is never re-checked).
    calls = calls_of("eth_usdc_transfer.json")
    _receipt(calls)["status"] = "0x2"
    v = run_verify(adapter("evm_usdc"), USDC_TX, terms(), transport_from(calls)).verdict
    assert (v.status, v.code) == (Status.pending, FailureCode.rpc_unavailable), v.detail


def test_a_log_the_node_marks_removed_is_not_a_definitive_wrong_asset():
    # decode_transfer skips a log marked `removed: true` because such a log "belongs to a
    # block that left the canonical chain". Then the receipt is a fork's (or the node is
    # mid-reorg): pending, as a reverted receipt from a non-canonical block is. It is read as
    # "no Transfer of the token at all" and failed for good (`wrong_asset`), though the
    # receipt's block hash is the canonical one and the payer's transfer is in it.
    calls = calls_of("eth_usdc_transfer.json")
    _receipt(calls)["logs"][0]["removed"] = True
    v = run_verify(
        adapter("evm_usdc"), USDC_TX, terms(sender=USDC_FROM), transport_from(calls)
    ).verdict
    assert (v.status, v.code) == (Status.pending, FailureCode.rpc_unavailable), v.detail


# -- 3. the window's opening second ---------------------------------------------------------


def test_a_transfer_in_the_second_the_session_opened_is_not_before_it():
    # Block timestamps are whole seconds (an Ethereum block's is its slot's start, and its
    # builder keeps adding transactions sent after that). A session opened at T+0.4 s paid by
    # a transfer in the block stamped T: the apply gate compares whole seconds
    # (gate._outside_window: "Chain times are whole seconds: compare at that resolution, as
    # the adapters do"), and so do the Solana and x402 rails; the EVM rail compares the
    # session's microseconds and fails the payment for good (session_not_open).
    opened = USDC_TIME + timedelta(milliseconds=400)
    v = adapter("evm_usdc").verify(
        USDC_TX,
        terms(sender=USDC_FROM, not_before=opened, not_after=opened + timedelta(minutes=15)),
        transport_from(calls_of("eth_usdc_transfer.json")),
    )
    assert v.code is not FailureCode.session_not_open, v.detail
    assert v.status is Status.verified


# -- 4. discovery never reads a block again once read, whatever happened to it -----------------


def test_evm_discovery_finds_a_payment_that_a_reorg_moved_into_a_block_it_had_read(evm):  # noqa: F811
    # The watch reads the treasury's Transfer logs up to the node's *latest* block and never
    # reads those blocks again (cursor = last block read). An Ethereum block at the head is
    # not final: a one-block reorg replaces it with its rival, which holds other transactions
    # (here: the payer's payment, pending when the first block was built). The watch had read
    # that height already, so it never sees the payment: the session is not paid by discovery
    # (README: "The worker discovers payments for open sessions whose client never sent a
    # proof"), though the payment is on the canonical chain.
    e, chain, token = evm["engine"], evm["chain"], evm["token"]
    e.settings.discovery = True
    rail = e.rail("evm_usdc")
    ps = evm_session(e, evm["payer"], 5_000_000)
    fork = chain.snapshot()
    chain.mine(1)  # the head block as the node first served it: no payment in it
    first = discovery.watch_evm(e, rail)
    assert first["submitted"] == 0
    chain.revert(fork)  # a one-block reorg: its rival at the same height holds the payment
    tx = chain.transfer(token, evm["payer"], evm["treasury"], 5_000_000)
    chain.mine(3)  # and the chain goes on on top of it
    for _ in range(3):  # later watches (past any idle backoff)
        advance(e, 120)
        discovery.watch_evm(e, rail)
    with e.db.tx() as s:
        refs = list(s.scalars(select(Proof.ref).where(Proof.session_id == ps["id"])))
    assert tx.lower() in refs, "the canonical payment was never discovered"
