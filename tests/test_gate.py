"""The apply gate over the fake rails: every check reported, one transaction or nothing,
idempotent, one receipt per session, the gated and review-only stages."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from tests.conftest import STAFF_TOKEN, auth
from tests.helpers import GATE_CHECKS, audit_actions, counts
from verifier.core.errors import BadInput, Conflict, Refused
from verifier.services import audit, gate, proofs
from verifier.services.sessions import NewSession, open_session
from verifier.storage.models import (
    Entitlement,
    PaymentSession,
    Proof,
    RailState,
    Receipt,
    SettlementEvidence,
    VerificationAttempt,
)

OP = audit.Operator("ops1", "INC-1", "test")
STAFF = auth(STAFF_TOKEN)
CTX = {"incident_id": "INC-1", "operator_reason": "test"}
_n = iter(range(10_000))


def paid_proof(
    engine,
    chain,
    rail_id="fake_live",
    finality="finalized",
    found=True,
    amount=1_500_000,
    session=None,
):
    """A session on a fake rail and a proof of a transfer that pays it (if `found`)."""
    if session is None:
        session = open_session(
            engine,
            NewSession(
                owner_id="alice",
                rail_id=rail_id,
                access_product_id="pro",
                amount=amount,
                recipient="fatreasury",
            ),
            actor="svc",
        )
    tx = f"fx{next(_n):08x}"
    if found:
        chain.txs[tx] = {
            "status": "ok",
            "to": "fatreasury",
            "amount": amount,
            "asset": "fusd",
            "refs": [session["reference"]],
            "finality": finality,
        }
    view, created = proofs.submit_proof(engine, session["id"], tx, ["alice"])
    assert created
    return session, view


def snapshot(engine) -> dict:
    """Every row a dry run could touch, as plain values."""
    with engine.db.tx() as s:
        out = {}
        for model in (
            PaymentSession,
            Proof,
            Entitlement,
            Receipt,
            RailState,
            VerificationAttempt,
            SettlementEvidence,
        ):
            out[model.__tablename__] = sorted(
                tuple(str(getattr(r, c.key)) for c in model.__table__.columns)
                for r in s.scalars(select(model)).all()
            )
        return out


def test_dry_run_reports_all_nine_checks_and_writes_only_its_audit_row(engine, chain, client):
    _, view = paid_proof(engine, chain, rail_id="fake_gated", found=False)
    assert view["status"] == "pending"
    before_rows, before_counts = snapshot(engine), counts(engine)

    r = client.post(
        f"/v1/admin/proofs/{view['id']}/dry-run-apply",
        headers=STAFF,
        json={"incident_id": "INC-3", "operator_reason": "why blocked?"},
    )
    assert r.status_code == 200
    rep = r.json()
    assert [c["name"] for c in rep["checks"]] == GATE_CHECKS
    failed = [c["name"] for c in rep["checks"] if not c["passed"]]
    assert failed == [
        "proof_verified",
        "settlement_final",
        "rail_production_enabled",
        "rail_allowlisted",
        "live_apply_enabled",
        "receipt_creation_allowed",
        "tuple_bound",
    ]
    assert [b["code"] for b in rep["blockers"]] == failed
    assert all(b["detail"] for b in rep["blockers"])
    assert (
        rep["would_apply"]
        is rep["would_create_receipt"]
        is rep["would_activate_entitlement"]
        is False
    )

    after_counts = counts(engine)
    assert snapshot(engine) == before_rows
    assert after_counts == {**before_counts, "audit_events": before_counts["audit_events"] + 1}
    last = audit_actions(engine)[-1]
    assert (last.action, last.subject_id, last.actor, last.incident_id, last.reason) == (
        "proof.dry_run_apply",
        view["id"],
        "ops1",
        "INC-3",
        "why blocked?",
    )
    assert last.data["blockers"] == failed


def test_apply_failure_after_receipt_insert_rolls_everything_back(engine, chain, client):
    sess, view = paid_proof(engine, chain)
    pid = view["id"]
    assert gate.dry_run_apply(engine, pid)["would_apply"] is True
    before = counts(engine)

    engine.fail_after_receipt_insert = True
    r = client.post(f"/v1/admin/proofs/{pid}/apply", headers=STAFF, json={"confirm": True, **CTX})
    assert r.status_code == 500
    assert r.json()["error"]["code"] == "internal_error" and "Traceback" not in r.text
    with pytest.raises(RuntimeError):
        gate.apply(engine, pid, OP)

    assert counts(engine) == before
    with engine.db.tx() as s:
        assert s.scalars(select(Receipt)).all() == []
        ent = s.scalar(select(Entitlement).where(Entitlement.session_id == sess["id"]))
        assert (ent.status, ent.receipt_id) == ("pending", None)
        assert s.get(PaymentSession, sess["id"]).status == "open"
    actions = {a.action for a in audit_actions(engine)}
    assert not actions & {"proof.applied", "receipt.created", "entitlement.activated"}

    # Nothing half-done stands in the way: the next apply goes through whole.
    engine.fail_after_receipt_insert = False
    out = gate.apply(engine, pid, OP)
    assert out["applied"] and not out["already_applied"]
    with engine.db.tx() as s:
        assert s.get(Entitlement, out["entitlement_id"]).status == "active"
        assert s.get(PaymentSession, sess["id"]).status == "paid"


def test_apply_is_idempotent(engine, chain):
    _, view = paid_proof(engine, chain)
    first = gate.apply(engine, view["id"], OP)
    before = counts(engine)
    second = gate.apply(engine, view["id"], OP)
    assert second["already_applied"] and second["receipt_id"] == first["receipt_id"]
    assert second["entitlement_id"] == first["entitlement_id"]
    assert counts(engine) == before
    rep = gate.dry_run_apply(engine, view["id"])
    assert rep["already_applied"] is True and rep["would_apply"] is False


def test_one_receipt_per_session_even_with_two_verified_transfers(engine, chain):
    sess, a = paid_proof(engine, chain)
    _, b = paid_proof(engine, chain, session=sess)
    assert a["status"] == b["status"] == "verified"
    gate.apply(engine, a["id"], OP)
    rep = gate.dry_run_apply(engine, b["id"])
    assert [x["code"] for x in rep["blockers"]] == ["tuple_bound"]
    assert "session already paid by another proof" in rep["blockers"][0]["detail"]
    with pytest.raises(Refused):
        gate.apply(engine, b["id"], OP)
    with engine.db.tx() as s:
        assert len(s.scalars(select(Receipt)).all()) == 1


def test_unfinal_settlement_blocks(engine, chain):
    _, view = paid_proof(engine, chain, finality="confirmed")
    rep = gate.dry_run_apply(engine, view["id"])
    assert [b["code"] for b in rep["blockers"]] == ["settlement_final"]
    assert rep["blockers"][0]["detail"].startswith("not_final: confirmed")
    assert "finalized required" in rep["blockers"][0]["detail"]


def test_gated_rail_receipt_only_on_the_staff_path(engine, chain):
    engine.settings.live_apply = True
    engine.settings.apply_rail_allowlist = ["fake_gated"]
    engine.settings.receipt_creation_rails = ["fake_gated"]
    with engine.db.tx() as s:
        s.get(RailState, "fake_gated").production_enabled = True
    _, view = paid_proof(engine, chain, rail_id="fake_gated")

    auto = gate.dry_run_apply(engine, view["id"], via=gate.Via.auto)
    assert [b["code"] for b in auto["blockers"]] == ["receipt_creation_allowed"]
    with pytest.raises(Refused):
        gate.apply(engine, view["id"], audit.Operator("worker"), gate.Via.auto)
    with engine.db.tx() as s:
        assert s.scalars(select(Receipt)).all() == []

    # The apply path is not the receipt path for a gated rail, even for staff.
    staff_apply = gate.dry_run_apply(engine, view["id"], via=gate.Via.staff)
    assert [b["code"] for b in staff_apply["blockers"]] == ["receipt_creation_allowed"]
    with pytest.raises(Refused):
        gate.apply(engine, view["id"], OP, gate.Via.staff)
    out = gate.apply(engine, view["id"], OP, gate.Via.staff_receipt)
    assert out["applied"] and not out["already_applied"]


def test_review_only_never_applies_whatever_flags(engine, chain):
    engine.settings.live_apply = True
    engine.settings.apply_rail_allowlist = ["fake_review"]
    engine.settings.receipt_creation_rails = ["fake_review"]
    with engine.db.tx() as s:
        s.get(RailState, "fake_review").production_enabled = True  # a tampered row
    _, view = paid_proof(engine, chain, rail_id="fake_review")
    assert (view["status"], view["failure_code"]) == ("requires_review", "review_only_rail")
    for via in gate.Via:
        rep = gate.dry_run_apply(engine, view["id"], via=via)
        assert rep["would_apply"] is False
        assert {"proof_verified", "rail_production_enabled", "receipt_creation_allowed"} <= {
            b["code"] for b in rep["blockers"]
        }
        with pytest.raises(Refused):
            gate.apply(engine, view["id"], OP, via)


def test_revoke_only_an_active_entitlement_with_operator_context(engine, chain):
    sess, view = paid_proof(engine, chain, found=False)
    with engine.db.tx() as s:
        ent_id = s.scalar(select(Entitlement.id).where(Entitlement.session_id == sess["id"]))
    with pytest.raises(Conflict):
        gate.revoke(engine, ent_id, OP)  # still pending: nothing to revoke
    with pytest.raises(BadInput):
        gate.revoke(engine, ent_id, audit.Operator("ops1"))
    with engine.db.tx() as s:
        assert s.get(Entitlement, ent_id).status == "pending"


def test_proof_of_a_rail_gone_from_the_catalog_is_reported_not_crashed(engine, chain, db_url):
    from tests.conftest import make_settings
    from verifier.core.engine import Engine

    _, view = paid_proof(engine, chain)
    shipped = Engine(make_settings(db_url))  # the shipped catalog: no fake rails
    try:
        rep = gate.dry_run_apply(shipped, view["id"], OP)
        assert [c["name"] for c in rep["checks"]] == GATE_CHECKS
        assert {
            "rail_registered",
            "rail_not_paused",
            "rail_production_enabled",
            "receipt_creation_allowed",
        } <= {b["code"] for b in rep["blockers"]}
        with pytest.raises(Refused):
            gate.apply(shipped, view["id"], OP)
    finally:
        shipped.db.dispose()


def test_concurrent_applies_create_one_receipt(engine, chain):
    import threading

    _, view = paid_proof(engine, chain)
    results, errors = [], []
    start = threading.Barrier(4)

    def go():
        try:
            start.wait()
            results.append(gate.apply(engine, view["id"], OP))
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert sorted(r["already_applied"] for r in results) == [False, True, True, True]
    assert len({r["receipt_id"] for r in results}) == 1
    with engine.db.tx() as s:
        assert len(s.scalars(select(Receipt)).all()) == 1
    assert [a.action for a in audit_actions(engine)].count("proof.applied") == 1


def test_tuple_binding_rechecks_the_transfer_time_on_evm_too(db_url):
    """The gate re-checks the transfer time against the session window itself (it does not
    only trust the adapter), also where the evidence states the time as ISO-8601 (EVM)."""
    from datetime import timedelta

    from tests.helpers import cassette_engine
    from tests.test_e2e_http import (
        EVM_CLOCK,
        EVM_USDC_AMOUNT,
        EVM_USDC_FROM,
        EVM_USDC_TO,
        EVM_USDC_TX,
    )

    e = cassette_engine(db_url, clock=EVM_CLOCK)
    try:
        sess = open_session(
            e,
            NewSession(
                owner_id="alice",
                rail_id="evm_usdc",
                access_product_id="pro",
                amount=EVM_USDC_AMOUNT,
                recipient=EVM_USDC_TO,
                payer=EVM_USDC_FROM,
            ),
            actor="svc",
        )
        view, _ = proofs.submit_proof(e, sess["id"], EVM_USDC_TX, ["alice"])
        assert view["status"] == "verified"
        checks = {c["name"]: c for c in gate.dry_run_apply(e, view["id"])["checks"]}
        assert checks["tuple_bound"]["passed"] is True
        # The session row now says it opened after the transfer (a bad migration, an edit).
        with e.db.tx() as s:
            ps = s.get(PaymentSession, sess["id"])
            ps.created_at = EVM_CLOCK + timedelta(hours=1)
            ps.expires_at = EVM_CLOCK + timedelta(hours=2)
        checks = {c["name"]: c for c in gate.dry_run_apply(e, view["id"])["checks"]}
        tb = checks["tuple_bound"]
        assert tb["passed"] is False
        assert "outside the session window" in tb["detail"]
    finally:
        e.db.dispose()


# -- the network and token a session was opened on ------------------------------------------

# Fake rails that, like x402 / base_usdc / evm_usdc, have a test network and a production
# network with tokens of their own: one gated, one live.
TWO_NETWORKS = """
[networks.fakenet-test]
family = "fake"
""" + "".join(
    f"""
