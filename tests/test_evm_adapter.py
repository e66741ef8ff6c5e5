"""The EVM rail over recorded chain answers (real and synthetic cassettes), its pure pieces,
and its live transport against scripted HTTP nodes on 127.0.0.1."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from rails.base import Status, Terms
from rails.codes import FailureCode
from rails.errors import MalformedResponse, ProofMalformed, RpcErrorResponse, RpcUnavailable
from rails.evm import (
    EvmAdapter,
    Head,
    decode_transfer,
    is_final_at_depth,
    newest_final_block,
    settlement_for_receipt,
    transfers_in_receipt,
)
from rails.transport.cassette import Call, CassetteTransport
from rails.transport.evm_http import EvmHttpTransport
from rails.transport.failover import RetryPolicy, provider_of, scrub
from registry.catalog import FinalityPolicy, load_catalog
from tests.evm_chain import ScriptedNode, closed_port_url, jsonrpc_answer
from verifier.core.checking import run_verify

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "evm"

USDC_TX = "0x225853c513c75a4276979841a480ad1856bc649c496c16765107cb5d62d1def7"
USDC_TO = "0xc1AF05a7A4F27Cd1b61De823EA31aB5049b38eA8"
USDC_FROM = "0x28C6c06298d514Db089934071355E5743bf21d60"
USDC_AMOUNT = 59691936965
USDC_BLOCK = 21915751
USDC_TIME = datetime.fromtimestamp(0x67BC518F, tz=UTC)  # the log's blockTimestamp

USDT_TX = "0xcd718a69d478340dc28fdf6bf8056374a52dc95841b44083163ced8dfe29310c"
USDT = "0xdAC17F958D2ee523a2206206994597C13D831ec7"
SWAPPER = "0x901c7c311d39e0b26257219765e71e8db3107a81"
POOL = "0xa82f91562e1cef9dec93a4ad328d01ea7827910a"
ROUTER = "0xef1c6e67703c7bd7107eed8303fbe6ec2554bf6b"
OTHER_TOKEN = "0xb7135877cd5d40aa3b086ac6f21c51bbafbbb41f"
USDT_AMOUNT = 4361142255

REVERTED_TX = "0x" + "00" * 31 + "01"
UNKNOWN_TX = "0x" + "00" * 31 + "02"
REORGED_TX = "0x" + "00" * 31 + "03"

NOW = datetime(2025, 3, 1, tzinfo=UTC)


def adapter(rail_id: str) -> EvmAdapter:
    return EvmAdapter(load_catalog().resolve(rail_id))


def cassette(*names: str) -> CassetteTransport:
    return CassetteTransport.from_files([FIXTURES / n for n in names])


def calls_of(name: str) -> list[dict[str, Any]]:
    return copy.deepcopy(json.loads((FIXTURES / name).read_text())["calls"])


def transport_from(calls: list[dict[str, Any]]) -> CassetteTransport:
    return CassetteTransport(Call(c) for c in calls)


def with_result(calls: list[dict[str, Any]], method: str, first_param: Any, result: Any) -> list:
    """The calls with one recorded result replaced (a what-if derived from a real cassette)."""
    for c in calls:
        if c["method"] == method and (c["params"][:1] == [first_param] or first_param is None):
            c["result"] = result
    return calls


def terms(recipient: str = USDC_TO, amount: int = USDC_AMOUNT, **kw: Any) -> Terms:
    return Terms(recipient=recipient, amount=amount, now=NOW, **kw)


class Recorder:
    """Records the calls made through a transport."""

    def __init__(self, inner):
        self.inner, self.source, self.calls = inner, inner.source, []

    def call(self, method, params):
        self.calls.append((method, list(params)))
        return self.inner.call(method, params)


# --- the real cassettes, as raw/SOURCES.md describes them -------------------------------------


def test_real_ethereum_usdc_transfer_verifies_with_sender_and_finality():
    chain = Recorder(cassette("eth_usdc_transfer.json"))
    verdict = adapter("evm_usdc").verify(USDC_TX, terms(), chain)

    assert verdict.status is Status.verified and verdict.code is None
    o = verdict.observed
    assert o["amount"] == str(USDC_AMOUNT)
    assert o["recipient"] == USDC_TO
    assert o["sender"] == USDC_FROM
    assert o["asset"] == "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48"
    assert o["block_number"] == USDC_BLOCK
    assert o["tx_to"].lower() == o["asset"].lower()  # a direct transfer() call
    s = verdict.settlement
    assert (s.ref, s.block_number, s.confirmations) == (
        USDC_TX,
        USDC_BLOCK,
        0x14E68A7 - USDC_BLOCK + 1,
    )
    assert s.is_final and not s.reorged and s.finality == "finalized"
    # The transfer's identity: the transaction's transfer of the token from its sender to the
    # recipient (no EIP-3009 authorization was used in it).
    assert verdict.transfer_keys == (
        f"eip155:1:{USDC_TX}:{o['asset'].lower()}:{USDC_TO.lower()}:{USDC_FROM.lower()}",
    )
    # Exactly the calls the cassette records, with its params.
    assert chain.calls == [
        ("eth_chainId", []),
        ("eth_getTransactionReceipt", [USDC_TX]),
        ("eth_getBlockByNumber", [hex(USDC_BLOCK), False]),
        ("eth_blockNumber", []),
        ("eth_getBlockByNumber", ["finalized", False]),
    ]


def test_usdc_proof_and_recipient_compare_case_insensitively():
    v = adapter("evm_usdc").verify(
        USDC_TX.upper().replace("0X", "0x"),
        terms(recipient=USDC_TO.lower()),
        cassette("eth_usdc_transfer.json"),
    )
    assert v.status is Status.verified and v.observed["recipient"] == USDC_TO


def test_real_usdt_in_a_swap_is_review_only_with_full_evidence():
    checked = run_verify(
        adapter("erc20_usdt"), USDT_TX, terms(SWAPPER, USDT_AMOUNT), cassette("eth_usdt_swap.json")
    )
    v = checked.verdict
    assert v.status is Status.requires_review and v.code is FailureCode.review_only_rail
    o = v.observed
    assert o["amount"] == str(USDT_AMOUNT)
    assert o["recipient"].lower() == SWAPPER
    assert o["sender"].lower() == POOL  # from the pool, not from tx.from
    assert o["asset"] == USDT
    assert o["tx_to"] == ROUTER  # a router, not the token
    assert o["block_number"] == 0x107D7B0
    assert v.settlement is not None and v.settlement.block_number == 0x107D7B0
    assert checked.rpc_calls == 5 and checked.source == "cassette"


def test_usdt_swap_is_not_a_usdt_payment_to_the_pool():
    v = run_verify(
        adapter("erc20_usdt"), USDT_TX, terms(POOL, 1), cassette("eth_usdt_swap.json")
    ).verdict
    assert v.status is Status.failed and v.code is FailureCode.wrong_recipient
    assert [r.lower() for r in v.observed["token_recipients"]] == [SWAPPER]
    assert v.observed["amount"] == "0"


def test_the_other_tokens_transfer_in_the_swap_is_not_usdt():
    receipt = calls_of("eth_usdt_swap.json")[1]["result"]
    assert transfers_in_receipt(receipt, USDT, POOL) == (0, [])
    amount, senders = transfers_in_receipt(receipt, OTHER_TOKEN, POOL)
    assert amount == 50_000 * 10**18 and [s.lower() for s in senders] == [SWAPPER]
    amount, senders = transfers_in_receipt(receipt, USDT, SWAPPER)
    assert amount == USDT_AMOUNT and [s.lower() for s in senders] == [POOL]


def test_usdc_rail_on_the_usdt_swap_is_wrong_asset():
    v = adapter("evm_usdc").verify(
        USDT_TX, terms(SWAPPER, USDT_AMOUNT), cassette("eth_usdt_swap.json")
    )
    assert v.status is Status.failed and v.code is FailureCode.wrong_asset
    assert {t.lower() for t in v.observed["other_tokens"]} == {USDT.lower(), OTHER_TOKEN}


# --- each failure code ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "amount,at_least,expected",
    [
        (USDC_AMOUNT - 1, False, FailureCode.amount_mismatch),  # overpaid is not exact
        (USDC_AMOUNT + 1, False, FailureCode.amount_mismatch),  # underpaid
        (USDC_AMOUNT + 1, True, FailureCode.amount_mismatch),  # underpaid, at-least session
        (USDC_AMOUNT - 1, True, None),  # overpaid, at-least session
    ],
)
def test_amount_is_exact_unless_at_least(amount, at_least, expected):
    v = adapter("evm_usdc").verify(
        USDC_TX, terms(amount=amount, at_least=at_least), cassette("eth_usdc_transfer.json")
    )
    assert v.code == expected
    assert v.status is (Status.verified if expected is None else Status.failed)
    assert v.observed["amount"] == str(USDC_AMOUNT)


def test_sender_is_checked_only_when_the_terms_name_one():
    a, chain = adapter("evm_usdc"), cassette("eth_usdc_transfer.json")
    assert a.verify(USDC_TX, terms(sender=USDC_FROM.lower()), chain).status is Status.verified
    v = a.verify(USDC_TX, terms(sender=SWAPPER), chain)
    assert v.status is Status.failed and v.code is FailureCode.sender_mismatch


def test_time_window_uses_the_block_time():
    a, chain = adapter("evm_usdc"), cassette("eth_usdc_transfer.json")
    inside = a.verify(
        USDC_TX,
        terms(
            not_before=USDC_TIME - timedelta(minutes=5), not_after=USDC_TIME + timedelta(minutes=5)
        ),
        chain,
    )
    assert inside.status is Status.verified
    assert inside.observed["block_time"] == USDC_TIME.isoformat()

    late = a.verify(
        USDC_TX,
        terms(not_before=USDC_TIME - timedelta(hours=2), not_after=USDC_TIME - timedelta(hours=1)),
        chain,
    )
    assert (late.status, late.code) == (Status.failed, FailureCode.session_expired)

    early = a.verify(USDC_TX, terms(not_before=USDC_TIME + timedelta(seconds=1)), chain)
    assert (early.status, early.code) == (Status.failed, FailureCode.session_not_open)


def _usdc_not_final() -> CassetteTransport:
    """The recorded USDC transfer read while its block is the chain's head: one confirmation
    of the 64 the rail requires, above the node's `finalized` block."""
    calls = with_result(
        calls_of("eth_usdc_transfer.json"), "eth_blockNumber", None, hex(USDC_BLOCK)
    )
    finalized = {"number": hex(USDC_BLOCK - 40), "hash": "0x" + "ee" * 32}
    return transport_from(with_result(calls, "eth_getBlockByNumber", "finalized", finalized))


