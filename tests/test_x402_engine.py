"""x402 through the engine: the signed spec payload verifies offline, the authorization can
back one session only (nonce_reused), and a gated rail never applies without its gates."""

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.conftest import make_settings
from verifier.core.engine import Engine
from verifier.core.errors import BadInput, Conflict
from verifier.services import gate, proofs, sessions

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "x402"
PAY_TO = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
SIGNER = "0x857b06519E91e3A54538791bDbb0E22373e36b66"  # who signed the fixture's payload


@pytest.fixture
def x402_engine(db_url):
    e = Engine(
        make_settings(
            db_url,
            clock=datetime(2025, 2, 27, 16, 1, 40, tzinfo=UTC),
            env={"RAILPROOF_NETWORK_X402": "base-sepolia"},
        )
    )
    e.ensure_rail_states()
    yield e
    e.db.dispose()


def open_x402(engine, owner="alice", payer=None, **terms):
    """A session for the fixture's payment (its price and recipient unless `terms` say
    otherwise: amount, recipient, expires_in_seconds)."""
    req = sessions.NewSession(
        **{
            "owner_id": owner,
            "rail_id": "x402",
            "access_product_id": "api",
            "amount": 10000,
            "recipient": PAY_TO,
            "payer": payer,
            "reference": None,
            **terms,
        }
    )
    return sessions.open_session(engine, req, actor="test")


def test_payload_verifies_and_replay_for_another_session_is_nonce_reused(x402_engine):
    s1 = open_x402(x402_engine)
    assert s1["payment_requirements"]["data"]["extra"] == {"name": "USDC", "version": "2"}
    header = (FIX / "x402_base_sepolia_payload_v1.b64").read_text().strip()
    view, created = proofs.submit_proof(x402_engine, s1["id"], header, ["alice"])
    assert created and view["status"] == "verified", view
    assert view["reference"].startswith("84532:0x036cbd53842c5426634e7929541ec2318f3dcf7e:")
    attempts = proofs.list_attempts(x402_engine, view["id"])
    assert attempts[0]["observed"]["sender"].lower() == "0x857b06519e91e3a54538791bdbb0e22373e36b66"
    assert "signature" not in attempts[0]["observed"]
    # The JSON form of the same authorization is the same proof.
    json_form = (FIX / "x402_base_sepolia_payload_v1.json").read_text()
    again, created = proofs.submit_proof(x402_engine, s1["id"], json_form, ["alice"])
    assert not created and again["id"] == view["id"]
    s2 = open_x402(x402_engine)
    with pytest.raises(Conflict) as e:
        proofs.submit_proof(x402_engine, s2["id"], json_form, ["alice"])
    assert e.value.code == "nonce_reused"
    # Verified offline, but no settlement yet and a gated rail: every gate says no.
    rep = gate.dry_run_apply(x402_engine, view["id"])
    blockers = {b["code"] for b in rep["blockers"]}
    assert not rep["would_apply"]
    assert {
        "settlement_final",
        "rail_production_enabled",
        "rail_allowlisted",
        "live_apply_enabled",
        "receipt_creation_allowed",
    } <= blockers


def test_a_session_naming_no_payer_refuses_no_payer_bound_session(x402_engine):
    """On x402 a payer is optional. Sessions naming none never refuse each other (many
    clients paying one price at once), nor do they refuse a session that names a payer, or
    one tenant could keep every payer's sessions at its amounts from being opened; two
    sessions naming one payer are refused, as on every rail that binds it."""
    payer = SIGNER
    for owner in ("bob", "bob", "alice"):
        open_x402(x402_engine, owner)
    assert open_x402(x402_engine, "alice", payer)["payer"].lower() == payer.lower()
    with pytest.raises(BadInput) as e:
        open_x402(x402_engine, "bob", payer)
    assert (e.value.code, e.value.field) == ("payer_in_use", "payer")


