"""A receipt staff created (POST /v1/admin/proofs/{id}/apply) goes out to the tenant's
webhook receiver as `receipt.created`: the tenant is told staff created it, never which staff
member (nor the incident or the reason, which stay in the audit log)."""

from __future__ import annotations

from sqlalchemy import select

from tests.conftest import STAFF_TOKEN, auth
from tests.helpers import FAKE_SESSION, advance, fake_payment
from verifier.storage.webhook_models import OutboxEvent
from verifier.worker import loop as worker

OPS = {"incident_id": "INC-1", "operator_reason": "credit after finality"}


def test_a_staff_created_receipt_event_says_staff_not_the_staff_members_name(client, engine, chain):
    made = client.post(
        "/v1/webhook-endpoints",
        headers=auth(),
        json={"url": "http://127.0.0.1:9/h", "event_types": ["receipt.created"]},
    )
    assert made.status_code == 201, made.text
    sess = client.post("/v1/payment-sessions", headers=auth(), json=FAKE_SESSION).json()
    fake_payment(chain, sess, "fx0123abcd", "confirmed")
    proof = client.post(
        "/v1/proofs", headers=auth(), json={"session_id": sess["id"], "proof": "fx0123abcd"}
    ).json()
    assert proof["status"] == "verified" and proof["receipt_id"] is None
    chain.statuses["fx0123abcd"] = "finalized"
    advance(engine, 60)
    assert worker.refresh_finality(engine, "w1", 100) == 1
    r = client.post(
        f"/v1/admin/proofs/{proof['id']}/apply",
        headers=auth(STAFF_TOKEN),
        json={"confirm": True, **OPS},
    )
    assert r.status_code == 200 and r.json()["applied"], r.text

    with engine.db.tx() as s:
        sent = [
            ev.payload
            for ev in s.scalars(select(OutboxEvent)).all()
            if ev.type == "receipt.created" and ev.owner_id == "alice"
        ]
    assert sent, "no receipt.created event for the tenant"
    for payload in sent:
        # The tenant's receiver gets this body: no staff identity (nor incident or reason).
        assert "ops1" not in str(payload), payload
        assert "INC-1" not in str(payload) and OPS["operator_reason"] not in str(payload)
        assert payload["created_by"] == "staff", payload