@pytest.mark.parametrize(
    "over,code",
    [
        ({"amount": USDC_AMOUNT + 1}, FailureCode.amount_mismatch),
        ({"recipient": SWAPPER}, FailureCode.wrong_recipient),
        ({"asset": USDT}, FailureCode.wrong_asset),
        ({"sender": SWAPPER}, FailureCode.sender_mismatch),
        ({"not_before": USDC_TIME + timedelta(seconds=1)}, FailureCode.session_not_open),
        ({"not_after": USDC_TIME - timedelta(seconds=1)}, FailureCode.session_expired),
    ],
    ids=["amount", "recipient", "asset", "sender", "not_open", "expired"],
)
def test_a_failure_read_from_a_block_not_final_yet_waits_for_finality(over, code):
    # The same signed transaction, its block dropped, may be re-mined in another block where
    # it pays in full (state-dependent logs, a swap routed to the treasury) or inside the
    # window: what one block not final yet shows is no definitive `failed` (a failed proof is
    # terminal, and the same hash submitted again returns it), as a revert there is not.
    checked = run_verify(adapter("evm_usdc"), USDC_TX, terms(**over), _usdc_not_final())
    v = checked.verdict
    assert (v.status, v.code) == (Status.pending, FailureCode.not_final), v.detail
    assert v.detail.startswith(f"{code.value}: ") and "failed once final" in v.detail
    assert "1/64 confirmations" in v.detail and v.observed["finality"] == "confirmed"
    # The settlement's reads, as a success makes them: five calls either way.
    assert checked.rpc_calls == 5
    # Once the block is final (the recorded head), the same answer fails.
    final = run_verify(
        adapter("evm_usdc"), USDC_TX, terms(**over), cassette("eth_usdc_transfer.json")
    )
    assert (final.verdict.status, final.verdict.code, final.rpc_calls) == (Status.failed, code, 5)


