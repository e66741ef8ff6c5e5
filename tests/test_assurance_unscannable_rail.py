"""Assurance over a treasury scan's run whose rail's adapter cannot be built today (an
override moving x402 to a network without its EIP-712 domain): the run keeps its warning,
and assurance answers."""

from __future__ import annotations

import pytest

from tests.conftest import CLOCK
from tests.helpers import advance, cassette_engine
from tests.test_reconciliation import req
from verifier.services import reconciliation
from verifier.services.assurance import assurance_report

OVERRIDE = {
    "RAILPROOF_NETWORK_X402": "ethereum",
    "RAILPROOF_ASSET_X402": "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48",
}


@pytest.fixture
def eng(db_url):
    e = cassette_engine(db_url)
    yield e
    e.db.dispose()


def test_assurance_survives_a_run_whose_rail_adapter_cannot_be_built(eng):
    eng.settings.clock = CLOCK.replace(hour=2)
    run = reconciliation.run(eng, req(rail_id="x402"), "ops1")
    assert run["status"] == "incomplete"
    advance(eng, 1)
    # The deployment moves the rail: it still resolves, its adapter cannot be built.
    eng.settings.env = {**eng.settings.env, **OVERRIDE}
    eng.rail("x402")  # resolves
    with pytest.raises(ValueError):
        eng.adapter(eng.rail("x402"))
    report = assurance_report(eng)  # raised ValueError from reconciliation._unscannable
    told = [
        i
        for i in report["issues"]
        if i["category"] == "reconciliation_incomplete"
        and i["subject"] == f"reconciliation run {run['id']}"
    ]
    assert len(told) == 1, report["issues"]
