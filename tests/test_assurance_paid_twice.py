"""A second transfer for a session another proof paid is "a refund to arrange, not a receipt
to create" (runbook, RailproofApplyGateBlocks), reported as `verified_transfer_not_credited`.
Assurance listed the same proof as `verified_without_receipt` too, offered as repairable ("the
repair applies it through the apply gate": always 409 apply_blocked, the session is paid) and
counted twice in the score; a reconciliation run reported it twice. Once now, as the money to
send back it is.

The second transfer is recorded the same way whenever it is handed over: before the first was
credited, or after (the session paid by then still takes the proof, verifies it and never
credits it). Its detail says it is not credited either way: verified before the credit, the
credit tells it (and its tenant, with a `proof.verified` event), so neither it nor its later
`settlement.finalized` reads as a payment waiting to be applied."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from tests.conftest import OTHER_SERVICE_TOKEN, STAFF_TOKEN, auth
from tests.helpers import FAKE_SESSION, advance, fake_payment
from verifier.services import audit, gate, reconciliation
from verifier.storage.webhook_models import OutboxEvent
from verifier.worker import loop as worker

OP = {"confirm": True, "incident_id": "INC-DOC", "operator_reason": "docs walk"}
STAFF = auth(STAFF_TOKEN)


def _pay(chain, sess: dict, tx: str, finality: str = "finalized") -> None:
    fake_payment(chain, sess, tx, finality)


def _submit(client, sess: dict, tx: str):
    return client.post("/v1/proofs", headers=auth(), json={"session_id": sess["id"], "proof": tx})


def _session_paid_twice(client, chain, second_after_credit: bool = False) -> tuple[str, str]:
    """The payer pays one session twice; the first transfer is credited. The second is handed
    over before that credit, or (`second_after_credit`) after it."""
    sess = client.post("/v1/payment-sessions", headers=auth(), json=dict(FAKE_SESSION)).json()
    _pay(chain, sess, "fx0000d0c1")
    _pay(chain, sess, "fx0000d0c2")
    first = _submit(client, sess, "fx0000d0c1")
    assert first.status_code == 201 and first.json()["status"] == "verified", first.text
    if not second_after_credit:
        second = _submit(client, sess, "fx0000d0c2")
    r = client.post(f"/v1/admin/proofs/{first.json()['id']}/apply", headers=STAFF, json=OP)
    assert r.json()["applied"] is True, r.text
    if second_after_credit:
        second = _submit(client, sess, "fx0000d0c2")
    assert second.status_code == 201 and second.json()["status"] == "verified", second.text
    assert second.json()["receipt_id"] is None
    return first.json()["id"], second.json()["id"]


def _events(engine, proof_id: str) -> list[OutboxEvent]:
    with engine.db.tx() as s:
        return list(
            s.scalars(
                select(OutboxEvent)
                .where(OutboxEvent.resource_id == proof_id)
                .order_by(OutboxEvent.sequence)
            )
        )


@pytest.mark.parametrize("second_after_credit", [False, True], ids=["before", "after"])
def test_a_second_transfer_is_recorded_and_reported_whenever_it_is_handed_over(
    client, chain, engine, second_after_credit
):
    _, second = _session_paid_twice(client, chain, second_after_credit)
    got = client.get(f"/v1/proofs/{second}", headers=auth()).json()
    assert (got["status"], got["receipt_id"]) == ("verified", None)
    doc = client.get("/v1/admin/assurance", headers=STAFF).json()
    found = [i for i in doc["issues"] if i["category"] == "verified_transfer_not_credited"]
    assert [i["subject"] for i in found] == [f"proof {second}"]
    assert doc["summary"]["status"] != "ok"
    ents = client.get("/v1/entitlements", params={"owner_id": "alice"}, headers=auth()).json()
    assert [e["status"] for e in ents] == ["active"]


def test_a_second_transfer_after_the_credit_says_it_is_not_credited(client, chain, engine):
    first, second = _session_paid_twice(client, chain, second_after_credit=True)
    got = client.get(f"/v1/proofs/{second}", headers=auth()).json()
    assert "not credited" in got["detail"] and "already paid" in got["detail"], got["detail"]
    # Its event says so too: a backend reading proof.verified is not told of access paid.
    events = _events(engine, second)
    assert [e.type for e in events] == ["proof.verified", "settlement.finalized"]
    assert all("not credited" in e.payload["detail"] for e in events)
    assert all(e.payload["receipt_id"] is None for e in events)
    # The credited proof's own detail is left alone.
    assert "not credited" not in client.get(f"/v1/proofs/{first}", headers=auth()).json()["detail"]
    # And the gate never credits it.
    r = client.post(f"/v1/admin/proofs/{second}/apply", headers=STAFF, json=OP)
    assert r.status_code == 409, r.text
    assert "already paid by another proof" in r.text


@pytest.mark.parametrize("path", ["staff", "sweep"])
def test_a_second_transfer_verified_before_the_credit_is_told_it_is_not_credited(
    client, chain, engine, path
):
    # Both transfers handed over while the session is open (a wallet retried, the backend
    # submitted both at once): both verified, the second not final yet.
    sess = client.post("/v1/payment-sessions", headers=auth(), json=dict(FAKE_SESSION)).json()
    _pay(chain, sess, "fx0000e0c1")
    _pay(chain, sess, "fx0000e0c2", finality="confirmed")
    first = _submit(client, sess, "fx0000e0c1").json()
    second = _submit(client, sess, "fx0000e0c2").json()
    assert first["status"] == second["status"] == "verified"
    assert "not credited" not in second["detail"]
    if path == "staff":
        r = client.post(f"/v1/admin/proofs/{first['id']}/apply", headers=STAFF, json=OP)
        assert r.json()["applied"] is True, r.text
    else:  # the worker's apply sweep: a batch of the first proof alone
        assert gate.apply_many(engine, [first["id"]], audit.Operator("worker")) == 1

    got = client.get(f"/v1/proofs/{second['id']}", headers=auth()).json()
    assert (got["status"], got["receipt_id"]) == ("verified", None)
    assert "not credited" in got["detail"] and f"session {sess['id']}" in got["detail"]
    # The tenant's receiver is told, in the credit's transaction, after its first event.
    told = _events(engine, second["id"])
    assert [(e.type, e.sequence) for e in told] == [("proof.verified", 1), ("proof.verified", 2)]
    assert told[1].payload == {k: v for k, v in got.items() if k != "rail_paused"}
    assert told[1].payload.keys() == told[0].payload.keys()
    # The credited proof's own detail is left alone.
    assert (
        "not credited"
        not in client.get(f"/v1/proofs/{first['id']}", headers=auth()).json()["detail"]
    )

    # The second settles after the session was paid: its event says so too.
    chain.statuses["fx0000e0c2"] = "finalized"
    advance(engine, 120)
    worker.refresh_finality(engine, "w1", 100)
    finalized = [e for e in _events(engine, second["id"]) if e.type == "settlement.finalized"]
    assert finalized, "no settlement.finalized event for the second proof"
    assert all("not credited" in e.payload["detail"] for e in finalized)
    assert all(e.payload["receipt_id"] is None for e in finalized)
    # Said once, however often the session's proofs are applied again.
    r = client.post(f"/v1/admin/proofs/{first['id']}/apply", headers=STAFF, json=OP)
    assert r.json()["already_applied"] is True, r.text
    detail = client.get(f"/v1/proofs/{second['id']}", headers=auth()).json()["detail"]
    assert detail.count("not credited") == 1, detail


def test_a_second_transfer_never_brings_back_a_revoked_entitlement(client, chain, engine):
    engine.settings.auto_apply = True
    sess = client.post("/v1/payment-sessions", headers=auth(), json=dict(FAKE_SESSION)).json()
    _pay(chain, sess, "fx0000d0c3")
    first = _submit(client, sess, "fx0000d0c3").json()
    assert worker.auto_apply(engine, 10) == 1
    (ent,) = client.get("/v1/entitlements", params={"owner_id": "alice"}, headers=auth()).json()
    r = client.post(f"/v1/admin/entitlements/{ent['id']}/revoke", headers=STAFF, json=OP)
    assert r.status_code == 200, r.text
    _pay(chain, sess, "fx0000d0c4")
    second = _submit(client, sess, "fx0000d0c4")
    assert second.status_code == 201 and second.json()["status"] == "verified", second.text
    assert worker.auto_apply(engine, 10) == 0
    r = client.post(f"/v1/admin/proofs/{second.json()['id']}/apply", headers=STAFF, json=OP)
    assert r.status_code == 409, r.text
    ents = client.get("/v1/entitlements", params={"owner_id": "alice"}, headers=auth()).json()
    assert [(e["status"], e["receipt_id"]) for e in ents] == [("revoked", ent["receipt_id"])]
    assert first["id"] != second.json()["id"]


def test_no_repairable_issue_offers_an_apply_that_the_gate_always_refuses(client, chain, engine):
    _, second = _session_paid_twice(client, chain)
    advance(engine, 2 * 3600)  # past the verified-without-receipt SLA
    doc = client.get("/v1/admin/assurance", headers=auth(STAFF_TOKEN)).json()
    about_second = [i for i in doc["issues"] if i["subject"] == f"proof {second}"]
    # The README's category for it, once.
    assert [
        i["category"] for i in about_second if i["category"] == "verified_transfer_not_credited"
    ]
    # Every issue offered as repairable must be repairable: the runbook says this proof is a
    # refund to arrange, not a receipt to create.
    for issue in about_second:
        if issue["repairable"]:
            r = client.post(
                "/v1/admin/assurance/repairs",
                headers=auth(STAFF_TOKEN),
                json={"issue_id": issue["id"], **OP},
            )
            assert r.status_code == 200, (
                f"{issue['category']} is offered as repairable ({issue['repair']!r}) but its "
                f"repair answers {r.status_code} {r.text[:200]}"
            )
    # One proof, one finding: the same money is not counted twice in the score.
    assert len(about_second) == 1, [i["category"] for i in about_second]


def test_a_reconciliation_run_reports_it_once(client, chain, engine):
    _, second = _session_paid_twice(client, chain)
    advance(engine, 2 * 3600)
    run = reconciliation.run(
        engine,
        reconciliation.RunRequest(
            scope="rail_proofs", incident_id="INC-DOC", operator_reason="docs walk"
        ),
        "ops1",
    )
    kinds = [f["kind"] for f in run["findings"] if f["subjects"].get("proof_id") == second]
    assert kinds == ["verified_transfer_not_credited"], kinds


def test_a_paid_session_never_holds_a_transfer_another_open_session_could_take(
    client, chain, engine
):
    """A tenant hands its own paid session a transfer another tenant's open session could
    take too: the paid session has no claim to it. Its proof fails, holding nothing (it is
    not held for review, which would keep the payment from the session it was made for), and
    the other session takes it."""
    paid = client.post("/v1/payment-sessions", headers=auth(), json=dict(FAKE_SESSION)).json()
    _pay(chain, paid, "fx0000d0c1")
    first = _submit(client, paid, "fx0000d0c1")
    r = client.post(f"/v1/admin/proofs/{first.json()['id']}/apply", headers=STAFF, json=OP)
    assert r.json()["applied"] is True, r.text
    theirs = client.post(
        "/v1/payment-sessions",
        headers=auth(OTHER_SERVICE_TOKEN),
        json={**FAKE_SESSION, "owner_id": "bob"},
    ).json()
    _pay(chain, theirs, "fx0000d0c3")
    chain.txs["fx0000d0c3"]["refs"] = [theirs["reference"], paid["reference"]]
    grab = _submit(client, paid, "fx0000d0c3")
    assert grab.status_code == 201, grab.text
    assert (grab.json()["status"], grab.json()["failure_code"]) == ("failed", "session_not_open")
    got = client.post(
        "/v1/proofs",
        headers=auth(OTHER_SERVICE_TOKEN),
        json={"session_id": theirs["id"], "proof": "fx0000d0c3"},
    )
    assert got.status_code == 201 and got.json()["status"] == "verified", got.text
    r = client.post(f"/v1/admin/proofs/{got.json()['id']}/apply", headers=STAFF, json=OP)
    assert r.json()["applied"] is True, r.text
