"""Staff decide a proof held for review (services.reviews): credit it to its own session after
the chain verifies it again, or release the transfer it holds so the session it was made for
can take it. On SQLite and PostgreSQL, over the staff API and the CLI.

The ambiguity is the one tests/test_binding.py builds: the recorded demo payment carries
Alice's reference and Bob's, so it could back either open session.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from solders.keypair import Keypair
from sqlalchemy import select
from typer.testing import CliRunner

from rails.transport.cassette import CassetteTransport
from tests.conftest import OTHER_SERVICE_TOKEN, SERVICE_TOKEN, STAFF_TOKEN, auth
from tests.fake_rail import fake_rail_toml
from tests.helpers import audit_actions, cassette_engine
from tests.test_binding import DEMO, demo_with_extra_key, solana_session, submit
from tests.test_engine_proofs import open_session, pay
from verifier.cli.main import app as cli
from verifier.core.errors import BadInput, Conflict
from verifier.http.api import create_app
from verifier.services import proofs, reviews
from verifier.services.audit import Operator
from verifier.storage.models import Receipt, TransferHold, VerificationAttempt

STAFF = auth(STAFF_TOKEN)
OPS = {"incident_id": "INC-42", "operator_reason": "payer confirmed the order"}


@pytest.fixture
def held(db_url):
    """Alice's proof held for review between her session and Bob's; Bob is refused meanwhile."""
    e = cassette_engine(db_url)
    rival = str(Keypair().pubkey())
    e.chains.set_transport("solana-mainnet", demo_with_extra_key(rival))
    with TestClient(create_app(e), raise_server_exceptions=False) as c:
        alice = solana_session(c, reference=DEMO["reference"], memo=DEMO["memo"]).json()
        bob = solana_session(c, token=OTHER_SERVICE_TOKEN, owner="bob", reference=rival).json()
        r = submit(c, alice["id"], DEMO["signature"])
        assert (r.json()["status"], r.json()["failure_code"]) == (
            "requires_review",
            "ambiguous_transfer",
        ), r.text
        yield e, c, alice, bob, r.json()["id"]
    e.db.dispose()


def review(c, proof_id, choice, **body):
    return c.post(
        f"/v1/admin/proofs/{proof_id}/review",
        headers=STAFF,
        json={"decision": choice, "confirm": True, **OPS, **body},
    )


def entitlements(c, owner, token):
    r = c.get("/v1/entitlements", params={"owner_id": owner}, headers=auth(token))
    return [x["status"] for x in r.json()]


def test_credit_verifies_the_proof_for_its_own_session_and_keeps_the_transfer(held):
    e, c, alice, bob, pid = held
    r = review(c, pid, "credit")
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["failure_code"]) == ("verified", None)
    assert r.json()["settlement"]["is_final"] is True
    # The transfer stays Alice's: Bob still cannot take it.
    r = submit(c, bob["id"], DEMO["signature"], OTHER_SERVICE_TOKEN)
    assert (r.status_code, r.json()["error"]["code"]) == (409, "proof_owner_conflict"), r.text
    # The decision is an attempt asked of the chain again, and an audit row naming who and why.
    attempts = c.get(f"/v1/admin/proofs/{pid}/attempts", headers=STAFF).json()
    assert (attempts[-1]["status"], attempts[-1]["observed"]["decision"]) == ("verified", "credit")
    assert attempts[-1]["rpc_calls"] >= 1 and attempts[-1]["source"] == "cassette"
    (done,) = [a for a in audit_actions(e, pid) if a.action == "proof.review_credited"]
    assert (done.actor, done.incident_id, done.reason) == (
        "ops1",
        OPS["incident_id"],
        OPS["operator_reason"],
    )
    assert set(done.data["candidate_sessions"]) == {alice["id"], bob["id"]}
    # From here on it is any verified proof: the apply gate decides, once.
    for _ in range(2):
        a = c.post(f"/v1/admin/proofs/{pid}/apply", headers=STAFF, json={"confirm": True, **OPS})
        assert a.json()["applied"] is True, a.text
    assert entitlements(c, "alice", SERVICE_TOKEN) == ["active"]
    assert entitlements(c, "bob", OTHER_SERVICE_TOKEN) == ["pending"]
    # And it is decided: a second decision finds nothing to resolve.
    again = review(c, pid, "release")
    assert (again.status_code, again.json()["error"]["code"]) == (409, "proof_not_in_review")


def test_release_frees_the_transfer_for_the_session_it_was_made_for(held):
    e, c, alice, bob, pid = held
    r = review(c, pid, "release")
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["failure_code"]) == ("failed", "ambiguous_transfer")
    with e.db.tx() as s:
        assert s.scalars(select(TransferHold).where(TransferHold.proof_id == pid)).all() == []
    # Bob may submit it now; Alice's session is still open, so it waits for review again ...
    b = submit(c, bob["id"], DEMO["signature"], OTHER_SERVICE_TOKEN)
    assert b.status_code == 201, b.text
    assert (b.json()["status"], b.json()["failure_code"]) == (
        "requires_review",
        "ambiguous_transfer",
    )
    # ... and Bob's proof holds it now: Alice cannot take it back meanwhile.
    r = submit(c, alice["id"], DEMO["signature"])
    assert (r.status_code, r.json()["error"]["code"]) == (409, "proof_owner_conflict"), r.text
    assert c.get(f"/v1/admin/proofs/{pid}", headers=STAFF).json()["status"] == "failed"
    r = review(c, b.json()["id"], "credit")
    assert (r.status_code, r.json()["status"]) == (200, "verified"), r.text
    a = c.post(
        f"/v1/admin/proofs/{b.json()['id']}/apply", headers=STAFF, json={"confirm": True, **OPS}
    )
    assert a.json()["applied"] is True, a.text
    assert entitlements(c, "bob", OTHER_SERVICE_TOKEN) == ["active"]
    assert entitlements(c, "alice", SERVICE_TOKEN) == ["pending"]
    with e.db.tx() as s:
        assert s.scalars(select(Receipt.session_id)).all() == [bob["id"]]
    released = [a for a in audit_actions(e, pid) if a.action == "proof.review_released"]
    assert [(a.actor, a.incident_id) for a in released] == [("ops1", "INC-42")]


def test_refusals_change_nothing(held):
    e, c, alice, bob, pid = held

    def count():
        with e.db.tx() as s:
            q = select(VerificationAttempt.id).where(VerificationAttempt.proof_id == pid)
            return len(s.scalars(q).all())

    before = count()
    cases = [
        ({"confirm": False}, 422, "confirmation_required"),
        ({"incident_id": ""}, 422, "operator_context_required"),
        ({"operator_reason": "  "}, 422, "operator_context_required"),
        ({"decision": "approve"}, 422, "invalid_request"),
    ]
    for body, status, code in cases:
        r = review(c, pid, "credit", **body)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), (body, r.text)
    r = review(c, "no-such-proof", "credit")
    assert (r.status_code, r.json()["error"]["code"]) == (404, "proof_not_found")
    # Only staff decide: a service token is not accepted, Alice's or Bob's.
    for token in (SERVICE_TOKEN, OTHER_SERVICE_TOKEN):
        r = c.post(
            f"/v1/admin/proofs/{pid}/review",
            headers=auth(token),
            json={"decision": "credit", "confirm": True, **OPS},
        )
        assert r.status_code == 401, r.text
    # The chain must verify it now: a node that does not answer leaves the review standing.
    e.chains.set_transport("solana-mainnet", CassetteTransport([], "solana-mainnet"))
    r = review(c, pid, "credit")
    assert (r.status_code, r.json()["error"]["code"]) == (409, "review_not_verified"), r.text
    # A paused rail credits nothing.
    e.chains.set_transport("solana-mainnet", demo_with_extra_key(bob["reference"]))
    p = c.post("/v1/admin/rails/solana_usdc/pause", headers=STAFF, json={"confirm": True, **OPS})
    assert p.status_code == 200, p.text
    r = review(c, pid, "credit")
    assert (r.status_code, r.json()["error"]["code"]) == (409, "rail_paused"), r.text
    assert count() == before
    assert c.get(f"/v1/admin/proofs/{pid}", headers=STAFF).json()["status"] == "requires_review"


def test_a_rails_own_review_is_released_never_credited(engine, chain):
    """A review-only rail's proof waits for review by its rail's rule: staff cannot credit it,
    only release it."""
    sess = open_session(engine, rail="fake_review")
    pay(chain, "fx77777777", sess)
    view, _ = proofs.submit_proof(engine, sess["id"], "fx77777777", ["alice"])
    assert (view["status"], view["failure_code"]) == ("requires_review", "review_only_rail")
    op = Operator("staff-carol", "INC-7", "not ours")
    with pytest.raises(Conflict) as refused:
        reviews.resolve_review(engine, view["id"], reviews.Decision.credit, op)
    assert refused.value.code == "review_not_ambiguous"
    assert proofs.get_proof(engine, view["id"], None)["status"] == "requires_review"
    with pytest.raises(BadInput) as refused:
        reviews.resolve_review(engine, view["id"], reviews.Decision.release, Operator("carol"))
    assert refused.value.field == "incident_id"
    out = reviews.resolve_review(engine, view["id"], reviews.Decision.release, op)
    assert (out["status"], out["failure_code"]) == ("failed", "review_only_rail")


@pytest.mark.postgres
def test_concurrent_decisions_record_exactly_one(held):
    """Staff members deciding at once (credit against release, many times over): one decision
    is recorded, every other is refused, and the proof's holds match the one recorded."""
    e, c, alice, bob, pid = held
    if e.db.engine.dialect.name != "postgresql":
        pytest.skip("the row lock race is PostgreSQL's; SQLite serializes every writer")
    start = threading.Barrier(8)

    def decide(i):
        start.wait()
        return review(c, pid, "credit" if i % 2 else "release")

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(decide, range(8)))
    won = [r for r in answers if r.status_code == 200]
    assert len(won) == 1, [r.text for r in answers]
    assert {r.json()["error"]["code"] for r in answers if r.status_code != 200} == {
        "proof_not_in_review"
    }
    status = won[0].json()["status"]
    with e.db.tx() as s:
        holds = s.scalars(select(TransferHold).where(TransferHold.proof_id == pid)).all()
    assert (status, bool(holds)) in (("verified", True), ("failed", False))


