"""The Tron rail (review-only tron_usdt) over the real gettransactioninfobyid answers, what-ifs
derived from them, address conversion, and the Tron HTTP transport against scripted nodes on
127.0.0.1."""

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
from rails.transport.cassette import Call, CassetteTransport
from rails.transport.failover import RetryPolicy
from rails.transport.tron_http import TronHttpTransport
from rails.tron import (
    TronAdapter,
    account_bytes,
    normalize_tron_address,
    to_base58,
    trc20_transfers_in_info,
)
from registry.catalog import load_catalog
from tests.evm_chain import ScriptedNode, closed_port_url
from verifier.core.checking import run_verify

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "tron"

OK_TX = "b69c51db8f9d974e6a38c76852c8ce1adcb682dbacb25ad8ad4f6876121fe9dc"
FAILED_TX = "e63a324a43aebfe41273db4f7fdfe325b2257b4f5711595a5fc0f8a75cf1b481"
USDT = "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t"
USDT_HEX41 = "41a614f803b6fd780986a42c78ec9c7f77e6ded13c"
RECIPIENT = "TUikLT3nTTjTkXPAuC4xUGj84vfSERCWRn"
RECIPIENT_HEX20 = "cdae4e9a6287333a3f7df432b050af7b17e79e63"
SENDER = "TJoaVSdktrnndU4dmKm33SWMKoXt4LLFbU"
TRON_USDC = "TEkxiTehnzSmSe2XqrBj4w32RUN966rdz8"
AMOUNT = 3_500_000
BLOCK, HEAD = 66861993, 66862023
BLOCK_TIME = datetime(2024, 11, 10, 10, 45, 54, tzinfo=UTC)


def adapter() -> TronAdapter:
    return TronAdapter(load_catalog().resolve("tron_usdt"))


def recorded() -> CassetteTransport:
    return CassetteTransport.from_dir(FIXTURES, "tron-mainnet")


def calls_of(name: str) -> list[dict[str, Any]]:
    return copy.deepcopy(json.loads((FIXTURES / name).read_text())["calls"])


def ok_info() -> dict[str, Any]:
    return calls_of("usdt_transfer.json")[0]["result"]


def block_of(info: dict[str, Any]) -> dict[str, Any]:
    """The canonical block a transaction info answer names: at its height, holding it at its
    time (getblockbynum's shape, as the recorded cassettes carry it)."""
    number, stamp = info["blockNumber"], info["blockTimeStamp"]
    return {
        "blockID": f"{number:016x}" + "00" * 24,
        "block_header": {"raw_data": {"number": number, "timestamp": stamp}},
        "transactions": [{"txID": info["id"]}],
    }


def block_calls(info: Any, block: Any = None) -> list[dict[str, Any]]:
    """The getblockbynum answer for `info`'s block (`block`, or the one holding it)."""
    if not isinstance(info, dict) or not isinstance(info.get("blockNumber"), int):
        return []
    if block is None:
        block = block_of(info)
    return [{"method": "getblockbynum", "params": [info["blockNumber"]], "result": block}]


def chain_with(
    info: Any, head: int = HEAD, tx: str = OK_TX, block: Any = None
) -> CassetteTransport:
    return CassetteTransport(
        [
            Call({"method": "gettransactioninfobyid", "params": [tx], "result": info}),
            *map(Call, block_calls(info, block)),
            Call(
                {
                    "method": "getnowblock",
                    "params": [],
                    "result": {"block_header": {"raw_data": {"number": head}}},
                }
            ),
        ]
    )


def terms(recipient: str = RECIPIENT, amount: int = AMOUNT, **kw: Any) -> Terms:
    return Terms(recipient=recipient, amount=amount, now=BLOCK_TIME + timedelta(days=1), **kw)


# --- the real answers, as raw/SOURCES.md describes them ---------------------------------------


