"""One payment, an x402 authorization settled by a facilitator, named by an x402 payload
(Alice's payer-less x402 session) and by its settlement's transaction hash (Bob's base_usdc
session naming that payer, same price and treasury): both sessions are candidates, so
Alice's proof is held for review.

Bob's hash, submitted while Alice's proof held the payment, has another fingerprint than her
payload, so it was stored and refused after the chain answered (`failed
proof_owner_conflict`); once staff released Alice's proof (the payment was Bob's), Bob's
session could never take it: every submission was answered by that stored refusal. A proof of
any rail refused because another proof holds its payment for review naming its session now
waits for the decision (pending), as an x402 proof did; the worker then decides it."""

from __future__ import annotations

import pytest

from tests.helpers import advance
from tests.test_x402_adapter import PAY_TO, TX, live_chain, settlement_logs
from tests.test_x402_engine import FIX, SIGNER, open_x402
from tests.test_x402_inflow_matched import x402_engine  # noqa: F401  (one treasury, two rails)
from verifier.services import proofs, reviews, sessions
from verifier.services.audit import Operator
from verifier.worker import loop as worker


@pytest.fixture
def engine(x402_engine):  # noqa: F811
    # The facilitator's settlement of the fixture's authorization, mined inside both windows.
    x402_engine.chains.set_transport(
        "base-sepolia", live_chain(used=True, logs=settlement_logs(), head=200, finalized=150)
    )
    return x402_engine


def _both(e):
    alice = open_x402(e)  # names no payer (optional on x402)
    bob = sessions.open_session(
        e,
        sessions.NewSession(
            owner_id="bob",
            rail_id="base_usdc",
            access_product_id="api",
            amount=10000,
            recipient=PAY_TO,
            payer=SIGNER,
            reference=None,
        ),
        actor="test",
    )
    header = (FIX / "x402_base_sepolia_payload_v1.b64").read_text().strip()
    held, _ = proofs.submit_proof(e, alice["id"], header, ["alice"])
    assert (held["status"], held["failure_code"]) == ("requires_review", "ambiguous_transfer")
    # Bob submits the settlement's hash while Alice's proof holds the payment for review.
    waiting, _ = proofs.submit_proof(e, bob["id"], TX, ["bob"])
    assert (waiting["status"], waiting["failure_code"]) == ("pending", "ambiguous_transfer")
    return held, waiting


OPS = Operator("ops1", incident_id="INC-5", reason="payer says which session it paid")


def test_released_for_the_other_session_it_takes_the_payment(engine):
    held, waiting = _both(engine)
    reviews.resolve_review(engine, held["id"], reviews.Decision.release, OPS)
    assert proofs.get_proof(engine, held["id"], ["alice"])["status"] == "failed"
    advance(engine, 120)
    worker.sweep(engine, "w1")
    view = proofs.get_proof(engine, waiting["id"], ["bob"])
    # Alice's session is open still and could take it: held for review (never failed).
    assert view["status"] in ("verified", "requires_review"), view
    again, created = proofs.submit_proof(engine, view["session_id"], TX, ["bob"])
    assert (again["id"], created) == (waiting["id"], False)


def test_credited_to_the_first_session_the_other_is_refused(engine):
    held, waiting = _both(engine)
    reviews.resolve_review(engine, held["id"], reviews.Decision.credit, OPS)
    advance(engine, 120)
    worker.sweep(engine, "w1")
    view = proofs.get_proof(engine, waiting["id"], ["bob"])
    assert (view["status"], view["failure_code"]) == ("failed", "proof_owner_conflict"), view
