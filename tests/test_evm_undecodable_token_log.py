"""EVM: a Transfer log of the rail's token that no ERC-20 can emit is a broken answer.

A Transfer log emitted (per the node) by the rail's token contract with the Transfer topic
and three topics, but with dirty padding in an address topic or a value that is not one
32-byte word, cannot come from FiatToken (Solidity's ABI encoder): it is a broken or lying
node's answer (a proxy or cache mangling the log), like a log marked removed or listed twice
(tests/test_evm_crafted_receipts.py). The verification is asked again (`pending
rpc_unavailable`), never the definitive `failed wrong_asset` of a receipt without the
payment. The same log from another contract is not the rail's to judge, and is skipped. An
x402 settlement whose Transfer is so mangled is not read as one paying nothing either.
"""

from __future__ import annotations

import pytest

from rails.base import Status
from rails.codes import FailureCode
from tests.test_evm_adapter import (
    USDC_FROM,
    USDC_TX,
    adapter,
    calls_of,
    terms,
    transport_from,
)
from tests.test_x402_adapter import (  # noqa: F401  (fixture)
    LATE,
    V1_JSON,
    live_chain,
    resubmitted,
    sepolia,
    settlement_logs,
)
from verifier.core.checking import run_verify


def _receipt(calls):
    [r] = [c["result"] for c in calls if c["method"] == "eth_getTransactionReceipt"]
    return r


def _dirty_from(log):
    log["topics"][1] = "0x" + "01" * 12 + log["topics"][1][26:]


def _short_data(log):
    log["data"] = log["data"][:-2]  # 31 bytes


def _verify_usdc(mangle, address=None):
    calls = calls_of("eth_usdc_transfer.json")
    log = _receipt(calls)["logs"][0]
    mangle(log)
    if address is not None:
        log["address"] = address
    return run_verify(
        adapter("evm_usdc"), USDC_TX, terms(sender=USDC_FROM), transport_from(calls)
    ).verdict


@pytest.mark.parametrize("mangle", [_dirty_from, _short_data])
def test_a_token_log_no_erc20_can_emit_is_read_again(mangle):
    v = _verify_usdc(mangle)
    assert (v.status, v.code) == (Status.pending, FailureCode.rpc_unavailable), v.detail


@pytest.mark.parametrize("mangle", [_dirty_from, _short_data])
def test_such_a_log_of_another_contract_is_skipped(mangle):
    v = _verify_usdc(mangle, address="0x000000000000000000000000000000000000bEEF")
    assert (v.status, v.code) == (Status.failed, FailureCode.wrong_asset), v.detail


@pytest.mark.parametrize("mangle", [_dirty_from, _short_data])
def test_an_x402_settlement_with_such_a_transfer_is_read_again(sepolia, mangle):  # noqa: F811
    logs = settlement_logs()
    mangle(logs[1])
    chain = live_chain(used=True, logs=logs)
    v = run_verify(sepolia, V1_JSON, resubmitted(LATE), chain).verdict
    assert (v.status, v.code) == (Status.pending, FailureCode.rpc_unavailable), v.detail