def test_real_usdt_transfer_is_review_only_with_sender_and_evidence():
    checked = run_verify(adapter(), OK_TX, terms(), recorded())
    v = checked.verdict
    assert (v.status, v.code) == (Status.requires_review, FailureCode.review_only_rail)
    o = v.observed
    assert (o["amount"], o["recipient"], o["sender"], o["asset"]) == (
        str(AMOUNT),
        RECIPIENT,
        SENDER,
        USDT,
    )
    assert (o["block_number"], o["block_time"], o["receipt_result"]) == (
        BLOCK,
        BLOCK_TIME.isoformat(),
        "SUCCESS",
    )
    s = v.settlement
    assert (s.block_number, s.confirmations, s.is_final) == (BLOCK, HEAD - BLOCK + 1, True)
    assert v.transfer_keys == (f"tron:tron-mainnet:{OK_TX}:{USDT}:{RECIPIENT}:{SENDER}",)
    assert checked.rpc_calls == 3


def test_contract_result_zero_is_not_a_failure():
    info = ok_info()
    assert info["contractResult"] == ["0" * 64]  # what USDT's transfer() leaves there
    assert adapter().verify(OK_TX, terms(), chain_with(info)).status is Status.verified


def test_real_out_of_energy_is_failed_even_on_a_review_only_rail():
    v = run_verify(adapter(), FAILED_TX, terms(), recorded()).verdict
    assert (v.status, v.code) == (Status.failed, FailureCode.tx_failed_onchain)
    assert "OUT_OF_ENERGY" in v.detail and "Not enough energy" in v.detail
    assert v.observed["receipt_result"] == "OUT_OF_ENERGY" and v.settlement is None


def test_revert_is_tx_failed_onchain():
    info = ok_info()
    info["receipt"]["result"] = "REVERT"
    info.pop("log")
    v = adapter().verify(OK_TX, terms(), chain_with(info))
    assert (v.status, v.code) == (Status.failed, FailureCode.tx_failed_onchain)


def test_top_level_failed_without_receipt_result_is_tx_failed_onchain():
    info = ok_info()
    info["receipt"].pop("result")
    info["result"] = "FAILED"
    assert adapter().verify(OK_TX, terms(), chain_with(info)).code is FailureCode.tx_failed_onchain


# --- each failure code ------------------------------------------------------------------------


def test_unknown_transaction_is_pending_tx_not_found():
    v = adapter().verify(OK_TX, terms(), chain_with({}))
    assert (v.status, v.code) == (Status.pending, FailureCode.tx_not_found)


def test_payment_to_the_sender_is_wrong_recipient():
    v = adapter().verify(OK_TX, terms(recipient=SENDER), chain_with(ok_info()))
    assert (v.status, v.code) == (Status.failed, FailureCode.wrong_recipient)
    assert v.observed["token_recipients"] == [RECIPIENT]


def test_another_token_is_wrong_asset():
    v = adapter().verify(OK_TX, terms(asset=TRON_USDC), chain_with(ok_info()))
    assert (v.status, v.code) == (Status.failed, FailureCode.wrong_asset)


@pytest.mark.parametrize(
    "amount,at_least,code",
    [
        (AMOUNT + 1, False, FailureCode.amount_mismatch),
        (AMOUNT - 1, False, FailureCode.amount_mismatch),
        (AMOUNT - 1, True, None),
    ],
)
def test_amount(amount, at_least, code):
    v = adapter().verify(OK_TX, terms(amount=amount, at_least=at_least), chain_with(ok_info()))
    assert v.code == code


def test_sender_mismatch_only_when_named():
    a, chain = adapter(), chain_with(ok_info())
    assert a.verify(OK_TX, terms(sender=SENDER), chain).status is Status.verified
    v = a.verify(OK_TX, terms(sender=RECIPIENT), chain)
    assert (v.status, v.code) == (Status.failed, FailureCode.sender_mismatch)


