"""transfer_not_sent_back looks up the rails of a proof's network: one unused rail whose network
override the catalog refuses (a typo in RAILPROOF_NETWORK_<RAIL>) must not make every apply of
every rail fail (it is left out, as Engine.sibling_rails does)."""

from __future__ import annotations

import pytest

from tests.test_evm_batched_transfers import PRICE, batch
from tests.test_reconciliation import evm_session, evm_world
from verifier.services import gate, proofs


@pytest.fixture
def evm_bad_other_rail(db_url):
    # A review_only rail nobody uses, pointed at a network it cannot take.
    yield from evm_world(db_url, {"RAILPROOF_NETWORK_TRON_USDT": "ethereum"})


def test_an_unused_misconfigured_rail_does_not_break_applying_another_rails_proof(
    evm_bad_other_rail,
):
    evm = evm_bad_other_rail
    e, payer = evm["engine"], evm["payer"]
    s = evm_session(e, payer, PRICE)
    tx = batch(evm, (payer, PRICE))
    view, _ = proofs.submit_proof(e, s["id"], tx, ["alice"])
    assert view["status"] == "verified", view["detail"]
    # Before transfer_not_sent_back read every rail's network this answered a report; now it
    # raises 422 configuration_error naming tron_usdt for a proof of evm_usdc.
    report = gate.dry_run_apply(e, view["id"])
    [check] = [c for c in report["checks"] if c["name"] == "transfer_not_sent_back"]
    assert check["passed"], check["detail"]
    # The worker's sweep filter (auto_apply) reads the same way.
    assert gate.sent_back_of(e, [view["id"]]) == set()