[rails.{rail_id}]
family = "fake"
stage = "{stage}"
production_enabled = {"true" if stage == "live" else "false"}
network = "fakenet"
asset_symbol = "FUSD"
decimals = 6
proof_types = ["fake_tx"]
finality = {{ mode = "commitment", level = "finalized" }}
assets = {{ fakenet = "fusd", fakenet-test = "fusd-test" }}
"""
    for rail_id, stage in (("fake_multi", "gated"), ("fake_multi_live", "live"))
)

# The same live rail once a release has retired its test network from the catalog.
TEST_NETWORK_RETIRED = """
[rails.fake_multi_live]
family = "fake"
stage = "live"
production_enabled = true
network = "fakenet"
asset_symbol = "FUSD"
decimals = 6
proof_types = ["fake_tx"]
finality = { mode = "commitment", level = "finalized" }
assets = { fakenet = "fusd" }
"""


def two_network_engine(db_url, chain, fragment=TWO_NETWORKS, **settings):
    from tests.conftest import make_settings
    from tests.fake_rail import catalog_with_fake
    from verifier.core.engine import Engine

    e = Engine(make_settings(db_url, **settings), catalog=catalog_with_fake(fragment))
    e.chains.set_transport("fakenet", chain)
    e.chains.set_transport("fakenet-test", chain)
    e.ensure_rail_states()
    return e


def pay_on(engine, chain, rail_id, product, asset="fusd", finality="finalized"):
    """A session on `rail_id` as the engine resolves it now, paid in `asset`: the proof's id."""
    sess = open_session(
        engine,
        NewSession(
            owner_id="alice",
            rail_id=rail_id,
            access_product_id=product,
            amount=1_500_000,
            recipient="fatreasury",
        ),
        actor="svc",
    )
    tx = f"fx{next(_n):08x}"
    chain.txs[tx] = {
        "status": "ok",
        "to": "fatreasury",
        "amount": 1_500_000,
        "asset": asset,
        "refs": [sess["reference"]],
        "finality": finality,
    }
    view, _ = proofs.submit_proof(engine, sess["id"], tx, ["alice"])
    assert view["status"] == "verified", view
    return view["id"]