def test_time_window_from_block_timestamp_in_ms():
    a, chain = adapter(), chain_with(ok_info())
    v = a.verify(OK_TX, terms(not_after=BLOCK_TIME - timedelta(milliseconds=1)), chain)
    assert v.code is FailureCode.session_expired
    v = a.verify(OK_TX, terms(not_before=BLOCK_TIME + timedelta(milliseconds=1)), chain)
    assert v.code is FailureCode.session_not_open
    assert (
        a.verify(OK_TX, terms(not_before=BLOCK_TIME, not_after=BLOCK_TIME), chain).status
        is Status.verified
    )


@pytest.mark.parametrize("ms", [10**20, 2**63 - 1, 253402300800 * 1000, -1])
def test_a_block_timestamp_no_calendar_holds_is_pending_not_an_exception(ms):
    # datetime.fromtimestamp raised OverflowError/OSError out of run_verify (the engine
    # catches transport errors only): a 500 where a malformed answer is pending.
    info = ok_info()
    info["blockTimeStamp"] = ms
    v = run_verify(adapter(), OK_TX, terms(), chain_with(info)).verdict
    assert (v.status, v.code) == (Status.pending, FailureCode.rpc_unavailable)
    assert "blockTimeStamp" in v.detail


@pytest.mark.parametrize("where", ["blockNumber", "head"])
def test_a_block_number_no_column_holds_is_pending_not_an_exception(where):
    # Any int was taken for the block number and the head: one past what the settlement
    # columns (BIGINT) hold reached the insert, a 500 where a malformed answer is pending.
    info, head = ok_info(), HEAD
    if where == "blockNumber":
        info["blockNumber"] = 2**63
    else:
        head = 2**63
    with pytest.raises(MalformedResponse, match="not a slot or block number"):
        adapter().verify(OK_TX, terms(), chain_with(info, head=head))
    v = run_verify(adapter(), OK_TX, terms(), chain_with(info, head=head)).verdict
    assert (v.status, v.code) == (Status.pending, FailureCode.rpc_unavailable)


OTHER_SENDER_HEX20 = "11" * 20


def with_transfer_from(sender_hex20: str, value: int) -> dict[str, Any]:
    """The real answer with one more USDT Transfer to the same recipient in the transaction,
    from another sender."""
    info = ok_info()
    log = copy.deepcopy(info["log"][0])
    log["topics"][1] = "00" * 12 + sender_hex20
    log["data"] = value.to_bytes(32, "big").hex()
    info["log"].append(log)
    return info


def test_another_senders_transfer_in_the_same_transaction_is_not_the_payers():
    # The payer paid exactly; another sender's unit to the same recipient used to be summed in
    # (`failed amount_mismatch`, for good).
    info = with_transfer_from(OTHER_SENDER_HEX20, 1)
    v = adapter().verify(OK_TX, terms(sender=SENDER), chain_with(info))
    assert v.status is Status.verified, v.detail
    other = to_base58(bytes.fromhex(OTHER_SENDER_HEX20))
    assert (v.observed["amount"], v.observed["senders"]) == (str(AMOUNT), [SENDER])
    assert v.observed["other_senders"] == [{"sender": other, "amount": "1"}]
    assert v.transfer_keys == (f"tron:tron-mainnet:{OK_TX}:{USDT}:{RECIPIENT}:{SENDER}",)
    # Nor does it make up a short payment.
    v = adapter().verify(OK_TX, terms(amount=AMOUNT + 1, sender=SENDER), chain_with(info))
    assert (v.status, v.code) == (Status.failed, FailureCode.amount_mismatch)
    assert trc20_transfers_in_info(info, USDT, RECIPIENT, SENDER) == (AMOUNT, [SENDER])
    assert trc20_transfers_in_info(info, USDT, RECIPIENT) == (AMOUNT + 1, [SENDER, other])


def test_not_final_below_19_confirmations():
    s = adapter().verify(OK_TX, terms(), chain_with(ok_info(), head=BLOCK + 17)).settlement
    assert (s.confirmations, s.is_final, s.finality) == (18, False, "confirmed")
    s = adapter().verify(OK_TX, terms(), chain_with(ok_info(), head=BLOCK + 18)).settlement
    assert (s.confirmations, s.is_final, s.finality) == (19, True, "finalized")


