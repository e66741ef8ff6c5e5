"""x402: a settlement older than its session never pays it, however it is found.

The rail refuses a settlement mined before the session opened (`session_not_open`) when the
verification sees it. A proof verified while the node's `authorizationState` still read
"unused" (its state a block behind) has no settlement and no chain time; the worker's
finality sweep finds the settlement later. Its evidence keeps the settling block's time, and
the apply gate's window check reads it (`tuple_bound`: "settled before the session opened");
a proof of a rail paid at submission whose settlement time is unknown does not pass it.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from rails.base import FAILS_ONCE_FINAL, Finding, Settlement, Verdict
from rails.codes import FailureCode
from tests.conftest import make_settings
from tests.helpers import advance
from tests.test_x402_adapter import VALID_AFTER, VALID_BEFORE, live_chain, settlement_logs
from tests.test_x402_engine import FIX, open_x402, x402_engine  # noqa: F401  (fixture)
from verifier.core.checking import decide_quorum
from verifier.core.engine import Engine
from verifier.services import gate, proofs
from verifier.storage.models import Proof, SettlementEvidence
from verifier.storage.webhook_models import OutboxEvent
from verifier.worker import loop as worker

SETTLED_AT = VALID_AFTER + 5  # the facilitator's block: inside the authorization's window
OPENED_AT = VALID_BEFORE - 14  # the session: opened 50 s after the settlement
HEADER = (FIX / "x402_base_sepolia_payload_v1.b64").read_text().strip()
assert SETTLED_AT < OPENED_AT - 30 < OPENED_AT < VALID_BEFORE


def _settled_chain(mined: int = SETTLED_AT):
    # The settlement, deep and final (head 200, finalized 150), mined at `mined`.
    return live_chain(used=True, logs=settlement_logs(), head=200, finalized=150, mined=mined)


def _verified_before_settled(engine, mined: int = SETTLED_AT) -> str:
    """A proof verified on a node whose authorizationState lags the settlement, whose
    settlement the worker's finality sweep then finds, final. Returns the proof's id."""
    advance(engine, OPENED_AT - engine.now().timestamp())
    lagging = _settled_chain(mined)
    lagging.answers["eth_call"] = "0x" + "0" * 64
    engine.chains.set_transport("base-sepolia", lagging)
    ps = open_x402(engine, owner="mallory")
    view, _ = proofs.submit_proof(engine, ps["id"], HEADER, ["mallory"])
    assert (view["status"], view["settlement"]) == ("verified", None), view
    engine.chains.set_transport("base-sepolia", _settled_chain(mined))
    advance(engine, 10)  # past the finality re-check (5 s, with jitter)
    assert worker.refresh_finality(engine, "w1", 10) == 1
    after = proofs.get_proof(engine, view["id"], ["mallory"])
    assert (after["status"], after["settlement"]["is_final"]) == ("verified", True), after
    return view["id"]


def _checks(engine, proof_id: str) -> dict[str, dict]:
    return {c["name"]: c for c in gate.dry_run_apply(engine, proof_id)["checks"]}


def test_a_settlement_before_the_session_is_refused_when_the_node_shows_it(x402_engine):  # noqa: F811
    """The same chain answered at submission → failed session_not_open."""
    advance(x402_engine, OPENED_AT - x402_engine.now().timestamp())
    x402_engine.chains.set_transport("base-sepolia", _settled_chain())
    ps = open_x402(x402_engine, owner="mallory")
    view, _ = proofs.submit_proof(x402_engine, ps["id"], HEADER, ["mallory"])
    assert (view["status"], view["failure_code"]) == ("failed", "session_not_open"), view


def test_a_settlement_before_the_session_in_a_block_not_final_fails_once_final(x402_engine):  # noqa: F811
    """The same settlement while its block is not final yet (5 of 10 confirmations) →
    pending not_final; the worker asks again, and fails it once the block is final."""
    advance(x402_engine, OPENED_AT - x402_engine.now().timestamp())
    unfinal = live_chain(
        used=True, logs=settlement_logs(), head=104, finalized=50, mined=SETTLED_AT
    )
    x402_engine.chains.set_transport("base-sepolia", unfinal)
    ps = open_x402(x402_engine, owner="mallory")
    view, _ = proofs.submit_proof(x402_engine, ps["id"], HEADER, ["mallory"])
    assert (view["status"], view["failure_code"]) == ("pending", "not_final"), view
    assert view["detail"].startswith("session_not_open: ")
    advance(x402_engine, 10)  # past the first re-check (5 s, with jitter)
    assert worker.sweep(x402_engine, "w1")["reverified"] == 1
    assert proofs.get_proof(x402_engine, view["id"], ["mallory"])["failure_code"] == "not_final"
    x402_engine.chains.set_transport("base-sepolia", _settled_chain())
    advance(x402_engine, 15)  # past the second (10 s, with jitter)
    assert worker.sweep(x402_engine, "w1")["reverified"] == 1
    after = proofs.get_proof(x402_engine, view["id"], ["mallory"])
    assert (after["status"], after["failure_code"]) == ("failed", "session_not_open"), after


def _late_claim_first(engine, nodes: int = 1) -> dict:
    """The payer's session opened before the settlement: the payment is theirs. Another
    tenant opens a session after it (its amount is theirs to choose) and submits the public
    authorization first, while its block is not final (on each of `nodes` independent
    nodes): pending, to fail `session_not_open` once final. Then the payer submits it:
    their proof's view."""
    unfinal = [
        live_chain(used=True, logs=settlement_logs(), head=104, finalized=50, mined=SETTLED_AT)
        for _ in range(nodes)
    ]
    if nodes == 1:
        engine.chains.set_transport("base-sepolia", unfinal[0])
    else:
        engine.chains.set_independent_transports("base-sepolia", unfinal)
    assert engine.chains.quorum("base-sepolia") == nodes
    advance(engine, SETTLED_AT - 20 - engine.now().timestamp())
    payer = open_x402(engine, owner="alice", expires_in_seconds=3600)
    advance(engine, OPENED_AT - engine.now().timestamp())
    late = open_x402(engine, owner="mallory")
    hostile, _ = proofs.submit_proof(engine, late["id"], HEADER, ["mallory"])
    assert (hostile["status"], hostile["failure_code"]) == ("pending", "not_final"), hostile
    assert hostile["detail"].startswith("session_not_open: "), hostile["detail"]
    view, _ = proofs.submit_proof(engine, payer["id"], HEADER, ["alice"])
    return view