def test_a_test_network_payment_is_not_credited_after_the_rail_moves_to_mainnet(db_url, chain):
    """Staging runs the gated rail on its test network (RAILPROOF_NETWORK_<RAIL>); at launch
    the override goes and the rail is opened (production, allowlist, live apply, receipt
    creation). A proof verified and final on the test network before (a worthless token)
    never becomes a receipt: its session's network and token are not the rail's any more."""
    staging = two_network_engine(
        db_url, chain, env={"RAILPROOF_NETWORK_FAKE_MULTI": "fakenet-test"}
    )
    pid = pay_on(staging, chain, "fake_multi", "pro", asset="fusd-test")
    staging.db.dispose()

    prod = two_network_engine(
        db_url,
        chain,
        live_apply=True,
        apply_rail_allowlist=["fake_multi"],
        receipt_creation_rails=["fake_multi"],
    )
    with prod.db.tx() as s:
        s.get(RailState, "fake_multi").production_enabled = True
    try:
        rep = gate.dry_run_apply(prod, pid, via=gate.Via.staff_receipt)
        assert [c["name"] for c in rep["checks"]] == GATE_CHECKS
        assert [b["code"] for b in rep["blockers"]] == ["rail_network_current"], rep
        assert rep["blockers"][0]["detail"] == (
            "session on fakenet-test (fusd-test); the rail is on fakenet (fusd) now"
        )
        with pytest.raises(Refused) as refused:
            gate.apply(prod, pid, OP, gate.Via.staff_receipt)
        assert refused.value.code == "apply_blocked"
        with prod.db.tx() as s:
            assert s.scalars(select(Receipt)).all() == []
            assert s.scalars(select(Entitlement.status)).one() == "pending"
        # A session opened on the rail's network now is credited as ever.
        fresh = pay_on(prod, chain, "fake_multi", "pro-2")
        assert gate.apply(prod, fresh, OP, gate.Via.staff_receipt)["applied"]
    finally:
        prod.db.dispose()


