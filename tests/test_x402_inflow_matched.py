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
from tests.test_x402_adapter import PAY_TO, TRANSFER_TOPIC, TX, live_chain, settlement_logs
from tests.test_x402_engine import FIX, open_x402
from verifier.core.engine import Engine
from verifier.services import proofs, reconciliation
from verifier.worker import loop as worker


@pytest.fixture
def x402_engine(db_url):
    e = Engine(
        make_settings(
            db_url,
            clock=datetime(2025, 2, 27, 16, 1, 40, tzinfo=UTC),
            env={
                "RAILPROOF_NETWORK_X402": "base-sepolia",
                "RAILPROOF_NETWORK_BASE_USDC": "base-sepolia",
                # One treasury for both rails of the token (README: treasuries are shared).
                "RAILPROOF_TREASURY_X402": PAY_TO,
                "RAILPROOF_TREASURY_BASE_USDC": PAY_TO,
            },
        )
    )
    e.ensure_rail_states()
    yield e
    e.db.dispose()


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
    e = x402_engine
    e.chains.set_transport("base-sepolia", live_chain(used=False))
    ps = open_x402(e)
    header = (FIX / "x402_base_sepolia_payload_v1.b64").read_text().strip()
    view, _ = proofs.submit_proof(e, ps["id"], header, ["alice"])
    assert view["status"] == "verified", view

    e.chains.set_transport("base-sepolia", _settled_chain(other_payer))
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
    assert run["summary"]["inflows"] == 1 + other_payer
    assert run["summary"]["matched"] == 1
    # The other payer's transfer in the same settlement is nobody's payment yet.
    drift = [(f["kind"], f["subjects"]["sender"].lower()) for f in run["findings"]]
    assert drift == ([("orphan_unbound", OTHER_PAYER.lower())] if other_payer else []), drift