def test_the_cli_needs_one_decision_and_the_operators_context():
    runner = CliRunner()
    r = runner.invoke(cli, ["resolve-rail-proof-review", "p1", "--confirm"])
    assert r.exit_code == 2 and "exactly one of --credit and --release" in r.output
    r = runner.invoke(cli, ["resolve-rail-proof-review", "p1", "--credit", "--release"])
    assert r.exit_code == 2
    r = runner.invoke(cli, ["resolve-rail-proof-review", "p1", "--credit", "--confirm"])
    assert r.exit_code == 2 and "--incident-id" in r.output and "nothing was sent" in r.output


def test_an_x402_payment_is_credited_as_of_when_it_was_submitted_not_when_staff_decide(db_url):
    """An EIP-3009 authorization is valid for about a minute; a review may wait an hour. The
    credit checks its window as of the proof's submission: the authorization that was valid
    then is creditable after it expired."""
    from datetime import timedelta

    from tests.helpers import advance
    from tests.test_x402_engine import FIX, SIGNER, open_x402

    e = cassette_engine(
        db_url,
        clock=datetime(2025, 2, 27, 16, 1, 40, tzinfo=UTC),
        env={"RAILPROOF_NETWORK_X402": "base-sepolia"},
    )
    try:
        mine = open_x402(e, "alice", payer=SIGNER)
        open_x402(e, "bob")  # another owner's payer-less session at the same price
        payload = (FIX / "x402_base_sepolia_payload_v1.b64").read_text().strip()
        view, _ = proofs.submit_proof(e, mine["id"], payload, ["alice"])
        assert (view["status"], view["failure_code"]) == ("requires_review", "ambiguous_transfer")
        advance(e, timedelta(minutes=70).total_seconds())  # the authorization expired long ago
        op = Operator("ops1", "INC-8", "payer confirmed")
        out = reviews.resolve_review(e, view["id"], reviews.Decision.credit, op)
        assert (out["status"], out["failure_code"]) == ("verified", None), out
    finally:
        e.db.dispose()