def test_a_session_naming_the_payer_does_not_take_a_payment_another_naming_none_could_back(
    x402_engine,
):
    """Alice's session names no payer; Bob's names the payer who signed (a known address).
    The payment could be either's, and the one naming the sender is not preferred: a
    settlement's transaction hash is public, so Bob, submitting it first, would take a payment
    made for Alice. Both candidates go to review."""
    alice = open_x402(x402_engine)  # names no payer
    bob = open_x402(x402_engine, "bob", SIGNER)
    header = (FIX / "x402_base_sepolia_payload_v1.b64").read_text().strip()
    view, _ = proofs.submit_proof(x402_engine, bob["id"], header, ["bob"])
    assert (view["status"], view["failure_code"]) == ("requires_review", "ambiguous_transfer")
    attempts = proofs.list_attempts(x402_engine, view["id"])
    assert attempts[-1]["observed"]["candidate_sessions"] == [bob["id"], alice["id"]]


def test_the_proof_contract_names_the_network_the_deployment_verifies_on(x402_engine):
    """RAILPROOF_NETWORK_X402=base-sepolia: the contract an integrator reads says so, as the
    sessions' payment requirements and verification do, not the catalog's default."""
    from verifier.services import rails_admin

    (contract,) = rails_admin.contracts(x402_engine, "x402")
    s = open_x402(x402_engine)
    assert contract["network"] == s["network"] == "base-sepolia"


def _pending_x402(engine, chain):
    """A payer-bound session and its proof, submitted while the chain cannot be asked."""
    from rails.errors import RpcUnavailable

    def down(params):
        raise RpcUnavailable("connection refused")

    engine.chains.set_transport("base-sepolia", chain)
    chain.answers["eth_call"] = down
    ps = open_x402(engine, payer=SIGNER)
    header = (FIX / "x402_base_sepolia_payload_v1.b64").read_text().strip()
    view, _ = proofs.submit_proof(engine, ps["id"], header, ["alice"])
    assert (view["status"], view["failure_code"]) == ("pending", "rpc_unavailable"), view
    return view


def test_a_pending_payment_settled_in_time_verifies_when_checked_after_its_window(x402_engine):
    """The worker checks a pending proof again after the authorization's minute is over: the
    facilitator settled it in time, so it is paid, not expired."""
    from tests.helpers import advance
    from tests.test_x402_adapter import live_chain, settlement_logs

    chain = live_chain(used=True, logs=settlement_logs())
    settled = chain.answers["eth_call"]
    view = _pending_x402(x402_engine, chain)
    advance(x402_engine, 3600)
    chain.answers["eth_call"] = settled
    verdict = proofs.verify_proof(x402_engine, view["id"])
    assert (verdict.status.value, verdict.code) == ("verified", None), verdict.detail
    stored = proofs.get_proof(x402_engine, view["id"], ["alice"])
    assert stored["status"] == "verified" and stored["settlement"]["block_number"] == 100


def test_a_pending_payment_never_settled_fails_expired_once_its_window_is_over(x402_engine):
    from rails.x402 import EXPIRY_MARGIN_S
    from tests.helpers import advance
    from tests.test_x402_adapter import VALID_BEFORE, live_chain

    chain = live_chain(used=False)
    unused = chain.answers["eth_call"]
    view = _pending_x402(x402_engine, chain)
    chain.answers["eth_call"] = unused
    advance(x402_engine, VALID_BEFORE - x402_engine.now().timestamp())  # at validBefore
    verdict = proofs.verify_proof(x402_engine, view["id"])
    assert (verdict.status.value, verdict.code) == ("pending", "tx_not_found"), verdict.detail
    advance(x402_engine, EXPIRY_MARGIN_S)
    verdict = proofs.verify_proof(x402_engine, view["id"])
    assert (verdict.status.value, verdict.code) == ("failed", "authorization_expired")
    assert proofs.get_proof(x402_engine, view["id"], ["alice"])["status"] == "failed"