def test_a_proof_of_a_retired_network_is_reported_blocked_not_an_error(db_url, chain):
    """A release retires the rail's test network from the catalog while a proof of it waits:
    the dry run reports every check (the network cannot even be read any more), and apply
    refuses with the gate's blockers rather than a configuration error."""
    staging = two_network_engine(
        db_url, chain, env={"RAILPROOF_NETWORK_FAKE_MULTI_LIVE": "fakenet-test"}
    )
    pid = pay_on(staging, chain, "fake_multi_live", "pro", asset="fusd-test")
    staging.db.dispose()

    prod = two_network_engine(
        db_url,
        chain,
        fragment=TEST_NETWORK_RETIRED,
        apply_rail_allowlist=["fake_multi_live"],
    )
    try:
        rep = gate.dry_run_apply(prod, pid, OP)
        assert [c["name"] for c in rep["checks"]] == GATE_CHECKS
        assert rep["would_apply"] is False
        blockers = {b["code"]: b["detail"] for b in rep["blockers"]}
        assert set(blockers) == {"rail_network_current", "tuple_bound"}, rep
        assert "(fakenet-test, fusd-test) is not in the catalog" in blockers["tuple_bound"]
        with pytest.raises(Refused) as refused:
            gate.apply(prod, pid, OP)
        assert refused.value.code == "apply_blocked"
        assert gate.apply_many(prod, [pid], OP) == 0  # blocked, the batch not failed
    finally:
        prod.db.dispose()


def test_the_dry_run_audit_row_names_the_path_it_evaluated(engine, chain, client):
    """A gated rail's proof passes on the receipt path and is blocked on the apply path: the
    audit row of each dry run says which one it answered."""
    engine.settings.live_apply = True
    engine.settings.apply_rail_allowlist = [*engine.settings.apply_rail_allowlist, "fake_gated"]
    engine.settings.receipt_creation_rails = ["fake_gated"]
    with engine.db.tx() as s:
        s.get(RailState, "fake_gated").production_enabled = True
    _, view = paid_proof(engine, chain, rail_id="fake_gated")
    for path in ("receipt", "apply"):
        r = client.post(
            f"/v1/admin/proofs/{view['id']}/dry-run-apply",
            headers=STAFF,
            json={**CTX, "path": path},
        )
        assert r.status_code == 200, r.text
    rows = [a for a in audit_actions(engine, view["id"]) if a.action == "proof.dry_run_apply"]
    assert [(row.data["path"], row.data["would_apply"]) for row in rows] == [
        ("receipt", True),
        ("apply", False),
    ]