def test_a_proof_waiting_to_fail_once_final_claims_nothing_for_another_session(x402_engine):  # noqa: F811
    # That proof passed nothing, so it is no claim: the payer's proof verifies, not sent to
    # review as "could back 2 open sessions".
    view = _late_claim_first(x402_engine)
    assert view["status"] == "verified", (view["failure_code"], view["detail"])


@pytest.fixture
def quorum_x402_engine(db_url):
    e = Engine(
        make_settings(
            db_url,
            clock=datetime(2025, 2, 27, 16, 1, 40, tzinfo=UTC),
            env={"RAILPROOF_NETWORK_X402": "base-sepolia"},
            rpc_quorum=2,
        )
    )
    e.ensure_rail_states()
    yield e
    e.db.dispose()


def test_a_proof_waiting_to_fail_once_final_claims_nothing_under_an_rpc_quorum(
    quorum_x402_engine,
):
    # The quorum adds "2 of 2 RPC nodes agree" to the pending proof's detail: what marks it
    # as waiting only to fail is its evidence, which the quorum keeps.
    view = _late_claim_first(quorum_x402_engine, nodes=2)
    assert view["status"] == "verified", (view["failure_code"], view["detail"])


def test_the_quorum_keeps_a_failure_awaiting_finality_only_when_its_nodes_agree_on_it():
    where = Settlement(ref="0x1", finality="confirmed", detail="1/64 confirmations")
    late = Finding(FailureCode.session_not_open, "mined before the session opened")
    short = Finding(FailureCode.amount_mismatch, "paid less")
    failing = late.verdict_once_final(where, {"amount": "10"})
    assert failing.fails_once_final is FailureCode.session_not_open
    agreed = decide_quorum([failing, failing], 2)
    assert agreed.fails_once_final is FailureCode.session_not_open, agreed
    assert not agreed.detail.endswith(FAILS_ONCE_FINAL)  # the quorum's note follows it
    # One node that sees it wait for finality without failing, or fail otherwise, leaves
    # it a claim: no node alone decides that the proof claims nothing.
    waiting = Verdict.wait(FailureCode.not_final, "confirmed, not final yet")
    otherwise = short.verdict_once_final(where, {"amount": "10"})
    for other in (waiting, otherwise):
        for pair in ([failing, other], [other, failing]):
            decided = decide_quorum(pair, 2)
            assert decided.code is FailureCode.not_final, decided
            assert decided.fails_once_final is None, decided
    # Only a pending not_final verdict carries the mark.
    assert (
        late.verdict_once_final(where.model_copy(update={"is_final": True}), {}).fails_once_final
        is None
    )