def test_a_pending_payment_unused_past_its_window_fails_only_once_that_is_final(x402_engine):
    """The node's latest block is past validBefore with the nonce unused, but its newest
    final block is stamped before the deadline: a reorg may still bring a chain where the
    facilitator's settlement landed in time. The worker asks again, and fails the proof once
    a final block is past the deadline."""
    from tests.helpers import advance
    from tests.test_x402_adapter import LATE, VALID_BEFORE, live_chain
    from verifier.worker import loop as worker

    chain = live_chain(used=False, final_at=VALID_BEFORE - 1)
    unused = chain.answers["eth_call"]
    view = _pending_x402(x402_engine, chain)
    chain.answers["eth_call"] = unused
    advance(x402_engine, LATE - x402_engine.now().timestamp())
    worker.reverify_pending(x402_engine, "w1", 10)
    mid = proofs.get_proof(x402_engine, view["id"], ["alice"])
    assert (mid["status"], mid["failure_code"]) == ("pending", "not_final"), mid

    x402_engine.chains.set_transport("base-sepolia", live_chain(used=False, final_at=VALID_BEFORE))
    advance(x402_engine, 3600)
    worker.reverify_pending(x402_engine, "w1", 10)
    after = proofs.get_proof(x402_engine, view["id"], ["alice"])
    assert (after["status"], after["failure_code"]) == ("failed", "authorization_expired"), after


def test_a_settlement_the_node_does_not_serve_yet_waits_and_then_verifies(x402_engine):
    """The facilitator has just settled the authorization: the node says the nonce is used
    and its AuthorizationUsed log names the transaction, but the receipt read (a load-balanced
    node a block behind) answers null. This used to end `failed nonce_reused` ("used by
    another transfer"), never checked again, and a resubmission answered that failed proof:
    the customer's payment was lost for its session."""
    from tests.test_x402_adapter import live_chain, receipt, settlement_logs

    ps = open_x402(x402_engine, payer=SIGNER)
    chain = live_chain(used=True, logs=settlement_logs())
    chain.answers["eth_getTransactionReceipt"] = None
    x402_engine.chains.set_transport("base-sepolia", chain)
    header = (FIX / "x402_base_sepolia_payload_v1.b64").read_text().strip()
    view, _ = proofs.submit_proof(x402_engine, ps["id"], header, ["alice"])
    assert (view["status"], view["failure_code"]) == ("pending", "rpc_unavailable"), view

    chain.answers["eth_getTransactionReceipt"] = receipt(settlement_logs())  # caught up
    verdict = proofs.verify_proof(x402_engine, view["id"])
    assert (verdict.status.value, verdict.code) == ("verified", None), verdict.detail


def test_a_settled_authorization_cannot_pay_a_session_opened_after_its_window(x402_engine):
    """SECURITY: the window is the submission's, so a settlement seen on chain cannot be
    claimed by a session opened (and a proof submitted) after it closed."""
    from tests.helpers import advance
    from tests.test_x402_adapter import live_chain, settlement_logs

    x402_engine.chains.set_transport("base-sepolia", live_chain(used=True, logs=settlement_logs()))
    advance(x402_engine, 3600)
    ps = open_x402(x402_engine, owner="mallory")
    header = (FIX / "x402_base_sepolia_payload_v1.b64").read_text().strip()
    view, _ = proofs.submit_proof(x402_engine, ps["id"], header, ["mallory"])
    assert (view["status"], view["failure_code"]) == ("failed", "authorization_expired")


def test_an_authorization_submitted_after_its_session_expired_does_not_pay_it(x402_engine):
    from tests.helpers import advance

    advance(x402_engine, -3600)
    ps = open_x402(x402_engine, expires_in_seconds=600)
    advance(x402_engine, 3600)  # the session expired 50 minutes ago
    header = (FIX / "x402_base_sepolia_payload_v1.b64").read_text().strip()
    view, _ = proofs.submit_proof(x402_engine, ps["id"], header, ["alice"])
    assert (view["status"], view["failure_code"]) == ("failed", "session_expired"), view


def test_a_session_opened_after_the_proof_was_submitted_is_no_candidate(x402_engine):
    """The proof waits (its node did not answer); meanwhile another owner opens a payer-less
    session at the same price. Verified later, the payment is as of its submission: the new
    session could not have been what it was made for, and does not send it to review."""
    from tests.helpers import advance
    from tests.test_x402_adapter import live_chain

    chain = live_chain(used=False)  # not settled yet: the payment has no chain time
    unused = chain.answers["eth_call"]
    view = _pending_x402(x402_engine, chain)
    advance(x402_engine, 10)
    open_x402(x402_engine, owner="mallory")
    chain.answers["eth_call"] = unused
    verdict = proofs.verify_proof(x402_engine, view["id"])
    assert (verdict.status.value, verdict.code) == ("verified", None), verdict.detail


