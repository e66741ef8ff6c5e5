"""Rows written directly (a corrupting insider, or a bug) that break the stored invariants
"no active entitlement without a receipt of its own" and "no receipt without a verified,
final proof" are reported by `railproof assurance` as critical, and the command exits 1."""

from __future__ import annotations

from sqlalchemy import select

from tests.conftest import STAFF_TOKEN, auth
from tests.live_server import LiveServer
from tests.test_assurance import SESSION, _cli, paid, report
from verifier.storage.models import (
    Entitlement,
    EntitlementStatus,
    PaymentSession,
    Proof,
    Receipt,
)


def _critical(doc: dict) -> list[str]:
    return [i["category"] for i in doc["issues"] if i["severity"] == "critical"]


def _unpaid_session(client) -> dict:
    r = client.post("/v1/payment-sessions", headers=auth(), json=SESSION)
    assert r.status_code == 201, r.text
    return r.json()


def test_an_active_entitlement_on_another_sessions_receipt_is_critical(client, engine, chain):
    """Session B was never paid; its entitlement is set active pointing at session A's
    receipt. B's access stands on no receipt of its own (A's payment is counted twice)."""
    a = paid(client, chain, "fx0000a001")
    b = _unpaid_session(client)
    with engine.db.tx() as s:
        ent_b = s.scalar(select(Entitlement).where(Entitlement.session_id == b["id"]))
        assert ent_b.status == EntitlementStatus.pending
        ent_b.status = EntitlementStatus.active
        ent_b.receipt_id = a["receipt_id"]  # A's receipt: B has none
    with LiveServer(client.app) as srv:
        r = _cli(srv.url)
    doc = report(client)
    assert _critical(doc), doc  # observed: {"status": "ok", "score": 100, "issues": []}
    assert r.exit_code == 1, r.output


def test_a_receipt_for_a_failed_proof_borrowing_another_settlement_is_critical(
    client, engine, chain
):
    """A receipt (and active entitlement) for a proof whose verification failed, pointing at
    another proof's final settlement row: a receipt without a verified, final proof."""
    a = paid(client, chain, "fx0000b001")
    b = _unpaid_session(client)
    chain.txs["fx0000b002"] = {
        "status": "failed",
        "to": "fatreasury",
        "amount": 1500000,
        "asset": "fusd",
        "refs": [b["reference"]],
    }
    r = client.post(
        "/v1/proofs", headers=auth(), json={"session_id": b["id"], "proof": "fx0000b002"}
    )
    failed = r.json()
    assert failed["status"] == "failed", failed
    with engine.db.tx() as s:
        ra = s.get(Receipt, a["receipt_id"])
        rb = Receipt(
            proof_id=failed["id"],
            session_id=b["id"],
            settlement_id=ra.settlement_id,  # proof A's settlement evidence
            owner_id="alice",
            access_product_id="pro",
            rail_id=ra.rail_id,
            amount=ra.amount,
            created_by="nobody",
            created_at=engine.now(),
        )
        s.add(rb)
        s.flush()
        ent_b = s.scalar(select(Entitlement).where(Entitlement.session_id == b["id"]))
        ent_b.status, ent_b.receipt_id = EntitlementStatus.active, rb.id
        s.get(PaymentSession, b["id"]).status = "paid"
        assert s.get(Proof, failed["id"]).status == "failed"
    with LiveServer(client.app) as srv:
        r = _cli(srv.url)
    doc = report(client)
    assert _critical(doc), doc  # observed: no issue at all
    assert r.exit_code == 1, r.output
    staff = client.get("/v1/admin/assurance", headers=auth(STAFF_TOKEN)).json()
    assert staff["summary"]["status"] == "critical"