def test_a_review_needs_no_finality():
    # A reference asked of a transfer that carries none is no fact about its block.
    checked = run_verify(
        adapter("evm_usdc"), USDC_TX, terms(reference="anything"), _usdc_not_final()
    )
    assert (checked.verdict.status, checked.verdict.code, checked.rpc_calls) == (
        Status.requires_review,
        FailureCode.reference_missing,
        3,
    )


def test_block_timestamp_is_preferred_over_the_log_timestamp():
    calls = calls_of("eth_usdc_transfer.json")
    block_time = USDC_TIME + timedelta(days=1)
    with_result(
        calls,
        "eth_getBlockByNumber",
        hex(USDC_BLOCK),
        {
            "number": hex(USDC_BLOCK),
            "timestamp": hex(int(block_time.timestamp())),
            "hash": "0x3da09c83e6beee5b50540a0fd330a1b3c5f7528bc8f5be43ef1c7fd6df6851fa",
        },
    )
    v = adapter("evm_usdc").verify(
        USDC_TX, terms(not_after=USDC_TIME + timedelta(hours=1)), transport_from(calls)
    )
    assert v.code is FailureCode.session_expired


def test_no_timestamp_anywhere_with_a_window_is_an_unusable_answer_not_a_verdict():
    # The USDT cassette's block carries no timestamp and its logs none either.
    checked = run_verify(
        adapter("erc20_usdt"),
        USDT_TX,
        terms(SWAPPER, USDT_AMOUNT, not_after=NOW),
        cassette("eth_usdt_swap.json"),
    )
    assert (checked.verdict.status, checked.verdict.code) == (
        Status.pending,
        FailureCode.rpc_unavailable,
    )


def test_reverted_receipt_is_tx_failed_onchain():
    v = adapter("evm_usdc").verify(
        REVERTED_TX, terms(), cassette("synthetic/reverted_status0.json")
    )
    assert (v.status, v.code) == (Status.failed, FailureCode.tx_failed_onchain)
    assert v.observed["status"] == "reverted" and v.settlement is None


def test_null_receipt_is_pending_tx_not_found():
    v = adapter("evm_usdc").verify(UNKNOWN_TX, terms(), cassette("synthetic/receipt_null.json"))
    assert (v.status, v.code) == (Status.pending, FailureCode.tx_not_found)


def test_a_node_on_another_chain_is_pending_rpc_unavailable_not_a_verdict():
    # Used to be `failed chain_mismatch`, final: the node's chain (an RPC URL of another
    # network) is configuration, not a fact about the transaction, and once the URL was fixed a
    # resubmission still answered the failed proof.
    checked = run_verify(
        adapter("base_usdc"), USDC_TX, terms(), cassette("synthetic/base_rpc_answers_chain_1.json")
    )
    v = checked.verdict
    assert (v.status, v.code) == (Status.pending, FailureCode.rpc_unavailable)
    assert "on chain 1; rail base_usdc is on 8453 (base)" in v.detail
    assert checked.rpc_calls == 1  # nothing else is asked of it


def test_a_node_on_another_chain_reorgs_nothing_in_a_finality_sweep():
    # A node of another chain has none of the receipts: it used to settle every swept proof
    # `reorged` (apply blocked, an active entitlement flagged critical).
    sepolia = transport_from(with_result(_receipt_gone(None), "eth_chainId", None, "0xaa36a7"))
    with pytest.raises(MalformedResponse, match="chain 11155111; rail evm_usdc is on 1"):
        adapter("evm_usdc").finality([USDC_TX], sepolia)


def test_receipt_whose_block_left_the_chain_settles_reorged():
    a, chain = adapter("evm_usdc"), cassette("synthetic/reorged_block.json")
    v = a.verify(REORGED_TX, terms(), chain)
    # A fork's receipt is no verdict, not even `verified` with a reorged settlement.
    assert (v.status, v.code, v.settlement) == (Status.pending, FailureCode.reorged, None)
    assert ("0x" + "ab" * 32) in v.detail and ("0x" + "cd" * 32) in v.detail
    [swept] = a.finality([REORGED_TX], chain)
    assert swept.reorged and swept.finality == "reorged" and not swept.is_final
    assert swept.block_hash == "0x" + "ab" * 32 and ("0x" + "cd" * 32) in swept.detail