DEPTH_RAIL = fake_rail_toml("fake_depth", finality='{ mode = "depth", confirmations = 10 }')


def test_a_credited_and_applied_payment_reorged_and_reincluded_stays_verified(db_url):
    """Staff credit Alice's proof and it is applied; its block is reorged and the transfer
    re-included while Bob's session is still open. Verified again, the proof keeps the
    decision (it is not sent back to review under its receipt), and a proof backing a receipt
    is never released: the transfer stays Alice's alone."""
    from tests.conftest import make_settings
    from tests.fake_rail import ScriptedChain, catalog_with_fake
    from tests.helpers import advance
    from verifier.core.engine import Engine
    from verifier.services import gate, sessions
    from verifier.worker import loop as worker

    e = Engine(
        make_settings(db_url, apply_rail_allowlist=["fake_depth"]),
        catalog=catalog_with_fake(DEPTH_RAIL),
    )
    chain = ScriptedChain()
    e.chains.set_transport("fakenet", chain)
    e.ensure_rail_states()
    op = Operator("ops1", "INC-1", "payer confirmed the order")
    try:

        def open_for(owner):
            req = sessions.NewSession(
                owner_id=owner,
                rail_id="fake_depth",
                access_product_id="pro",
                amount=1000,
                recipient="fatreasury",
            )
            return sessions.open_session(e, req, actor="test")

        alice, bob = open_for("alice"), open_for("bob")
        tx = "fx0000000000000001"
        chain.txs[tx] = {
            "status": "ok",
            "to": "fatreasury",
            "amount": 1000,
            "asset": "fusd",
            "time": int(e.now().timestamp()) + 5,
            "finality": "finalized",
            "refs": [alice["reference"], bob["reference"]],
            "slot": 1,
        }
        chain.statuses[tx] = "finalized"
        advance(e, 10)
        view, _ = proofs.submit_proof(e, alice["id"], tx, ["alice"])
        assert view["status"] == "requires_review"
        pid = reviews.resolve_review(e, view["id"], reviews.Decision.credit, op)["id"]
        receipt = gate.apply(e, pid, op, gate.Via.staff)["receipt_id"]
        assert receipt is not None

        chain.statuses[tx] = "reorged"
        advance(e, 3600)
        worker.sweep(e, "w1")
        assert proofs.get_proof(e, pid, None)["failure_code"] == "reorged"
        chain.statuses[tx] = "finalized"  # re-included; Bob's session is still open
        advance(e, 60)
        worker.sweep(e, "w1")
        got = proofs.get_proof(e, pid, None)
        assert (got["status"], got["failure_code"], got["receipt_id"]) == (
            "verified",
            None,
            receipt,
        )
        with pytest.raises(Conflict) as refused:
            proofs.submit_proof(e, bob["id"], tx, ["bob"])
        assert refused.value.code == "proof_owner_conflict"
    finally:
        e.db.dispose()