def test_an_authorization_submitted_early_waits_and_verifies_once_valid(x402_engine):
    """The payer's clock ran ahead of ours: submitted 11 s before its validAfter, the payment
    is pending, not failed, and the worker verifies it once it is valid."""
    from tests.helpers import advance

    advance(x402_engine, -20)
    ps = open_x402(x402_engine)
    header = (FIX / "x402_base_sepolia_payload_v1.b64").read_text().strip()
    view, _ = proofs.submit_proof(x402_engine, ps["id"], header, ["alice"])
    assert (view["status"], view["failure_code"]) == ("pending", "authorization_not_yet_valid")
    advance(x402_engine, 20)
    verdict = proofs.verify_proof(x402_engine, view["id"])
    assert (verdict.status.value, verdict.code) == ("verified", None), verdict.detail


def test_a_payment_submitted_in_time_is_not_taken_by_a_session_that_saw_it_settle(x402_engine):
    """Bob submits his customer's authorization to his payer-less session while the node is
    down (pending, holding nothing); the facilitator settles it after Bob's short session
    expired. Mallory, with a payer-less session at the same price, submits the now public
    payload: Bob's pending claim makes it ambiguous (held for review naming both), and Bob's
    proof, checked again, waits for that decision instead of failing. Staff release
    Mallory's, and Bob's proof takes the payment."""
    from rails.errors import RpcUnavailable
    from tests.helpers import advance
    from tests.test_x402_adapter import live_chain, settlement_logs
    from verifier.services import reviews
    from verifier.services.audit import Operator

    def down(params):
        raise RpcUnavailable("connection refused")

    advance(x402_engine, -10)  # 090
    bob_s = open_x402(x402_engine, owner="bob", expires_in_seconds=20)  # open until 110
    mallory_s = open_x402(x402_engine, owner="mallory")
    chain = live_chain(used=True, logs=settlement_logs(), mined=1740672120)
    settled = chain.answers["eth_call"]
    x402_engine.chains.set_transport("base-sepolia", chain)
    chain.answers["eth_call"] = down
    header = (FIX / "x402_base_sepolia_payload_v1.b64").read_text().strip()
    advance(x402_engine, 10)  # 100
    bob, _ = proofs.submit_proof(x402_engine, bob_s["id"], header, ["bob"])
    assert bob["status"] == "pending"

    advance(x402_engine, 25)  # 125: settled at 120, after Bob's session expired
    chain.answers["eth_call"] = settled
    mallory, _ = proofs.submit_proof(x402_engine, mallory_s["id"], header, ["mallory"])
    assert (mallory["status"], mallory["failure_code"]) == ("requires_review", "ambiguous_transfer")
    [held] = [a for a in proofs.list_attempts(x402_engine, mallory["id"])][-1:]
    assert set(held["observed"]["candidate_sessions"]) == {mallory_s["id"], bob_s["id"]}

    waiting = proofs.verify_proof(x402_engine, bob["id"])
    assert (waiting.status.value, waiting.code) == ("pending", "ambiguous_transfer")
    mine = proofs.get_proof(x402_engine, bob["id"], ["bob"])
    assert mallory["id"] not in mine["detail"] and mallory_s["id"] not in mine["detail"]

    op = Operator("ops1", "INC-9", "the payer paid Bob")
    reviews.resolve_review(x402_engine, mallory["id"], reviews.Decision.release, op)
    paid = proofs.verify_proof(x402_engine, bob["id"])
    # Mallory's session is still open and could take the payment: held for review again,
    # now under Bob's proof, which staff credit.
    assert (paid.status.value, paid.code) == ("requires_review", "ambiguous_transfer")
    credited = reviews.resolve_review(x402_engine, bob["id"], reviews.Decision.credit, op)
    assert (credited["status"], credited["failure_code"]) == ("verified", None)
    with pytest.raises(Conflict) as refused:  # the transfer is Bob's now
        proofs.submit_proof(x402_engine, mallory_s["id"], header, ["mallory"])
    assert refused.value.code == "proof_owner_conflict"