@pytest.mark.parametrize(
    "over,code",
    [
        ({"amount": AMOUNT + 1}, FailureCode.amount_mismatch),
        ({"recipient": SENDER}, FailureCode.wrong_recipient),
        ({"asset": TRON_USDC}, FailureCode.wrong_asset),
        ({"sender": RECIPIENT}, FailureCode.sender_mismatch),
        ({"not_before": BLOCK_TIME + timedelta(milliseconds=1)}, FailureCode.session_not_open),
        ({"not_after": BLOCK_TIME - timedelta(milliseconds=1)}, FailureCode.session_expired),
    ],
    ids=["amount", "recipient", "asset", "sender", "not_open", "expired"],
)
def test_a_failure_read_from_a_block_not_solidified_waits_for_finality(over, code):
    # The same signed transaction, its block dropped, may run again in another block where it
    # pays in full or lands inside the window: a failed proof is terminal (the same id
    # submitted again returns it), so what an unsolidified block shows is no `failed` yet.
    checked = run_verify(adapter(), OK_TX, terms(**over), chain_with(ok_info(), head=BLOCK + 17))
    v = checked.verdict
    assert (v.status, v.code) == (Status.pending, FailureCode.not_final), v.detail
    assert v.detail.startswith(f"{code.value}: ") and "failed once final" in v.detail
    assert "18/19 confirmations" in v.detail and v.observed["finality"] == "confirmed"
    assert checked.rpc_calls == 3  # the head is the read a success makes too
    final = run_verify(adapter(), OK_TX, terms(**over), chain_with(ok_info(), head=BLOCK + 18))
    assert (final.verdict.status, final.verdict.code, final.rpc_calls) == (Status.failed, code, 3)


def test_a_review_needs_no_finality():
    # A reference asked of a TRC-20 transfer, which carries none, is no fact about its block.
    checked = run_verify(
        adapter(), OK_TX, terms(reference="anything"), chain_with(ok_info(), head=BLOCK)
    )
    assert (checked.verdict.status, checked.verdict.code, checked.rpc_calls) == (
        Status.requires_review,
        FailureCode.reference_missing,
        2,
    )


FORKS = {
    # The canonical block at that height does not hold the transaction.
    "another_block": dict(block=dict(block_of(ok_info()), transactions=[{"txID": FAILED_TX}])),
    "an_empty_block": dict(
        block={k: v for k, v in block_of(ok_info()).items() if k != "transactions"}
    ),
    # It holds it, at another time: the fork's block ran it a slot earlier.
    "another_time": dict(stamp=-3000),
}


def forked_chain(info: dict[str, Any], fork: dict[str, Any], head: int = HEAD) -> CassetteTransport:
    block = fork.get("block")
    if "stamp" in fork:
        block = block_of(info)
        info = dict(info, blockTimeStamp=info["blockTimeStamp"] + fork["stamp"])
    return chain_with(info, head=head, block=block)


@pytest.mark.parametrize("fork", FORKS)
@pytest.mark.parametrize(
    "what",
    [
        # The fork's block time judged the window: failed for good before.
        dict(not_after=BLOCK_TIME - timedelta(seconds=2)),
        dict(not_before=BLOCK_TIME - timedelta(seconds=2)),
        # The checks on the fork's logs.
        dict(amount=AMOUNT + 1),
        dict(recipient=SENDER),
        dict(sender=RECIPIENT),
        dict(asset=TRON_USDC),
        # A fork's execution that failed, from a final block.
        dict(failed=True),
        # And one passing everything: verified (to review) on a fork's answer.
        dict(),
    ],
)
def test_a_forks_transaction_info_waits_and_is_never_a_verdict(fork, what):
    # gettransactioninfobyid carries no block hash: a node behind a reorg (one member of a
    # load-balanced API) serves a fork's answer, and every verdict was taken from it.
    what = dict(what)
    info = ok_info()
    if what.pop("failed", False):
        info["receipt"]["result"] = "REVERT"
        info.pop("log")
    v = adapter().verify(OK_TX, terms(**what), forked_chain(info, FORKS[fork]))
    assert (v.status, v.code) == (Status.pending, FailureCode.reorged), v.detail
    assert v.settlement is None and f"block {BLOCK}" in v.detail
    # The same answer from the canonical block is judged as before.
    assert adapter().verify(OK_TX, terms(**what), chain_with(info)).code is not FailureCode.reorged