def _forked(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The real transfer's cassette with another block canonical at its height, stamped a
    little before the transfer's own (a node behind a reorg serving the fork's receipt)."""
    for c in calls:
        if c["method"] == "eth_getBlockByNumber" and c["params"][0] == hex(USDC_BLOCK):
            c["result"]["hash"] = "0x" + "ab" * 32
            c["result"]["timestamp"] = hex(int(USDC_TIME.timestamp()) - 24)
    return calls


@pytest.mark.parametrize(
    "what",
    [
        # The canonical block's time is before the session opened: failed for good before.
        dict(not_before=USDC_TIME - timedelta(seconds=6), not_after=USDC_TIME + timedelta(hours=1)),
        # ... or after it expired.
        dict(not_after=USDC_TIME - timedelta(seconds=12)),
        # The receipt checks: definitive verdicts on what the fork's receipt holds.
        dict(amount=USDC_AMOUNT + 1),
        dict(recipient=SWAPPER),
        dict(sender=SWAPPER),
        dict(asset=USDT),
        # Or a reverted fork transaction.
        dict(reverted=True),
    ],
)
def test_a_forks_receipt_waits_and_is_never_a_verdict(what):
    # A receipt whose blockHash is not the canonical block at its height: the window was
    # judged on the canonical block's timestamp (a block not holding the transaction) and the
    # receipt checks on the fork's logs, each a `failed` never checked again.
    calls = _forked(calls_of("eth_usdc_transfer.json"))
    what = dict(what, sender=what.get("sender", USDC_FROM))
    if what.pop("reverted", False):
        _receipt_of(calls)["status"] = "0x0"
    v = run_verify(adapter("evm_usdc"), USDC_TX, terms(**what), transport_from(calls)).verdict
    assert (v.status, v.code) == (Status.pending, FailureCode.reorged), v.detail
    assert v.settlement is None and "no longer the chain's block" in v.detail


def _receipt_of(calls: list[dict[str, Any]]) -> dict[str, Any]:
    [r] = [c["result"] for c in calls if c["method"] == "eth_getTransactionReceipt"]
    return r


def test_settlement_not_final_until_deep_enough():
    calls = with_result(
        calls_of("eth_usdc_transfer.json"), "eth_blockNumber", None, hex(USDC_BLOCK + 9)
    )
    with_result(
        calls,
        "eth_getBlockByNumber",
        "finalized",
        {"number": hex(USDC_BLOCK - 1), "hash": "0x" + "11" * 32},
    )
    v = adapter("evm_usdc").verify(USDC_TX, terms(), transport_from(calls))
    assert v.status is Status.verified
    s = v.settlement
    assert (s.confirmations, s.is_final, s.finality, s.reorged) == (10, False, "confirmed", False)
    assert "10/64" in s.detail


def test_finalized_tag_makes_a_shallow_block_final():
    calls = with_result(
        calls_of("eth_usdc_transfer.json"), "eth_blockNumber", None, hex(USDC_BLOCK + 9)
    )
    with_result(
        calls,
        "eth_getBlockByNumber",
        "finalized",
        {"number": hex(USDC_BLOCK), "hash": "0x" + "11" * 32},
    )
    s = adapter("evm_usdc").verify(USDC_TX, terms(), transport_from(calls)).settlement
    assert (s.confirmations, s.is_final, s.finality) == (10, True, "finalized")


def test_lying_node_receipt_for_another_hash_is_never_a_verdict():
    calls = calls_of("eth_usdc_transfer.json")
    receipt = calls[1]["result"]
    calls.append({"method": "eth_getTransactionReceipt", "params": [REORGED_TX], "result": receipt})
    chain = transport_from(calls)
    with pytest.raises(MalformedResponse):
        adapter("evm_usdc").verify(REORGED_TX, terms(), chain)
    checked = run_verify(adapter("evm_usdc"), REORGED_TX, terms(), chain)
    assert (checked.verdict.status, checked.verdict.code) == (
        Status.pending,
        FailureCode.rpc_unavailable,
    )


def test_rpc_error_is_pending_rpc_unavailable_through_run_verify():
    calls = [
        {"method": "eth_chainId", "params": [], "result": "0x1"},
        {
            "method": "eth_getTransactionReceipt",
            "params": [USDC_TX],
            "error": {"code": -32000, "message": "header not found"},
        },
    ]
    checked = run_verify(adapter("evm_usdc"), USDC_TX, terms(), transport_from(calls))
    assert (checked.verdict.status, checked.verdict.code) == (
        Status.pending,
        FailureCode.rpc_unavailable,
    )
    assert "header not found" in checked.verdict.detail


def _receipt_with_log(**over: Any) -> list[dict[str, Any]]:
    """The real transfer's cassette, its Transfer log's fields replaced."""
    calls = calls_of("eth_usdc_transfer.json")
    calls[1]["result"]["logs"][0].update(over)
    return calls


def test_a_log_index_that_is_not_a_quantity_is_pending_not_an_exception():
    # decode_transfer parsed logIndex with a bare int(…, 16): the ValueError escaped the
    # engine (POST /v1/proofs answered 500, every worker re-check raised again).
    for bad in ("0xzz", "0x", "0x1_0", 7):
        checked = run_verify(
            adapter("evm_usdc"), USDC_TX, terms(), transport_from(_receipt_with_log(logIndex=bad))
        )
        v = checked.verdict
        assert (v.status, v.code) == (Status.pending, FailureCode.rpc_unavailable), bad
        assert "log.logIndex" in v.detail
    # A receipt is a mined transaction's: each of its logs has its place in the block.
    v = run_verify(
        adapter("evm_usdc"), USDC_TX, terms(), transport_from(_receipt_with_log(logIndex=None))
    ).verdict
    assert (v.status, v.code) == (Status.pending, FailureCode.rpc_unavailable)
    assert "without a logIndex" in v.detail


@pytest.mark.parametrize("drop", [True, False])
def test_a_log_listed_twice_without_its_log_index_is_not_two_payments(drop):
    # The guard against a log listed twice keyed on logIndex and passed over logs without one:
    # the payer's one half-price Transfer listed twice, null or missing logIndex, was summed
    # twice and verified as the full price.
    half = USDC_AMOUNT // 2
    calls = calls_of("eth_usdc_transfer.json")
    log = _receipt_of(calls)["logs"][0]
    log["data"] = "0x" + half.to_bytes(32, "big").hex()
    if drop:
        log.pop("logIndex")
    else:
        log["logIndex"] = None
    _receipt_of(calls)["logs"].append(copy.deepcopy(log))
    v = run_verify(
        adapter("evm_usdc"),
        USDC_TX,
        terms(amount=2 * half, sender=USDC_FROM),
        transport_from(calls),
    ).verdict
    assert (v.status, v.code) == (Status.pending, FailureCode.rpc_unavailable), v.detail


@pytest.mark.parametrize("where", ["block", "log"])
@pytest.mark.parametrize("stamp", [hex(10**20), hex(2**64 - 1), hex(253402300800)])
def test_a_timestamp_no_calendar_holds_is_pending_not_an_exception(where, stamp):
    # datetime.fromtimestamp raised OverflowError/ValueError out of the adapter: a 500.
    calls = calls_of("eth_usdc_transfer.json")
    if where == "block":
        with_result(
            calls,
            "eth_getBlockByNumber",
            hex(USDC_BLOCK),
            {
                "number": hex(USDC_BLOCK),
                "timestamp": stamp,
                "hash": "0x3da09c83e6beee5b50540a0fd330a1b3c5f7528bc8f5be43ef1c7fd6df6851fa",
            },
        )
    else:
        calls[1]["result"]["logs"][0]["blockTimestamp"] = stamp
    v = run_verify(
        adapter("evm_usdc"), USDC_TX, terms(not_after=NOW), transport_from(calls)
    ).verdict
    assert (v.status, v.code) == (Status.pending, FailureCode.rpc_unavailable)
    assert "block.timestamp" in v.detail


@pytest.mark.parametrize("where", ["receipt", "head", "finalized"])
def test_a_block_number_no_column_holds_is_pending_not_an_exception(where):
    # Any hex quantity was taken for a block number: one past what the settlement columns
    # (BIGINT) hold reached the insert (POST /v1/proofs answered 500), or made a count of
    # confirmations none holds. A node's out-of-range number is a malformed answer.
    big = hex(2**63)
    calls = calls_of("eth_usdc_transfer.json")
    if where == "receipt":
        receipt = calls[1]["result"]
        receipt["blockNumber"] = big
        for log in receipt["logs"]:
            log["blockNumber"] = big
        for c in calls:
            if c["params"][:1] == [hex(USDC_BLOCK)]:
                c["params"][0] = big
                c["result"]["number"] = big
    elif where == "head":
        with_result(calls, "eth_blockNumber", None, big)
    else:
        for c in calls:
            if c["params"][:1] == ["finalized"]:
                c["result"]["number"] = big
    with pytest.raises(MalformedResponse, match="not a slot or block number"):
        adapter("evm_usdc").verify(USDC_TX, terms(), transport_from(calls))
    v = run_verify(adapter("evm_usdc"), USDC_TX, terms(), transport_from(calls)).verdict
    assert (v.status, v.code) == (Status.pending, FailureCode.rpc_unavailable)


OTHER_SENDER = "0x" + "11" * 20


def _with_transfer(sender: str, value: int, index: int) -> list[dict[str, Any]]:
    """The real transfer's cassette with one more USDC Transfer to the same recipient in the
    transaction, from `sender` (a batch, an ERC-4337 bundle)."""
    calls = calls_of("eth_usdc_transfer.json")
    logs = calls[1]["result"]["logs"]
    log = copy.deepcopy(logs[0])
    log["topics"] = [log["topics"][0], "0x" + "00" * 12 + sender[2:].lower(), log["topics"][2]]
    log["data"] = "0x" + value.to_bytes(32, "big").hex()
    log["logIndex"] = hex(index)
    logs.append(log)
    return calls


def test_another_senders_transfer_in_the_same_transaction_is_not_the_payers():
    # The payer paid exactly; someone else's 1 unit to the same treasury in the same
    # transaction used to be summed in: `failed amount_mismatch`, for good.
    calls = _with_transfer(OTHER_SENDER, 1, 0xC4)
    v = adapter("evm_usdc").verify(USDC_TX, terms(sender=USDC_FROM), transport_from(calls))
    assert v.status is Status.verified, v.detail
    o = v.observed
    assert (o["amount"], o["sender"], o["senders"]) == (str(USDC_AMOUNT), USDC_FROM, [USDC_FROM])
    # What was left out is in the evidence; what the proof holds is the payer's transfer.
    assert o["other_senders"] == [{"sender": OTHER_SENDER, "amount": "1"}]
    token = o["asset"].lower()
    assert v.transfer_keys == (f"eip155:1:{USDC_TX}:{token}:{USDC_TO.lower()}:{USDC_FROM.lower()}",)


def test_another_sender_never_makes_up_a_short_payment():
    # The payer sent one unit short; another sender's unit in the same transaction is not theirs.
    calls = _with_transfer(OTHER_SENDER, 1, 0xC4)
    v = adapter("evm_usdc").verify(
        USDC_TX, terms(amount=USDC_AMOUNT + 1, sender=USDC_FROM), transport_from(calls)
    )
    assert (v.status, v.code) == (Status.failed, FailureCode.amount_mismatch)
    assert v.observed["amount"] == str(USDC_AMOUNT)


def test_a_transaction_in_which_the_payer_sent_nothing_fails_on_what_arrived():
    # Unchanged: every sender's transfer is then what the checks name, in their order.
    calls = _with_transfer(OTHER_SENDER, 1, 0xC4)
    v = adapter("evm_usdc").verify(USDC_TX, terms(sender=SWAPPER), transport_from(calls))
    assert (v.status, v.code) == (Status.failed, FailureCode.amount_mismatch)  # what arrived
    v = adapter("evm_usdc").verify(
        USDC_TX, terms(amount=USDC_AMOUNT + 1, sender=SWAPPER), transport_from(calls)
    )
    assert (v.status, v.code) == (Status.failed, FailureCode.sender_mismatch)
    assert v.observed["senders"] == [USDC_FROM, OTHER_SENDER]


def test_a_session_reference_cannot_be_proven_on_evm_and_goes_to_review():
    v = adapter("evm_usdc").verify(
        USDC_TX, terms(reference="R-1"), cassette("eth_usdc_transfer.json")
    )
    assert (v.status, v.code) == (Status.requires_review, FailureCode.reference_missing)


@pytest.mark.parametrize(
    "raw",
    [
        USDC_TX[2:],  # no 0x
        USDC_TX[:-1],  # 63 hex digits
        USDC_TX + "0",  # 65
        USDC_TX[:-1] + "g",  # not hex
        " " + USDC_TX,  # whitespace
        "",
    ],
)
def test_malformed_tx_hash_is_proof_malformed(raw):
    with pytest.raises(ProofMalformed) as e:
        adapter("evm_usdc").normalize_proof("evm_tx_hash", raw)
    assert e.value.field == "proof"


def test_normalize_proof_lower_cases_and_checks_the_type():
    a = adapter("base_usdc")
    assert a.normalize_proof("evm_tx_hash", "0x" + USDC_TX[2:].upper()) == USDC_TX
    with pytest.raises(ProofMalformed) as e:
        a.normalize_proof("tron_tx_id", USDC_TX)
    assert e.value.field == "proof_type"


def test_normalize_address_checksums_and_rejects_bad_checksums():
    a = adapter("evm_usdc")
    assert a.normalize_address(USDC_TO.lower()) == USDC_TO
    assert a.normalize_address(USDC_TO.upper().replace("0X", "0x")) == USDC_TO
    i = max(k for k, ch in enumerate(USDC_TO) if ch.isalpha() and k > 1)
    bad_checksum = USDC_TO[:i] + USDC_TO[i].swapcase() + USDC_TO[i + 1 :]
    for bad in (bad_checksum, USDC_TO[:-2], USDC_TO[2:], "0x" + "zz" * 20):
        with pytest.raises(ProofMalformed) as e:
            a.normalize_address(bad, "recipient")
        assert e.value.field == "recipient"


def test_prepare_tells_the_payer_contract_chain_and_amount():
    from rails.base import SessionShape

    req = adapter("base_usdc").prepare(
        SessionShape(
            id="s1",
            recipient=USDC_TO.lower(),
            amount=25_000_000,
            reference=None,
            memo=None,
            expires_at=NOW,
            access_product_id="p",
        )
    )
    assert req.data == {
        "recipient": USDC_TO,
        "contract": "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913",
        "chain_id": 8453,
        "amount": "25000000",
        "decimals": 6,
        "network": "base",
    }
    assert (req.amount, req.recipient, req.network) == ("25000000", USDC_TO, "base")
    assert adapter("base_usdc").new_reference() is None


# --- finality sweeps --------------------------------------------------------------------------


def test_finality_sweep_reads_the_head_once_for_many_proofs():
    chain = Recorder(CassetteTransport.from_dir(FIXTURES, "ethereum"))
    settlements = adapter("evm_usdc").finality([USDC_TX, USDT_TX], chain)
    assert [s.ref for s in settlements] == [USDC_TX, USDT_TX]
    assert all(s.is_final and not s.reorged for s in settlements)
    methods = [m for m, p in chain.calls]
    assert methods.count("eth_blockNumber") == 1
    assert chain.calls.count(("eth_getBlockByNumber", ["finalized", False])) == 1
    assert methods.count("eth_getTransactionReceipt") == 2


def _receipt_gone(tx: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The real transfer's cassette, its receipt gone, with what the node says of the
    transaction (eth_getTransactionByHash)."""
    calls = with_result(
        calls_of("eth_usdc_transfer.json"), "eth_getTransactionReceipt", USDC_TX, None
    )
    return [*calls, {"method": "eth_getTransactionByHash", "params": [USDC_TX], "result": tx}]