def test_a_pending_proof_not_checked_yet_is_no_claim(x402_engine):
    """A proof stored but not checked yet (its first attempt in flight) passed nothing: its
    session, at another price and recipient, does not send another's payment to review."""
    bob_s = open_x402(x402_engine, owner="bob")
    mallory_s = open_x402(
        x402_engine,
        owner="mallory",
        amount=1,
        recipient="0x000000000000000000000000000000000000bEEF",
    )
    header = (FIX / "x402_base_sepolia_payload_v1.b64").read_text().strip()
    stored, _ = proofs.submit_proof(x402_engine, mallory_s["id"], header, ["mallory"], verify=False)
    assert stored["status"] == "pending"
    bob, _ = proofs.submit_proof(x402_engine, bob_s["id"], header, ["bob"])
    assert (bob["status"], bob["failure_code"]) == ("verified", None), bob


# -- the worker: a verified authorization whose nonce the payer spent elsewhere --------------


def _verified_unsettled(engine):
    """A payer-bound session and its proof, verified while the nonce was still unused (no
    settlement yet)."""
    from tests.test_x402_adapter import live_chain

    engine.chains.set_transport("base-sepolia", live_chain(used=False))
    ps = open_x402(engine, payer=SIGNER)
    header = (FIX / "x402_base_sepolia_payload_v1.b64").read_text().strip()
    view, _ = proofs.submit_proof(engine, ps["id"], header, ["alice"])
    assert (view["status"], view["failure_code"], view["settlement"]) == ("verified", None, None)
    return view["id"]


def test_a_verified_authorization_whose_nonce_is_spent_elsewhere_ends_nonce_reused(x402_engine):
    """The payer spends the verified authorization's nonce on another one paying someone
    else: the token will never run this payment. The worker's finality check saw it ("nonce
    used by … not this payment") yet left the proof `verified`, re-polled for good, where a
    submission on the same chain state is `failed nonce_reused`. Now the finality sweep asks
    the rail's checks again and records that failure like any other."""
    from sqlalchemy import select

    from tests.helpers import advance, audit_actions
    from tests.test_x402_adapter import live_chain, settlement_logs
    from verifier.storage.models import TransferHold
    from verifier.storage.webhook_models import OutboxEvent
    from verifier.worker import loop as worker

    pid = _verified_unsettled(x402_engine)
    burnt = settlement_logs(to="0x000000000000000000000000000000000000bEEF")
    # The other settlement's block is final (21 confirmations of 10).
    x402_engine.chains.set_transport("base-sepolia", live_chain(used=True, logs=burnt, head=120))
    advance(x402_engine, 700)
    assert worker.refresh_finality(x402_engine, "w1", 10) == 1

    after = proofs.get_proof(x402_engine, pid, ["alice"])
    assert (after["status"], after["failure_code"]) == ("failed", "nonce_reused"), after
    last = proofs.list_attempts(x402_engine, pid)[-1]
    assert (last["status"], last["failure_code"]) == ("failed", "nonce_reused")
    with x402_engine.db.tx() as s:
        assert s.scalars(select(TransferHold).where(TransferHold.proof_id == pid)).all() == []
        events = [
            e.type for e in s.scalars(select(OutboxEvent).where(OutboxEvent.resource_id == pid))
        ]
    assert events[-1] == "proof.failed"
    assert "proof.failed" in [a.action for a in audit_actions(x402_engine, pid)]
    # Failed is terminal: neither sweep takes it again.
    advance(x402_engine, 700)
    assert worker.refresh_finality(x402_engine, "w1", 10) == 0
    assert worker.reverify_pending(x402_engine, "w1", 10) == 0


def test_a_verified_authorization_not_settled_yet_stays_verified(x402_engine):
    """The nonce is still unused: the payment may be settled any time before validBefore.
    The checks asked again say so, and nothing is recorded but the settlement answer."""
    from tests.helpers import advance
    from verifier.worker import loop as worker

    pid = _verified_unsettled(x402_engine)
    advance(x402_engine, 20)
    assert worker.refresh_finality(x402_engine, "w1", 10) == 1
    after = proofs.get_proof(x402_engine, pid, ["alice"])
    assert (after["status"], after["settlement"]["finality"]) == ("verified", "not_found")
    assert len(proofs.list_attempts(x402_engine, pid)) == 1