def test_a_block_the_node_does_not_have_or_another_is_no_verdict():
    # The node answers {} for a block it does not have (a member a block behind the one that
    # served the info), or another block than the one asked: unusable, asked again.
    for block in ({}, dict(block_of(ok_info()), block_header={"raw_data": {"number": BLOCK + 1}})):
        v = run_verify(adapter(), OK_TX, terms(), chain_with(ok_info(), block=block)).verdict
        assert (v.status, v.code) == (Status.pending, FailureCode.rpc_unavailable), block


def test_answer_about_another_transaction_is_pending_not_a_verdict():
    info = ok_info()
    info["id"] = FAILED_TX
    with pytest.raises(MalformedResponse):
        adapter().verify(OK_TX, terms(), chain_with(info))
    v = run_verify(adapter(), OK_TX, terms(), chain_with(info)).verdict
    assert (v.status, v.code) == (Status.pending, FailureCode.rpc_unavailable)


def test_finality_sweep_reads_the_head_once_and_flags_vanished():
    calls = []

    class Counting:
        source = "cassette"

        def call(self, method, params):
            calls.append(method)
            if method == "gettransactioninfobyid" and params == [FAILED_TX]:
                return {}  # gone from the node
            return recorded().call(method, params)

    ok, gone = adapter().finality([OK_TX, FAILED_TX], Counting())
    assert calls.count("getnowblock") == 1 and calls.count("gettransactioninfobyid") == 2
    assert (ok.is_final, ok.reorged, ok.confirmations) == (True, False, HEAD - BLOCK + 1)
    assert (gone.reorged, gone.finality) == (True, "reorged")


# --- addresses and proofs ---------------------------------------------------------------------


def test_hex_and_base58_addresses_convert_both_ways():
    assert normalize_tron_address(USDT_HEX41) == USDT
    assert normalize_tron_address("0x" + USDT_HEX41) == USDT
    assert normalize_tron_address(USDT_HEX41[2:]) == USDT  # the log's 20-byte form
    assert normalize_tron_address(RECIPIENT_HEX20) == RECIPIENT
    assert account_bytes(RECIPIENT).hex() == RECIPIENT_HEX20
    assert to_base58(bytes.fromhex("60e6e92e57d61a9d68b5d95275cc9667d9e6c7c9")) == SENDER
    assert trc20_transfers_in_info(ok_info(), USDT_HEX41, RECIPIENT_HEX20) == (AMOUNT, [SENDER])


@pytest.mark.parametrize(
    "bad",
    [
        RECIPIENT[:-1] + ("X" if RECIPIENT[-1] != "X" else "Y"),  # checksum broken
        "T" + "1" * 33,
        "42" + RECIPIENT_HEX20,  # wrong prefix byte
        RECIPIENT_HEX20[:-2],  # 19 bytes
        "not an address",
        "",
    ],
)
def test_bad_tron_addresses_are_malformed(bad):
    with pytest.raises(ProofMalformed) as e:
        adapter().normalize_address(bad, "recipient")
    assert e.value.field == "recipient"


@pytest.mark.parametrize("raw", [OK_TX[:-1], OK_TX + "0", "0x" + OK_TX, OK_TX[:-1] + "z", ""])
def test_malformed_tx_id_is_proof_malformed(raw):
    with pytest.raises(ProofMalformed):
        adapter().normalize_proof("tron_tx_id", raw)