def _mined_in(block_hash: str | None) -> dict[str, Any]:
    receipt = next(
        c["result"]
        for c in calls_of("eth_usdc_transfer.json")
        if c["method"] == "eth_getTransactionReceipt"
    )
    return {"hash": USDC_TX, "blockNumber": receipt["blockNumber"], "blockHash": block_hash}


def test_finality_of_a_vanished_receipt_is_reorged():
    # Unknown to the node, back in the mempool, or in a block the node does not hold as
    # canonical: the transfer left the chain.
    for tx in (None, _mined_in(None), _mined_in("0x" + "ab" * 32)):
        [s] = adapter("evm_usdc").finality([USDC_TX], transport_from(_receipt_gone(tx)))
        assert (s.reorged, s.finality, s.is_final) == (True, "reorged", False), tx


def test_a_missing_receipt_of_a_transaction_in_its_canonical_block_decides_nothing():
    # A node with no receipt for a transaction it holds mined in its canonical block (a pool
    # member behind on receipts): its answers disagree, so no reorg and no settlement.
    canonical = next(
        c["result"]["blockHash"]
        for c in calls_of("eth_usdc_transfer.json")
        if c["method"] == "eth_getTransactionReceipt"
    )
    chain = transport_from(_receipt_gone(_mined_in(canonical.upper().replace("0X", "0x"))))
    assert adapter("evm_usdc").finality([USDC_TX], chain) == []


