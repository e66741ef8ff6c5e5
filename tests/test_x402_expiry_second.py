"""An x402 payment handed over in the second the session expires.

The rail floored the submission time and the expiry to whole seconds and verified the
payment; the apply gate compares the proof's stored submission time with the expiry at the
clock's full precision. A proof submitted up to a second after expiry was `verified`, held its
authorization (the facilitator settles it: the payer's money moves) and was refused by
`tuple_bound` for good. The rail now judges lateness as the gate does.
"""

from __future__ import annotations

import pytest

from tests.helpers import advance
from tests.test_gate_window import CLOCK, _bound, _x402_session, x402_engine  # noqa: F401
from tests.test_transfer_identity import HEADER
from tests.test_x402_adapter import live_chain, settlement_logs
from verifier.services import proofs


def _submit_after(engine, seconds: float) -> tuple[dict, dict]:
    session = _x402_session(engine, expires_in=20)
    mined = int(CLOCK.timestamp()) + 10  # settled inside the window
    engine.chains.set_transport(
        "base-sepolia", live_chain(used=True, logs=settlement_logs(), mined=mined)
    )
    advance(engine, seconds)
    view, _ = proofs.submit_proof(engine, session, HEADER, ["alice"])
    return view, _bound(engine, view["id"])


@pytest.mark.parametrize("late", [20.000001, 20.5, 20.999999])
def test_handed_over_after_expiry_in_its_second_is_refused_by_the_rail(x402_engine, late):  # noqa: F811
    view, bound = _submit_after(x402_engine, late)
    assert (view["status"], view["failure_code"]) == ("failed", "session_expired"), view
    assert not bound["passed"]


@pytest.mark.parametrize("in_time", [19.5, 20.0])
def test_handed_over_by_expiry_is_verified_and_bound(x402_engine, in_time):  # noqa: F811
    view, bound = _submit_after(x402_engine, in_time)
    assert view["status"] == "verified", view
    assert bound["passed"], bound["detail"]


def test_stored_by_expiry_and_checked_a_moment_later_is_in_time(x402_engine, monkeypatch):  # noqa: F811
    # The proof is stored at the expiry (its created_at: what the gate judges); the chain is
    # asked a millisecond later (the insert's commit). The rail judges the hand-over by the
    # stored time too: the verification's own clock was taken for it, and the payment, in
    # time, failed `session_expired` for good.
    session = _x402_session(x402_engine, expires_in=20)
    mined = int(CLOCK.timestamp()) + 10
    x402_engine.chains.set_transport(
        "base-sepolia", live_chain(used=True, logs=settlement_logs(), mined=mined)
    )
    advance(x402_engine, 20.0)
    real = proofs.terms_for

    def a_moment_later(engine, ps, adapter, submitted_at=None):
        advance(engine, 0.001)
        return real(engine, ps, adapter, submitted_at)

    monkeypatch.setattr(proofs, "terms_for", a_moment_later)
    view, _ = proofs.submit_proof(x402_engine, session, HEADER, ["alice"])
    monkeypatch.setattr(proofs, "terms_for", real)
    assert (view["status"], view["failure_code"]) == ("verified", None), view
    assert _bound(x402_engine, view["id"])["passed"]