def test_a_proof_backing_a_receipt_is_never_released_or_credited(held):
    """Whatever brought it back to review (data from before reviews kept their decision), a
    proof under a receipt keeps its transfer: release and credit are refused by name."""
    e, c, alice, bob, pid = held
    assert review(c, pid, "credit").status_code == 200
    applied = c.post(f"/v1/admin/proofs/{pid}/apply", headers=STAFF, json={"confirm": True, **OPS})
    assert applied.status_code == 200 and applied.json()["receipt_id"], applied.text
    with e.db.tx() as s:  # as a proof reviewed before this rule would have been left
        s.execute(
            VerificationAttempt.__table__.insert().values(
                proof_id=pid,
                status="requires_review",
                failure_code="ambiguous_transfer",
                detail="held again",
                observed={"candidate_sessions": [alice["id"], bob["id"]]},
                rpc_calls=0,
                latency_ms=0,
                source="cassette",
                created_at=e.now(),
            )
        )
        from verifier.storage.models import Proof

        s.execute(
            Proof.__table__.update()
            .where(Proof.id == pid)
            .values(status="requires_review", failure_code="ambiguous_transfer")
        )
    for choice in ("release", "credit"):
        r = review(c, pid, choice)
        assert (r.status_code, r.json()["error"]["code"]) == (409, "proof_has_receipt"), r.text
    r = submit(c, bob["id"], DEMO["signature"], OTHER_SERVICE_TOKEN)
    assert (r.status_code, r.json()["error"]["code"]) == (409, "proof_owner_conflict"), r.text


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_pause_waits_for_a_credit_in_flight_and_no_credit_commits_after_it(held, monkeypatch):
    # README: once pause-rail has answered, nothing of that rail commits. A pause asked while
    # a credit's transaction is open must wait for it (the credit read the rail FOR SHARE),
    # never answer first and let the credit commit on the paused rail.
    from verifier.services import rails_admin

    e, c, _alice, _bob, pid = held
    original = proofs.record_resolved_attempt
    pauses: list[threading.Thread] = []
    answered: list[dict] = []
    early: list[bool] = []

    def pause_meanwhile(*a, **k):
        t = threading.Thread(
            target=lambda: answered.append(
                rails_admin.set_paused(e, "solana_usdc", True, Operator("ops2", "INC-9", "why"))
            )
        )
        pauses.append(t)
        t.start()
        t.join(timeout=1.5)  # unlocked, a pause answers in milliseconds
        early.append(bool(answered))
        return original(*a, **k)

    monkeypatch.setattr(proofs, "record_resolved_attempt", pause_meanwhile)
    r = review(c, pid, "credit")
    assert early == [False], "the pause answered while the credit's transaction was open"
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "verified"
    pauses[0].join(timeout=10)
    assert answered and answered[0]["paused"] is True  # it answered once the credit committed