# --- pure pieces ------------------------------------------------------------------------------


def _log(**over):
    log = copy.deepcopy(calls_of("eth_usdc_transfer.json")[1]["result"]["logs"][0])
    log.update(over)
    return log


def test_decode_transfer_reads_only_exact_erc20_transfers():
    t = decode_transfer(_log())
    assert (t.sender, t.recipient, t.value, t.log_index) == (USDC_FROM, USDC_TO, USDC_AMOUNT, 0xC3)
    topics = _log()["topics"]
    assert decode_transfer(_log(removed=True)) is None  # reorged-out log
    assert decode_transfer(_log(topics=topics + ["0x" + "00" * 32])) is None  # ERC-721 shape
    assert decode_transfer(_log(data="0x" + "00" * 64)) is None  # not one 32-byte value
    dirty = topics[:2] + ["0xff" + topics[2][4:]]
    assert decode_transfer(_log(topics=dirty)) is None  # dirty address padding
    approval = ["0x8c5be1e5ebec7d5bd14f71427d1e84f3dd0314c0f7b2291e5b200ac8c7c3b925"] + topics[1:]
    assert decode_transfer(_log(topics=approval)) is None


def test_transfers_to_the_recipient_are_summed():
    receipt = {"logs": [_log(), _log(logIndex="0xc4"), _log(address=OTHER_TOKEN)]}
    assert transfers_in_receipt(receipt, "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48", USDC_TO) == (
        2 * USDC_AMOUNT,
        [USDC_FROM],
    )