def test_tx_id_is_lower_cased_and_prepare_names_the_contract():
    a = adapter()
    assert a.normalize_proof("tron_tx_id", OK_TX.upper()) == OK_TX
    with pytest.raises(ProofMalformed):
        a.normalize_proof("evm_tx_hash", OK_TX)
    from rails.base import SessionShape

    req = a.prepare(
        SessionShape(
            id="s",
            recipient=RECIPIENT_HEX20,
            amount=AMOUNT,
            reference=None,
            memo=None,
            expires_at=BLOCK_TIME,
            access_product_id="p",
        )
    )
    assert req.data == {
        "recipient": RECIPIENT,
        "contract": USDT,
        "amount": str(AMOUNT),
        "decimals": 6,
        "network": "tron-mainnet",
    }
    assert a.new_reference() is None


# --- the Tron HTTP transport against scripted nodes on 127.0.0.1 -------------------------------

FAST = RetryPolicy(
    attempts=3,
    per_url_seconds=5,
    total_seconds=10,
    initial_wait=0.01,
    max_wait=0.02,
    jitter=0.01,
    timeout=2,
)


def tron_api(path: str, body: Any):
    answers = {
        "/wallet/gettransactioninfobyid": ok_info() if body == {"value": OK_TX} else {},
        "/wallet/getnowblock": {"block_header": {"raw_data": {"number": HEAD}}},
        "/wallet/getblockbynum": block_of(ok_info()) if body == {"num": BLOCK} else {},
    }
    return 200, json.dumps(answers[path]).encode()


@pytest.fixture
def nodes():
    started = []

    def start(answer=tron_api, script=None):
        node = ScriptedNode(answer, script)
        started.append(node)
        return node

    yield start
    for node in started:
        node.close()


def test_http_transport_posts_the_wallet_api_and_verifies(nodes):
    node = nodes(script=[(500, b"busy"), (429, b"slow down")])
    chain = TronHttpTransport([node.url], "tron-mainnet", FAST)
    v = adapter().verify(OK_TX, terms(), chain)
    assert v.status is Status.verified and v.observed["sender"] == SENDER
    assert node.requests[2:] == [
        ("/wallet/gettransactioninfobyid", {"value": OK_TX}),
        ("/wallet/getblockbynum", {"num": BLOCK}),
        ("/wallet/getnowblock", {}),
    ]
    assert len(node.requests) == 5  # two retried failures first
    assert TronAdapter.live_transport([node.url], "tron-mainnet").source == "live"


def test_http_transport_fails_over_and_reports_all_down(nodes):
    down = nodes(answer=lambda path, body: (502, b"bad gateway"))
    good = nodes()
    chain = TronHttpTransport([closed_port_url(), down.url, good.url], "tron-mainnet", FAST)
    assert chain.call("getnowblock", [])["block_header"]["raw_data"]["number"] == HEAD
    assert len(down.requests) == FAST.attempts

    dead = TronHttpTransport([closed_port_url(), down.url], "tron-mainnet", FAST)
    with pytest.raises(RpcUnavailable):
        dead.call("getnowblock", [])
    v = run_verify(adapter(), OK_TX, terms(), dead).verdict
    assert (v.status, v.code) == (Status.pending, FailureCode.rpc_unavailable)


def test_http_transport_error_object_and_garbage(nodes):
    erroring = nodes(
        answer=lambda path, body: (200, b'{"Error": "class java.lang.NullPointerException"}')
    )
    with pytest.raises(RpcErrorResponse):
        TronHttpTransport([erroring.url], "tron-mainnet", FAST).call("getnowblock", [])
    assert len(erroring.requests) == 1
    garbage = nodes(answer=lambda path, body: (200, b"<html>"))
    with pytest.raises(MalformedResponse):
        TronHttpTransport([garbage.url], "tron-mainnet", FAST).call("getnowblock", [])
