"""A payer who signed two authorizations (two purchases), settled by the facilitator in one
batched transaction, where only one session's proof was ever submitted: a chain_inflows run
matched every log of that payer in the transaction by the one proof, and the second payment
(money in the treasury no proof paid, no receipt credits) dropped out of the drift. A proof
matches one inflow: its payer's transfer of its amount."""

from __future__ import annotations

from tests.test_x402_adapter import (
    TRANSFER_TOPIC,
    TX,
    live_chain,
    settlement_logs,
)
from tests.test_x402_engine import SIGNER
from tests.test_x402_inflow_matched import (  # noqa: F401
    authorization_logs,
    settled_and_reconciled,
    x402_engine,
)

SECOND_NONCE = "0x" + "42" * 32
SECOND_VALUE = 25000  # another purchase by the same payer, never proven to us


def _two_authorizations_of_one_payer() -> list[dict]:
    return settlement_logs() + authorization_logs(SIGNER, SECOND_NONCE, SECOND_VALUE, 2)


def _chain():
    logs = _two_authorizations_of_one_payer()
    chain = live_chain(used=True, logs=logs, head=200, finalized=150)
    nonce_logs = chain.answers["eth_getLogs"]

    def answer(params):
        if params[0]["topics"][0] == TRANSFER_TOPIC:  # the treasury's inflow scan
            return [
                {**lg, "transactionHash": TX, "blockNumber": "0x64"}
                for lg in logs
                if lg["topics"][0] == TRANSFER_TOPIC
            ]
        return nonce_logs(params)

    chain.answers["eth_getLogs"] = answer
    return chain


def test_a_second_transfer_of_the_same_payer_in_an_x402_settlement_is_not_matched(
    x402_engine,  # noqa: F811
):
    run = settled_and_reconciled(x402_engine, _chain())
    assert run["summary"]["inflows"] == 2
    # The proof paid one authorization (10000); the payer's second transfer (25000) in the
    # same transaction is no proof's payment: it must stay drift.
    drift = [(f["subjects"]["amount"], f["subjects"]["log_index"]) for f in run["findings"]]
    assert run["summary"]["matched"] == 1, (run["summary"], drift)
    assert drift == [(str(SECOND_VALUE), 3)], drift
