"""A failed Tron execution (REVERT / OUT_OF_ENERGY), or any failure read from what the
transaction did (amount, asset, recipient, sender, window), read from a block that is not
solidified yet is not the chain's last word: `pending not_final` until the block is final,
then `failed`.

The EVM rails hold the same rule (tests/test_evm_reverted_fork.py): a block not final yet may
be replaced by one where the transaction succeeds, and `failed` is terminal (the worker
re-checks only pending proofs, and a resubmission answers the stored proof), so a payment
re-executed on the canonical chain could otherwise never pay its session.

Recorded data: the real TRC-20 transfer answer (fixtures/tron/usdt_transfer.json) and the real
OUT_OF_ENERGY answer (fixtures/tron/usdt_failed_out_of_energy.json), moved to a fresh block."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from rails.base import Status
from rails.codes import FailureCode
from tests.helpers import SwitchableTransport, advance, cassette_engine
from tests.test_tron_adapter import (
    AMOUNT,
    BLOCK,
    BLOCK_TIME,
    OK_TX,
    RECIPIENT,
    SENDER,
    adapter,
    block_calls,
    calls_of,
    chain_with,
    ok_info,
    terms,
)
from verifier.services import proofs
from verifier.services.sessions import NewSession, open_session
from verifier.worker import loop as worker


def _failed_in_fresh_block(result: str = "OUT_OF_ENERGY") -> dict[str, Any]:
    """The real OUT_OF_ENERGY answer's failure, for the payer's transaction, in block BLOCK."""
    info = ok_info()
    real_failed = calls_of("usdt_failed_out_of_energy.json")[0]["result"]
    info.pop("log")
    info["receipt"] = dict(real_failed["receipt"], result=result)
    info["result"] = "FAILED"
    info["resMessage"] = real_failed["resMessage"]
    info["contractResult"] = real_failed["contractResult"]
    return info


def _calls(info: dict[str, Any], head: int) -> list[dict[str, Any]]:
    return [
        {"method": "gettransactioninfobyid", "params": [OK_TX], "result": info},
        *block_calls(info),
        {
            "method": "getnowblock",
            "params": [],
            "result": {"block_header": {"raw_data": {"number": head}}},
        },
    ]


@pytest.mark.parametrize("result", ["OUT_OF_ENERGY", "REVERT"])
def test_a_failure_in_a_block_not_solidified_is_pending_not_final(result):
    # One confirmation of the 19 the rail requires.
    v = adapter().verify(OK_TX, terms(), chain_with(_failed_in_fresh_block(result), head=BLOCK))
    assert (v.status, v.code) == (Status.pending, FailureCode.not_final), (v.status, v.detail)


def test_a_failure_once_solidified_is_still_failed():
    v = adapter().verify(OK_TX, terms(), chain_with(_failed_in_fresh_block(), head=BLOCK + 18))
    assert (v.status, v.code) == (Status.failed, FailureCode.tx_failed_onchain)


@pytest.fixture
def engine(db_url):
    e = cassette_engine(db_url, clock=BLOCK_TIME - timedelta(minutes=5))
    yield e
    e.db.dispose()


def submitted_one_block_deep(
    engine, info: dict[str, Any]
) -> tuple[SwitchableTransport, str, dict[str, Any]]:
    """A payer-bound tron_usdt session of alice's and its proof, submitted while the node
    answers `info` with its head at the transaction's own block: (node, session id, view)."""
    node = SwitchableTransport(_calls(info, head=BLOCK))
    engine.chains.set_transport("tron-mainnet", node)
    session = open_session(
        engine,
        NewSession(
            owner_id="alice",
            rail_id="tron_usdt",
            access_product_id="pro",
            amount=AMOUNT,
            recipient=RECIPIENT,
            payer=SENDER,
        ),
        actor="svc",
    )
    advance(engine, 6 * 60 + 3)  # 3 s after the block: the node's head is that block
    view, _ = proofs.submit_proof(engine, session["id"], OK_TX, ["alice"])
    return node, session["id"], view


def test_the_payment_re_executed_on_the_canonical_chain_still_reaches_review(engine):
    node, session_id, view = submitted_one_block_deep(engine, _failed_in_fresh_block())
    assert (view["status"], view["failure_code"]) == ("pending", "not_final"), view
    # The fork is resolved: the transaction ran again in the canonical block and paid.
    moved = ok_info()
    moved["blockNumber"] = BLOCK + 1
    moved["blockTimeStamp"] += 3000
    node.load(_calls(moved, head=BLOCK + 40))
    advance(engine, 3600)
    worker.sweep(engine, "w1")
    again, created = proofs.submit_proof(engine, session_id, OK_TX, ["alice"])
    assert not created
    assert (again["status"], again["failure_code"]) == ("requires_review", "review_only_rail")


def test_an_underpayment_in_a_block_not_solidified_fails_once_the_worker_sees_it_final(engine):
    # The real transfer, paying one base unit less than the session asks.
    short = ok_info()
    short["log"][0]["data"] = (AMOUNT - 1).to_bytes(32, "big").hex()
    node, session_id, view = submitted_one_block_deep(engine, short)
    assert (view["status"], view["failure_code"]) == ("pending", "not_final"), view
    assert view["detail"].startswith("amount_mismatch: ")
    # The worker asks again while the block is not solidified: still pending.
    advance(engine, 3600)
    assert worker.sweep(engine, "w1")["reverified"] == 1
    assert proofs.get_proof(engine, view["id"], None)["failure_code"] == "not_final"
    # Solidified: the next re-check fails it for good.
    node.load(_calls(short, head=BLOCK + 18))
    advance(engine, 3600)
    assert worker.sweep(engine, "w1")["reverified"] == 1
    assert proofs.get_proof(engine, view["id"], None)["status"] == "failed"
    again, created = proofs.submit_proof(engine, session_id, OK_TX, ["alice"])
    assert not created
    assert (again["status"], again["failure_code"]) == ("failed", "amount_mismatch"), again