def test_a_credited_authorization_whose_nonce_is_spent_elsewhere_is_flagged_not_failed(
    x402_engine,
):
    """A proof with a receipt is never failed by the worker: as under a reorg, the active
    entitlement it credited is flagged (a critical finding for a person), never revoked."""
    from sqlalchemy import select

    from tests.helpers import advance
    from tests.test_x402_adapter import live_chain, settlement_logs
    from verifier.storage.models import Entitlement, Proof, Receipt, SettlementEvidence
    from verifier.worker import loop as worker

    chain = live_chain(used=True, logs=settlement_logs(), head=200, finalized=150)
    x402_engine.chains.set_transport("base-sepolia", chain)
    ps = open_x402(x402_engine, payer=SIGNER)
    header = (FIX / "x402_base_sepolia_payload_v1.b64").read_text().strip()
    view, _ = proofs.submit_proof(x402_engine, ps["id"], header, ["alice"])
    assert view["status"] == "verified" and view["settlement"]["is_final"], view
    now = x402_engine.now()
    with x402_engine.db.tx() as s:
        # What the apply gate writes (its gated-rail release steps are tested on their own).
        ev = s.scalars(select(SettlementEvidence).where(SettlementEvidence.proof_id == view["id"]))
        r = Receipt(
            proof_id=view["id"],
            session_id=ps["id"],
            settlement_id=ev.one().id,
            owner_id="alice",
            access_product_id="api",
            rail_id="x402",
            amount=10000,
            created_by="ops1",
            created_at=now,
        )
        s.add(r)
        s.flush()
        ent = s.scalars(select(Entitlement).where(Entitlement.session_id == ps["id"])).one()
        ent.status, ent.receipt_id, ent_id = "active", r.id, ent.id
        s.get(Proof, view["id"]).next_check_at = now  # due, as within the reorg watch

    burnt = settlement_logs(to="0x000000000000000000000000000000000000bEEF")
    x402_engine.chains.set_transport(
        "base-sepolia", live_chain(used=True, logs=burnt, head=200, finalized=150)
    )
    advance(x402_engine, 60)
    assert worker.refresh_finality(x402_engine, "w1", 10) == 1
    assert proofs.get_proof(x402_engine, view["id"], ["alice"])["status"] == "verified"
    with x402_engine.db.tx() as s:
        ent = s.get(Entitlement, ent_id)
        assert (ent.status, ent.reorg_flagged) == ("active", True)


# -- addresses: exactly 0x and 40 hex digits ---------------------------------------------------
#
# bytes.fromhex skips whitespace, so "0x" + 38 hex digits + two spaces (42 characters) was read
# as a 19-byte address.

SPACED_PAY_TO = PAY_TO[:40].lower() + "  "


@pytest.mark.parametrize("field", ["recipient", "payer"])
def test_a_session_address_with_spaces_is_a_422_naming_the_field(x402_engine, field):
    """It used to pass the x402 shape check and then make eth_utils raise: a 500."""
    from fastapi.testclient import TestClient

    from tests.conftest import auth
    from verifier.http.api import create_app

    body = {
        "owner_id": "alice",
        "rail_id": "x402",
        "access_product_id": "api",
        "amount": 10000,
        "recipient": PAY_TO,
        field: SPACED_PAY_TO,
    }
    with TestClient(create_app(x402_engine), raise_server_exceptions=False) as c:
        r = c.post(
            "/v1/payment-sessions", json=body, headers={**auth(), "Idempotency-Key": "k-" + field}
        )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field, r.text


@pytest.mark.parametrize("field", ["to", "from"])
def test_a_payload_address_with_spaces_is_refused_as_malformed(x402_engine, field):
    """It used to be read as a 19-byte address and stored as a proof that failed
    (wrong_recipient / signature_invalid) under a reference holding that address."""
    ps = open_x402(x402_engine)
    doc = json.loads((FIX / "x402_base_sepolia_payload_v1.json").read_text())
    address = doc["payload"]["authorization"][field]
    doc["payload"]["authorization"][field] = address[:40].lower() + "  "
    with pytest.raises(BadInput) as refused:
        proofs.submit_proof(x402_engine, ps["id"], json.dumps(doc), ["alice"])
    assert refused.value.code == "proof_malformed"
    assert refused.value.field == "proof"
    assert f"authorization.{field}" in refused.value.message
    assert proofs.list_proofs(x402_engine, "x402") == []  # nothing stored