def test_a_settlement_before_the_session_found_by_the_finality_sweep_is_not_creditable(
    x402_engine,  # noqa: F811
):
    pid = _verified_before_settled(x402_engine)
    checks = _checks(x402_engine, pid)
    assert checks["settlement_final"]["passed"]
    bound = checks["tuple_bound"]
    assert not bound["passed"] and "settled before the session opened" in bound["detail"], bound


def test_a_settlement_after_the_session_opened_found_by_the_sweep_passes_the_window(
    x402_engine,  # noqa: F811
):
    pid = _verified_before_settled(x402_engine, mined=OPENED_AT + 5)
    bound = _checks(x402_engine, pid)["tuple_bound"]
    assert bound["passed"], bound


def test_evidence_without_the_settlement_time_fails_closed_until_the_sweep_fills_it(
    x402_engine,  # noqa: F811
):
    pid = _verified_before_settled(x402_engine, mined=OPENED_AT + 5)
    with x402_engine.db.tx() as s:  # evidence as written before it kept the block's time
        for ev in s.query(SettlementEvidence).filter_by(proof_id=pid):
            ev.block_time = None
    bound = _checks(x402_engine, pid)["tuple_bound"]
    assert not bound["passed"] and "settlement time unknown" in bound["detail"], bound

    # The reorg watch's next answer for the (unchanged, final) settlement records its time.
    with x402_engine.db.tx() as s:
        s.get(Proof, pid).next_check_at = x402_engine.now()
    assert worker.refresh_finality(x402_engine, "w1", 10) == 1
    bound = _checks(x402_engine, pid)["tuple_bound"]
    assert bound["passed"], bound
    # Nothing happened on chain: the tenant hears `settlement.finalized` once.
    with x402_engine.db.tx() as s:
        types = list(
            s.scalars(
                select(OutboxEvent.type)
                .where(OutboxEvent.resource_id == pid)
                .order_by(OutboxEvent.sequence)
            )
        )
    assert types.count("settlement.finalized") == 1, types


def test_a_final_settlement_whose_time_the_node_leaves_out_is_asked_again(
    x402_engine,  # noqa: F811
    monkeypatch,
):
    """Final, but its block's time unknown (a node without timestamps): the gate refuses it
    until the time is known, so the worker keeps asking rather than leaving it final for good
    (the reorg watch asks only while a receipt depends on it)."""
    from rails.x402 import X402Adapter

    answered = X402Adapter.finality

    def untimed(self, *args, **kwargs):
        return [
            st.model_copy(update={"block_time": None}) for st in answered(self, *args, **kwargs)
        ]

    monkeypatch.setattr(X402Adapter, "finality", untimed)
    pid = _verified_before_settled(x402_engine, mined=OPENED_AT + 5)
    bound = _checks(x402_engine, pid)["tuple_bound"]
    assert not bound["passed"] and "settlement time unknown" in bound["detail"], bound
    with x402_engine.db.tx() as s:
        assert s.get(Proof, pid).next_check_at is not None
    monkeypatch.setattr(X402Adapter, "finality", answered)
    advance(x402_engine, 3600)
    assert worker.refresh_finality(x402_engine, "w1", 10) == 1
    assert _checks(x402_engine, pid)["tuple_bound"]["passed"]