def test_only_the_payers_transfers_count_when_the_payer_sent_any():
    other = _log(logIndex="0xc4")
    other["topics"] = [other["topics"][0], "0x" + "00" * 12 + "11" * 20, other["topics"][2]]
    receipt = {"logs": [_log(), other]}
    usdc = "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48"
    both = (2 * USDC_AMOUNT, [USDC_FROM, "0x" + "11" * 20])
    assert transfers_in_receipt(receipt, usdc, USDC_TO) == both
    assert transfers_in_receipt(receipt, usdc, USDC_TO, USDC_FROM.lower()) == (
        USDC_AMOUNT,
        [USDC_FROM],
    )
    assert transfers_in_receipt(receipt, usdc, USDC_TO, SWAPPER) == both  # sent nothing


def test_a_treasury_scan_stops_at_a_log_whose_numbers_are_not_numbers():
    # A malformed logIndex (now a malformed answer, not "no log index") ends the scan with
    # what was read and the error, as a refused range does: never an exception, never "no
    # transfers" for the range.
    from rails.evm_inflows import transfer_logs

    logs = FIXTURES / "inflows" / "treasury_transfer_logs.json"
    doc = json.loads(logs.read_text())
    exp = doc["expect"]
    for c in doc["calls"]:
        if c["method"] == "eth_getLogs" and c["params"][0]["fromBlock"] == "0x6":
            c["result"][0]["logIndex"] = "0xzz"
    chain = transport_from(doc["calls"])
    scan = transfer_logs(chain, exp["token"], exp["treasury"], 0, exp["head"], max_range=8)
    assert scan.error is not None and "log.logIndex" in scan.error
    assert scan.scanned_to == 5 and len(scan.inflows) == 2


@pytest.mark.parametrize(
    "confs,tag,block,head,finalized,final",
    [
        (64, True, 100, 163, None, True),  # 64 confirmations
        (64, True, 100, 162, None, False),  # 63
        (64, True, 100, 110, 100, True),  # at the finalized block
        (64, True, 100, 110, 99, False),  # just above it
        (64, False, 100, 110, 200, False),  # tag not trusted by this policy
        (10, True, 100, 90, None, False),  # node behind the block
    ],
)
def test_depth_policy(confs, tag, block, head, finalized, final):
    policy = FinalityPolicy(mode="depth", confirmations=confs, finalized_tag=tag)
    assert is_final_at_depth(policy, block, head, finalized) is final


@pytest.mark.parametrize(
    "confs,tag,head,finalized,newest",
    [
        (10, True, 104, 50, 95),  # 10 confirmations, above the finalized block
        (10, True, 104, 100, 100),  # the finalized block, above the depth's
        (10, False, 104, 100, 95),  # tag not trusted by this policy
        (10, True, 5, None, None),  # nothing deep enough, no finalized answer
        (None, True, 104, None, None),  # tag only, and the node does not know it
    ],
)
def test_newest_final_block_is_the_highest_the_depth_policy_calls_final(
    confs, tag, head, finalized, newest
):
    policy = FinalityPolicy(mode="depth", confirmations=confs, finalized_tag=tag)
    assert newest_final_block(policy, Head(head, finalized)) == newest
    if newest is not None:
        assert is_final_at_depth(policy, newest, head, finalized)
        assert not is_final_at_depth(policy, newest + 1, head, finalized)


def test_settlement_for_receipt_flags_a_different_canonical_hash():
    policy = FinalityPolicy(mode="depth", confirmations=10, finalized_tag=True)
    ok = settlement_for_receipt("0xr", 100, "0xAA", "0xaa", Head(120, 90), policy)
    assert (ok.reorged, ok.is_final, ok.confirmations) == (False, True, 21)
    gone = settlement_for_receipt("0xr", 100, "0xaa", "0xbb", Head(120, 110), policy)
    assert (gone.reorged, gone.is_final, gone.finality) == (True, False, "reorged")


# --- through the engine -----------------------------------------------------------------------


def test_a_proof_pending_on_a_node_of_another_chain_verifies_once_the_url_is_fixed(db_url):
    # Used to be stored `failed chain_mismatch`: final, so the client's retry after the
    # operator fixed the URL answered the failed proof, and the worker never looked again.
    from tests.helpers import SwitchableTransport, advance, cassette_engine
    from tests.test_e2e_http import EVM_CLOCK
    from verifier.services import proofs
    from verifier.services.sessions import NewSession, open_session
    from verifier.worker import loop as worker

    e = cassette_engine(db_url, clock=EVM_CLOCK)
    try:
        calls = calls_of("eth_usdc_transfer.json")
        chain = SwitchableTransport(
            with_result(copy.deepcopy(calls), "eth_chainId", None, "0xaa36a7")
        )
        e.chains.set_transport("ethereum", chain)
        session = NewSession(
            owner_id="alice",
            rail_id="evm_usdc",
            access_product_id="pro",
            amount=USDC_AMOUNT,
            recipient=USDC_TO,
            payer=USDC_FROM,
        )
        sid = open_session(e, session, actor="svc")["id"]
        first, _ = proofs.submit_proof(e, sid, USDC_TX, ["alice"])
        assert (first["status"], first["failure_code"]) == ("pending", "rpc_unavailable")
        assert "on chain 11155111; rail evm_usdc is on 1 (ethereum)" in first["detail"]
        # The operator sees it: an RPC error of the network, and the proof's detail.
        assert b'railproof_rpc_errors_total{kind="verify",network="ethereum"}' in (
            e.metrics.render()
        )
        chain.load(calls)  # the RPC URL is fixed
        again, _ = proofs.submit_proof(e, sid, USDC_TX, ["alice"])  # the client retries
        assert again["id"] == first["id"]
        advance(e, 900)
        worker.reverify_pending(e, "w1", 10)
        assert proofs.get_proof(e, first["id"], None)["status"] == "verified"
    finally:
        e.db.dispose()