def _verified_with_settlement_seen(engine) -> dict:
    """The payload's proof, verified with its settlement seen in block 100 (not final yet)."""
    from tests.test_x402_adapter import live_chain, settlement_logs

    engine.chains.set_transport(
        "base-sepolia", live_chain(used=True, logs=settlement_logs(), head=104, finalized=50)
    )
    ps = open_x402(engine, payer=SIGNER)
    header = (FIX / "x402_base_sepolia_payload_v1.b64").read_text().strip()
    view, _ = proofs.submit_proof(engine, ps["id"], header, ["alice"])
    assert view["status"] == "verified" and view["settlement"]["block_number"] == 100, view
    return view


def test_a_settlement_seen_is_never_failed_by_a_node_that_lags(x402_engine):
    # Verified with its settlement seen (block 100, not final yet); one later finality answer
    # comes from a node behind it (no AuthorizationUsed log, the nonce unused), well past
    # validBefore. The worker's re-check of unsettled proofs failed it authorization_expired:
    # a payment railproof saw made, lost on one stale answer.
    from tests.helpers import advance
    from tests.test_x402_adapter import live_chain
    from verifier.worker import loop as worker

    view = _verified_with_settlement_seen(x402_engine)

    x402_engine.chains.set_transport("base-sepolia", live_chain(used=False, head=90))
    advance(x402_engine, 700)
    worker.refresh_finality(x402_engine, "w1", 10)
    after = proofs.get_proof(x402_engine, view["id"], ["alice"])
    assert after["status"] == "verified", after
    assert [a["status"] for a in proofs.list_attempts(x402_engine, view["id"])] == ["verified"]


def test_a_settlement_seen_then_the_nonce_spent_elsewhere_ends_nonce_reused(x402_engine):
    # Seen settled in block 100, then the chain shows the nonce spent paying someone else (the
    # first settlement reorged away, the nonce re-spent): the money will never arrive. The
    # re-check skipped every proof once seen settled, leaving it verified for good.
    from tests.helpers import advance
    from tests.test_x402_adapter import live_chain, settlement_logs
    from verifier.worker import loop as worker

    view = _verified_with_settlement_seen(x402_engine)

    burnt = settlement_logs(to="0x000000000000000000000000000000000000bEEF")
    x402_engine.chains.set_transport(
        "base-sepolia", live_chain(used=True, logs=burnt, head=130, finalized=50)
    )
    for _ in range(3):
        advance(x402_engine, 700)
        worker.refresh_finality(x402_engine, "w1", 10)
    after = proofs.get_proof(x402_engine, view["id"], ["alice"])
    codes = [
        (a["status"], a["failure_code"]) for a in proofs.list_attempts(x402_engine, view["id"])
    ]
    assert (after["status"], after["failure_code"]) == ("failed", "nonce_reused"), (after, codes)


