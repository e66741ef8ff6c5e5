"""A payer who signed two authorizations (two purchases), settled by the facilitator in one
batched transaction, where only one session's proof was ever submitted: a chain_inflows run
matched every log of that payer in the transaction by the one proof, and the second payment
(money in the treasury no proof paid, no receipt credits) dropped out of the drift. A proof
matches one inflow: its payer's transfer of its amount."""

from __future__ import annotations

from tests.helpers import advance
from tests.test_x402_adapter import (
    AUTHORIZATION_USED_TOPIC,
    PAY_TO,
    SEPOLIA_USDC,
    TRANSFER_TOPIC,
    TX,
    _topic,
    live_chain,
    settlement_logs,
)
from tests.test_x402_engine import FIX, SIGNER, open_x402
from tests.test_x402_inflow_matched import x402_engine  # noqa: F401
from verifier.services import proofs, reconciliation
from verifier.worker import loop as worker

SECOND_NONCE = "0x" + "42" * 32
SECOND_VALUE = 25000  # another purchase by the same payer, never proven to us


def _two_authorizations_of_one_payer() -> list[dict]:
    second = [
        {
            "address": SEPOLIA_USDC.lower(),
            "topics": [AUTHORIZATION_USED_TOPIC, _topic(SIGNER), SECOND_NONCE],
            "data": "0x",
            "logIndex": "0x2",
        },
        {
            "address": SEPOLIA_USDC.lower(),
            "topics": [TRANSFER_TOPIC, _topic(SIGNER), _topic(PAY_TO)],
            "data": "0x" + SECOND_VALUE.to_bytes(32, "big").hex(),
            "logIndex": "0x3",
        },
    ]
    return settlement_logs() + second


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
    e = x402_engine
    e.chains.set_transport("base-sepolia", live_chain(used=False))
    ps = open_x402(e)
    header = (FIX / "x402_base_sepolia_payload_v1.b64").read_text().strip()
    view, _ = proofs.submit_proof(e, ps["id"], header, ["alice"])
    assert view["status"] == "verified", view

    e.chains.set_transport("base-sepolia", _chain())
    advance(e, 20)
    assert worker.refresh_finality(e, "w1", 10) == 1
    settled = proofs.get_proof(e, view["id"], ["alice"])["settlement"]
    assert settled["is_final"] and settled["tx_hash"] == TX.lower()

    run = reconciliation.run(
        e,
        reconciliation.RunRequest(
            scope="chain_inflows",
            rail_id="base_usdc",
            incident_id="INC-1",
            operator_reason="daily inflow check",
        ),
        "ops1",
    )
    assert run["status"] == "complete"
    assert run["summary"]["inflows"] == 2
    # The proof paid one authorization (10000); the payer's second transfer (25000) in the
    # same transaction is no proof's payment: it must stay drift.
    drift = [(f["subjects"]["amount"], f["subjects"]["log_index"]) for f in run["findings"]]
    assert run["summary"]["matched"] == 1, (run["summary"], drift)
    assert drift == [(str(SECOND_VALUE), 3)], drift
