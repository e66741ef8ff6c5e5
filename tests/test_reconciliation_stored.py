"""Scope rail_proofs over stored data, on the fake rail (tests/fake_rail.py), SQLite and
PostgreSQL: each finding kind found for the row that has it, and for no other. States only a
broken writer (or data older than the binding rules) can leave are written directly."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import insert, select, update

from tests.helpers import advance
from tests.test_binding import fake_session, pay
from verifier.services import gate, proofs, reconciliation
from verifier.services.audit import Operator
from verifier.storage.models import Entitlement, PaymentSession, Proof

OP = Operator("ops1", "INC-13", "stored-data reconciliation")


def run(engine) -> dict[str, list[dict]]:
    r = reconciliation.run(
        engine,
        reconciliation.RunRequest(
            scope="rail_proofs",
            rail_id="fake_live",
            incident_id="INC-13",
            operator_reason="stored-data reconciliation",
        ),
        "ops1",
    )
    assert r["status"] == "complete", r["detail"]
    out: dict[str, list[dict]] = {}
    for f in r["findings"]:
        out.setdefault(f["kind"], []).append(f)
    return out


def paid(engine, chain, tx: str) -> tuple[dict, dict]:
    """A session paid by `tx`, its proof verified and applied (active entitlement)."""
    sess = fake_session(engine)
    pay(chain, tx, sess)
    view, _ = proofs.submit_proof(engine, sess["id"], tx, ["alice"])
    assert gate.apply(engine, view["id"], OP, gate.Via.staff)["applied"] is True
    return sess, view


def test_a_clean_history_has_no_findings(engine, chain):
    paid(engine, chain, "fx0a0a0a0a0a")
    assert run(engine) == {}


def test_second_verified_transfer_of_a_paid_session_is_not_credited(engine, chain):
    sess = fake_session(engine)
    pay(chain, "fx0b0b0b0b01", sess)
    pay(chain, "fx0b0b0b0b02", sess)  # the payer paid twice, both carry the reference
    first, _ = proofs.submit_proof(engine, sess["id"], "fx0b0b0b0b01", ["alice"])
    second, _ = proofs.submit_proof(engine, sess["id"], "fx0b0b0b0b02", ["alice"])
    gate.apply(engine, first["id"], OP, gate.Via.staff)
    found = run(engine)
    [f] = found["verified_transfer_not_credited"]
    assert f["subjects"] == {"proof_id": second["id"], "session_id": sess["id"]}
    assert f["severity"] == "warning" and "refund" in f["proposed_repair"]
    assert set(found) == {"verified_transfer_not_credited"}


def test_a_proof_pending_past_its_sla(engine, chain):
    sess = fake_session(engine)
    view, _ = proofs.submit_proof(engine, sess["id"], "fx0c0c0c0c0c", ["alice"])  # not on chain
    assert view["status"] == "pending"
    sla = engine.settings.reconcile_pending_sla_seconds
    advance(engine, sla - 1)
    assert "pending_past_sla" not in run(engine)
    advance(engine, 2)
    [f] = run(engine)["pending_past_sla"]
    assert f["subjects"] == {"proof_id": view["id"], "session_id": sess["id"]}


def test_a_receipt_whose_entitlement_is_not_active(engine, chain):
    sess, view = paid(engine, chain, "fx0d0d0d0d0d")
    with engine.db.tx() as s:
        ent = s.scalar(select(Entitlement).where(Entitlement.session_id == sess["id"]))
        receipt_id = ent.receipt_id
        s.execute(
            update(Entitlement).where(Entitlement.id == ent.id).values(status="pending")
        )  # a writer that stopped between the receipt and its entitlement
        ent_id = ent.id
    [f] = run(engine)["receipt_without_active_entitlement"]
    assert f["subjects"] == {
        "receipt_id": receipt_id,
        "proof_id": view["id"],
        "session_id": sess["id"],
        "entitlement_id": ent_id,
    }
    # Revoked on purpose (audited) is not drift.
    with engine.db.tx() as s:
        s.execute(update(Entitlement).where(Entitlement.id == ent_id).values(status="revoked"))
    assert "receipt_without_active_entitlement" not in run(engine)


def test_a_paid_session_without_a_receipt(engine, chain):
    paid(engine, chain, "fx0e0e0e0e0e")
    lost = fake_session(engine)
    with engine.db.tx() as s:  # a writer that marked it paid and lost the receipt
        s.execute(
            update(PaymentSession).where(PaymentSession.id == lost["id"]).values(status="paid")
        )
    [f] = run(engine)["paid_session_without_receipt"]
    assert f["subjects"] == {"session_id": lost["id"]} and f["severity"] == "critical"


def test_one_transfer_behind_proofs_of_two_sessions(engine, chain):
    sess, view = paid(engine, chain, "fx0f0f0f0f0f")
    other = fake_session(engine, owner="bob")
    with engine.db.tx() as s:
        # Data from before the one-holder-per-transfer rule: another session's proof of the
        # same transfer, under another fingerprint.
        row = dict(s.execute(select(Proof.__table__).where(Proof.id == view["id"])).one()._mapping)
        row.update(
            id="p" + "1" * 31,
            session_id=other["id"],
            owner_id="bob",
            fingerprint="f" * 64,
            created_at=row["created_at"] + timedelta(seconds=1),
        )
        s.execute(insert(Proof.__table__).values(**row))
    [f] = run(engine)["transfer_behind_two_proofs"]
    assert f["subjects"]["transfer"] == "fx0f0f0f0f0f"
    assert sorted(f["subjects"]["proof_ids"]) == sorted([view["id"], "p" + "1" * 31])


def test_an_active_entitlement_whose_settlement_reorged(engine, chain):
    sess, view = paid(engine, chain, "fx1010101010")
    assert "entitlement_settlement_reorged" not in run(engine)
    with engine.db.tx() as s:  # what the worker's reorg watch marks
        s.execute(
            update(Entitlement)
            .where(Entitlement.session_id == sess["id"])
            .values(reorg_flagged=True)
        )
        ent_id = s.scalar(select(Entitlement.id).where(Entitlement.session_id == sess["id"]))
    [f] = run(engine)["entitlement_settlement_reorged"]
    assert f["subjects"]["entitlement_id"] == ent_id and f["subjects"]["proof_id"] == view["id"]


def _limited(engine, limit: int) -> dict:
    return reconciliation.run(
        engine,
        reconciliation.RunRequest(
            scope="rail_proofs",
            rail_id="fake_live",
            limit=limit,
            incident_id="INC-13",
            operator_reason="stored-data reconciliation",
        ),
        "ops1",
    )


def test_a_kind_with_more_rows_than_the_limit_makes_the_run_incomplete(engine, chain):
    # Any tenant can leave proofs pending (its own sessions, hashes nobody sent): older ones
    # fill the limit, and another tenant's stuck payment is not reported.
    for i in range(3):
        sess = fake_session(engine, owner="bob", amount=1_000_000 + i)
        view, _ = proofs.submit_proof(engine, sess["id"], f"fxb0b0b0b0{i:02d}", ["bob"])
        assert view["status"] == "pending"
    advance(engine, 1)
    alice = fake_session(engine)
    stuck, _ = proofs.submit_proof(engine, alice["id"], "fxa11ce00001", ["alice"])
    advance(engine, engine.settings.reconcile_pending_sla_seconds + 60)

    r = _limited(engine, 3)
    reported = {f["subjects"]["proof_id"] for f in r["findings"]}
    assert stuck["id"] not in reported and len(reported) == 3
    assert r["status"] == "incomplete"
    assert "pending_past_sla" in r["detail"] and "--limit" in r["detail"]
    assert "narrow the window" in r["detail"]

    r = _limited(engine, 4)  # every row fits: complete, the stuck payment reported
    assert r["status"] == "complete", r["detail"]
    assert stuck["id"] in {f["subjects"]["proof_id"] for f in r["findings"]}
