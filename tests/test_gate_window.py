"""The apply gate reads a payment's time as its rail does. A verdict the rail gave inside the
session's window must not be blocked for good by a stricter reading at apply time (paid,
verified, never creditable), and a transfer outside it is still blocked whatever the verdict
said: a rail with a generated reference allows the chain's clock skew before the session
opened, and an x402 payment's time is its submission, its settlement allowed the rail's
margin before the session opened and any time after it closed.

The x402 payment is the recorded Base Sepolia payload on a node of the test's own."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from rails.errors import RpcUnavailable
from rails.x402 import SETTLEMENT_CLOCK_MARGIN_S
from tests.conftest import make_settings
from tests.helpers import advance
from tests.test_transfer_identity import HEADER
from tests.test_x402_adapter import live_chain, settlement_logs
from tests.test_x402_engine import PAY_TO, SIGNER
from verifier.core.engine import Engine
from verifier.core.timeutil import utc
from verifier.services import gate, proofs
from verifier.services.sessions import NewSession, open_session

CLOCK = datetime(2025, 2, 27, 16, 1, 40, tzinfo=UTC)  # inside the payload's validity


def _bound(engine: Engine, proof_id: str) -> dict[str, Any]:
    [check] = [
        c for c in gate.dry_run_apply(engine, proof_id)["checks"] if c["name"] == "tuple_bound"
    ]
    return check


def _fake_paid_at(engine: Engine, chain, seconds_from_opening: int) -> str:
    """A fake-rail session with a generated reference, paid at that chain time."""
    session = open_session(
        engine,
        NewSession(
            owner_id="alice",
            rail_id="fake_live",
            access_product_id="pro",
            amount=1_500_000,
            recipient="fatreasury",
        ),
        actor="svc",
    )
    opened = datetime.fromisoformat(str(session["created_at"]).replace("Z", "+00:00"))
    tx = "fx" + session["id"][-8:].lower().encode().hex()[:16]
    chain.txs[tx] = {
        "status": "ok",
        "to": "fatreasury",
        "amount": 1_500_000,
        "asset": "fusd",
        "refs": [session["reference"]],
        "finality": "finalized",
        "time": int(utc(opened).timestamp()) + seconds_from_opening,
    }
    view, _ = proofs.submit_proof(engine, session["id"], tx, ["alice"])
    assert view["status"] == "verified", view
    return str(view["id"])


def test_a_generated_reference_paid_within_the_chains_skew_is_bound(engine, chain):
    # The chain's clock ran a few seconds behind ours: the rail allows it for a reference
    # only railproof could have handed out; the gate used to block it for good.
    skew = engine.settings.chain_clock_skew_seconds
    check = _bound(engine, _fake_paid_at(engine, chain, -(skew // 2)))
    assert check["passed"], check["detail"]


def test_a_transfer_older_than_the_skew_is_blocked_whatever_the_verdict(engine, chain):
    # The fake rail does not check the window's start: the gate does.
    skew = engine.settings.chain_clock_skew_seconds
    check = _bound(engine, _fake_paid_at(engine, chain, -(skew + 5)))
    assert not check["passed"]
    assert "transfer time outside the session window" in check["detail"]


@pytest.fixture
def x402_engine(db_url):
    e = Engine(make_settings(db_url, clock=CLOCK, env={"RAILPROOF_NETWORK_X402": "base-sepolia"}))
    e.ensure_rail_states()
    yield e
    e.db.dispose()


def _x402_session(engine: Engine, expires_in: int = 3600) -> str:
    session = open_session(
        engine,
        NewSession(
            owner_id="alice",
            rail_id="x402",
            access_product_id="api",
            amount=10000,
            recipient=PAY_TO,
            payer=SIGNER,
            expires_in_seconds=expires_in,
        ),
        actor="svc",
    )
    return str(session["id"])


def _down(params: list[Any]) -> Any:
    raise RpcUnavailable("connection refused")


def test_x402_handed_over_in_time_and_settled_after_the_session_closed_is_bound(x402_engine):
    # Submitted while the session was open, the node down; the facilitator settled it after
    # the session closed, inside the authorization's validity. The rail verifies it (its
    # time is its submission); the gate compared the settlement block with the window.
    advance(x402_engine, -10)
    session = _x402_session(x402_engine, expires_in=20)  # open for 20 s from CLOCK - 10
    settled_at = int(CLOCK.timestamp()) + 20
    chain = live_chain(used=True, logs=settlement_logs(), mined=settled_at)
    settled = chain.answers["eth_call"]
    chain.answers["eth_call"] = _down
    x402_engine.chains.set_transport("base-sepolia", chain)
    advance(x402_engine, 10)
    view, _ = proofs.submit_proof(x402_engine, session, HEADER, ["alice"])
    assert (view["status"], view["failure_code"]) == ("pending", "rpc_unavailable"), view

    advance(x402_engine, 25)  # the session closed 15 s ago, settled 5 s ago
    chain.answers["eth_call"] = settled
    assert proofs.verify_proof(x402_engine, view["id"]).status.value == "verified"
    check = _bound(x402_engine, view["id"])
    assert check["passed"], check["detail"]


def test_x402_settled_just_before_the_session_opened_is_bound_within_the_margin(x402_engine):
    # An L2 block's timestamp is its slot's, not our clock: the rail accepts a settlement
    # stamped up to its margin before the session opened, and so must the gate.
    session = _x402_session(x402_engine)
    mined = int(CLOCK.timestamp()) - SETTLEMENT_CLOCK_MARGIN_S // 2
    x402_engine.chains.set_transport(
        "base-sepolia", live_chain(used=True, logs=settlement_logs(), mined=mined)
    )
    advance(x402_engine, 3)
    view, _ = proofs.submit_proof(x402_engine, session, HEADER, ["alice"])
    assert (view["status"], view["failure_code"]) == ("verified", None), view
    check = _bound(x402_engine, view["id"])
    assert check["passed"], check["detail"]