# --- the live transport against scripted nodes on 127.0.0.1 -----------------------------------

FAST = RetryPolicy(
    attempts=3,
    per_url_seconds=5,
    total_seconds=10,
    initial_wait=0.01,
    max_wait=0.02,
    jitter=0.01,
    timeout=2,
)


def usdc_node_table():
    recorded = calls_of("eth_usdc_transfer.json")

    def table(method, params):
        for c in recorded:
            if c["method"] == method and c["params"] == params:
                return c["result"]
        raise KeyError(method)

    return table


@pytest.fixture
def nodes():
    started = []

    def start(answer=None, script=None):
        node = ScriptedNode(answer or jsonrpc_answer(usdc_node_table()), script)
        started.append(node)
        return node

    yield start
    for node in started:
        node.close()


def test_live_transport_verifies_through_web3_http_provider(nodes):
    node = nodes()
    chain = EvmHttpTransport([node.url], "ethereum", FAST)
    assert EvmAdapter.live_transport([node.url], "ethereum").source == "live"
    v = adapter("evm_usdc").verify(USDC_TX, terms(), chain)
    assert v.status is Status.verified and v.observed["amount"] == str(USDC_AMOUNT)
    assert [b["method"] for _, b in node.requests] == [
        "eth_chainId",
        "eth_getTransactionReceipt",
        "eth_getBlockByNumber",
        "eth_blockNumber",
        "eth_getBlockByNumber",
    ]


def test_live_transport_retries_500_and_429(nodes):
    node = nodes(script=[(500, b"oops"), (429, b"slow down")])
    assert EvmHttpTransport([node.url], "ethereum", FAST).call("eth_chainId", []) == "0x1"
    assert len(node.requests) == 3


def test_live_transport_retries_a_timeout(nodes):
    node = nodes(script=[(200, b'{"jsonrpc":"2.0","id":0,"result":"0x2"}', 0.6)])
    policy = RetryPolicy(attempts=3, initial_wait=0.01, max_wait=0.02, jitter=0.0, timeout=0.2)
    assert EvmHttpTransport([node.url], "ethereum", policy).call("eth_chainId", []) == "0x1"
    assert len(node.requests) == 2


def test_live_transport_fails_over_to_the_next_url(nodes):
    always_503 = nodes(answer=lambda path, body: (503, b"unavailable"))
    good = nodes()
    chain = EvmHttpTransport([closed_port_url(), always_503.url, good.url], "ethereum", FAST)
    assert chain.call("eth_blockNumber", []) == "0x14e68a7"
    assert len(always_503.requests) == FAST.attempts  # bounded retries, then the next URL
    assert len(good.requests) == 1


def test_all_urls_down_is_rpc_unavailable_and_pending(nodes):
    always_500 = nodes(answer=lambda path, body: (500, b"down"))
    chain = EvmHttpTransport([closed_port_url(), always_500.url], "ethereum", FAST)
    with pytest.raises(RpcUnavailable) as e:
        chain.call("eth_chainId", [])
    assert provider_of(always_500.url) in str(e.value)
    checked = run_verify(adapter("evm_usdc"), USDC_TX, terms(), chain)
    assert (checked.verdict.status, checked.verdict.code) == (
        Status.pending,
        FailureCode.rpc_unavailable,
    )
    assert checked.source == "live"


@pytest.mark.parametrize("status", [401, 500])
def test_an_rpc_urls_key_never_reaches_a_proofs_detail(nodes, status):
    # Providers put their key in the path or the query; the error becomes the proof's detail,
    # which its tenant reads. Only scheme://host:port names a URL there.
    node = nodes(answer=lambda path, body: (status, b"no"))
    keyed = node.url.rstrip("/") + "/v2/PROVIDERKEY1?api-key=PROVIDERKEY2"
    closed = closed_port_url().rstrip("/") + "/v3/PROVIDERKEY3"
    checked = run_verify(
        adapter("evm_usdc"), USDC_TX, terms(), EvmHttpTransport([closed, keyed], "ethereum", FAST)
    )
    assert checked.verdict.code is FailureCode.rpc_unavailable
    detail = checked.verdict.detail
    assert "PROVIDERKEY" not in detail and "/v2/" not in detail, detail
    assert provider_of(keyed) in detail and provider_of(closed) in detail


def test_scrub_cuts_every_part_of_a_url_that_may_hold_a_key():
    url = "https://user:PASS@rpc.example:8443/v2/KEY?api-key=KEY2"
    quoted = f"HTTPSConnectionPool: Max retries exceeded with url: /v2/KEY?api-key=KEY2 ({url})"
    out = scrub(quoted, [url])
    assert "KEY" not in out and "PASS" not in out and "https://rpc.example:8443" in out, out
    assert scrub("http://h/ answered 500", ["http://h/"]) == "http://h answered 500"


def test_jsonrpc_error_and_garbage_are_not_retried_into_an_answer(nodes):
    erroring = nodes(
        answer=jsonrpc_answer(lambda method, params: (_ for _ in ()).throw(KeyError(method)))
    )
    with pytest.raises(RpcErrorResponse) as e:
        EvmHttpTransport([erroring.url], "ethereum", FAST).call("eth_chainId", [])
    assert e.value.error["code"] == -32601 and len(erroring.requests) == 1

    garbage = nodes(answer=lambda path, body: (200, b"<html>not json</html>"))
    with pytest.raises(MalformedResponse):
        EvmHttpTransport([garbage.url], "ethereum", FAST).call("eth_chainId", [])
    checked = run_verify(
        adapter("evm_usdc"), USDC_TX, terms(), EvmHttpTransport([garbage.url], "ethereum", FAST)
    )
    assert (checked.verdict.status, checked.verdict.code) == (
        Status.pending,
        FailureCode.rpc_unavailable,
    )