def test_a_settlement_seen_only_in_a_reorged_block_does_not_keep_an_expired_one_verified(
    x402_engine,
):
    # The only settlement the sweep saw was in a block already replaced (recorded reorged);
    # verified again, the authorization then runs out unsettled. The reorged row counted as
    # "seen settled", so the proof stayed verified for good, holding the payer's nonce.
    from tests.helpers import advance
    from tests.test_x402_adapter import live_chain, settlement_logs
    from verifier.worker import loop as worker

    x402_engine.chains.set_transport("base-sepolia", live_chain(used=False))
    ps = open_x402(x402_engine, payer=SIGNER)
    header = (FIX / "x402_base_sepolia_payload_v1.b64").read_text().strip()
    view, _ = proofs.submit_proof(x402_engine, ps["id"], header, ["alice"])
    pid = view["id"]
    assert (view["status"], view["settlement"]) == ("verified", None), view

    # A node shows the settlement in block 100, whose canonical hash is another block's.
    x402_engine.chains.set_transport(
        "base-sepolia",
        live_chain(used=True, logs=settlement_logs(), canonical="0x" + "99" * 32),
    )
    advance(x402_engine, 10)
    worker.refresh_finality(x402_engine, "w1", 10)
    mid = proofs.get_proof(x402_engine, pid, ["alice"])
    assert (mid["status"], mid["failure_code"]) == ("pending", "reorged"), mid

    # The fork is gone: the nonce is unused; still inside validBefore, verified again.
    x402_engine.chains.set_transport("base-sepolia", live_chain(used=False))
    advance(x402_engine, 5)
    worker.reverify_pending(x402_engine, "w1", 10)
    again = proofs.get_proof(x402_engine, pid, ["alice"])
    assert again["status"] == "verified", again

    # validBefore (+ margin) passes with the nonce never used: the payment cannot arrive.
    for _ in range(3):
        advance(x402_engine, 700)
        worker.refresh_finality(x402_engine, "w1", 10)
    after = proofs.get_proof(x402_engine, pid, ["alice"])
    codes = [(a["status"], a["failure_code"]) for a in proofs.list_attempts(x402_engine, pid)]
    assert (after["status"], after["failure_code"]) == (
        "failed",
        "authorization_expired",
    ), codes


def _verified_before_settlement(x402_engine) -> dict:
    """The recorded authorization submitted for a session while the node shows its nonce
    unused: verified, no settlement yet."""
    from tests.test_x402_adapter import live_chain

    x402_engine.chains.set_transport("base-sepolia", live_chain(used=False))
    ps = open_x402(x402_engine, payer=SIGNER)
    header = (FIX / "x402_base_sepolia_payload_v1.b64").read_text().strip()
    view, _ = proofs.submit_proof(x402_engine, ps["id"], header, ["alice"])
    assert (view["status"], view["settlement"]) == ("verified", None), view
    return view


def test_an_unsettled_recheck_waits_for_a_node_whose_head_is_before_validbefore(
    x402_engine,
):
    # Verified before settlement; the node the sweep asks is stuck before validBefore (its
    # latest block stamped then): it cannot know of a settlement made just before the
    # deadline, yet its "unused" failed the proof authorization_expired for good.
    from tests.helpers import advance
    from tests.test_x402_adapter import INSIDE, live_chain
    from verifier.worker import loop as worker

    view = _verified_before_settlement(x402_engine)

    # The node is stuck at block 90, stamped INSIDE + 5 (before validBefore).
    x402_engine.chains.set_transport(
        "base-sepolia", live_chain(used=False, head=90, latest_at=INSIDE + 5)
    )
    advance(x402_engine, 700)
    worker.refresh_finality(x402_engine, "w1", 10)
    after = proofs.get_proof(x402_engine, view["id"], ["alice"])
    codes = [
        (a["status"], a["failure_code"]) for a in proofs.list_attempts(x402_engine, view["id"])
    ]
    assert after["status"] != "failed", codes


def test_an_unsettled_recheck_fails_a_verified_one_only_once_the_deadline_is_final(x402_engine):
    # Verified before settlement; past validBefore the node's latest block shows the nonce
    # unused, but no final block is stamped past the deadline yet: still verified (a reorg
    # may bring its settlement), and failed once one is.
    from tests.helpers import advance
    from tests.test_x402_adapter import VALID_BEFORE, live_chain
    from verifier.worker import loop as worker

    view = _verified_before_settlement(x402_engine)

    x402_engine.chains.set_transport(
        "base-sepolia", live_chain(used=False, final_at=VALID_BEFORE - 1)
    )
    for _ in range(3):
        advance(x402_engine, 700)
        worker.refresh_finality(x402_engine, "w1", 10)
    mid = proofs.get_proof(x402_engine, view["id"], ["alice"])
    assert mid["status"] == "verified", mid

    x402_engine.chains.set_transport("base-sepolia", live_chain(used=False))
    for _ in range(3):
        advance(x402_engine, 700)
        worker.refresh_finality(x402_engine, "w1", 10)
    after = proofs.get_proof(x402_engine, view["id"], ["alice"])
    assert (after["status"], after["failure_code"]) == ("failed", "authorization_expired"), after
