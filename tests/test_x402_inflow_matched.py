"""An x402 payment's settlement is an inflow of the shared Base USDC treasury, and a
`chain_inflows` run reports a transfer into the treasury `matched` when a proof of ours holds
it. The run looked only for base_usdc proofs of the transaction hash, so a verified, settled,
held x402 payment was reported `orphan_unbound`: drift telling staff to refund a paid payer.
It is matched by the x402 proof whose settlement is that transaction, for that proof's payer
only: another payer's transfer in the same settlement stays drift."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.conftest import make_settings
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
from tests.test_x402_engine import FIX, open_x402
from verifier.core.engine import Engine
from verifier.services import proofs, reconciliation
from verifier.worker import loop as worker

# Both rails of the token on one network and one treasury (README: treasuries are shared).
TWO_RAILS = {
    "RAILPROOF_NETWORK_X402": "base-sepolia",
    "RAILPROOF_NETWORK_BASE_USDC": "base-sepolia",
    "RAILPROOF_TREASURY_X402": PAY_TO,
    "RAILPROOF_TREASURY_BASE_USDC": PAY_TO,
}


def two_rail_engine(url: str) -> Engine:
    e = Engine(
        make_settings(url, clock=datetime(2025, 2, 27, 16, 1, 40, tzinfo=UTC), env=TWO_RAILS)
    )
    e.ensure_rail_states()
    return e


@pytest.fixture
def x402_engine(db_url):
    e = two_rail_engine(db_url)
    yield e
    e.db.dispose()


def authorization_logs(payer: str, nonce: str, value: int, first_index: int) -> list[dict]:
    """A facilitator's settlement of one more authorization: its AuthorizationUsed and its
    Transfer to the treasury, at `first_index` and the next."""
    return [
        {
            "address": SEPOLIA_USDC.lower(),
            "topics": [AUTHORIZATION_USED_TOPIC, _topic(payer), nonce],
            "data": "0x",
            "logIndex": hex(first_index),
        },
        {
            "address": SEPOLIA_USDC.lower(),
            "topics": [TRANSFER_TOPIC, _topic(payer), _topic(PAY_TO)],
            "data": "0x" + value.to_bytes(32, "big").hex(),
            "logIndex": hex(first_index + 1),
        },
    ]


def settled_and_reconciled(e: Engine, settled_chain) -> dict:
    """The fixture's payment verified for a payer-less x402 session, settled and final on
    `settled_chain`, then a chain_inflows run over the Base USDC treasury: the run."""
    e.chains.set_transport("base-sepolia", live_chain(used=False))
    ps = open_x402(e)
    header = (FIX / "x402_base_sepolia_payload_v1.b64").read_text().strip()
    view, _ = proofs.submit_proof(e, ps["id"], header, ["alice"])
    assert view["status"] == "verified", view
    e.chains.set_transport("base-sepolia", settled_chain)
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
    return run


OTHER_PAYER = "0x00000000000000000000000000000000000a11CE"


def _settled_chain(other_payer: bool = False):
    chain = live_chain(used=True, logs=settlement_logs(), head=200, finalized=150)
    nonce_logs = chain.answers["eth_getLogs"]

    def logs(params):
        if params[0]["topics"][0] == TRANSFER_TOPIC:  # the treasury's inflow scan
            transfer = {**settlement_logs()[1], "transactionHash": TX, "blockNumber": "0x64"}
            if not other_payer:
                return [transfer]
            topics = [
                TRANSFER_TOPIC,
                "0x" + OTHER_PAYER[2:].lower().rjust(64, "0"),
                *transfer["topics"][2:],
            ]
            return [transfer, {**transfer, "topics": topics, "logIndex": "0x7"}]
        return nonce_logs(params)

    chain.answers["eth_getLogs"] = logs
    return chain


@pytest.mark.parametrize("other_payer", [False, True], ids=["alone", "with_another_payer"])
def test_an_x402_payment_held_and_settled_is_matched_not_orphan_drift(x402_engine, other_payer):
    run = settled_and_reconciled(x402_engine, _settled_chain(other_payer))
    assert run["summary"]["inflows"] == 1 + other_payer
    assert run["summary"]["matched"] == 1
    # The other payer's transfer in the same settlement is nobody's payment yet.
    drift = [(f["kind"], f["subjects"]["sender"].lower()) for f in run["findings"]]
    assert drift == ([("orphan_unbound", OTHER_PAYER.lower())] if other_payer else []), drift
