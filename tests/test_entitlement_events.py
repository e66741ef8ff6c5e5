# ruff: noqa: F811  (fixtures imported from tests.test_webhooks)
"""What a backend granting access learns by events: never an older state after a newer one
(a dead letter replayed after a later event of its resource was sent), and a reorg flag on
an active entitlement as an event of its own, with `updated_at` moved."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from tests.conftest import STAFF_TOKEN, auth
from tests.test_webhooks import (  # noqa: F401  (fixtures)
    APPLY,
    FAST,
    _paid,
    _session,
    _submit,
    api,
    drain,
    receiver,
    subscribe,
)
from verifier.services import webhooks
from verifier.storage.webhook_models import DeliveryStatus, OutboxEvent, WebhookDelivery


def _applied(api, chain, tx: str):
    sess = _session(api)
    _paid(chain, sess, tx)
    proof = _submit(api, sess, tx)
    assert proof["status"] == "verified"
    r = api.post(f"/v1/admin/proofs/{proof['id']}/apply", headers=auth(STAFF_TOKEN), json=APPLY)
    assert r.status_code == 200, r.text
    return r.json()["entitlement_id"]


def _event_id(engine, type_: str, rid: str) -> str:
    with engine.db.tx() as s:
        return s.scalar(
            select(OutboxEvent.id).where(OutboxEvent.type == type_, OutboxEvent.resource_id == rid)
        )


def test_a_dead_letter_older_than_an_event_sent_since_is_not_replayed(engine, api, receiver, chain):
    subscribe(api, receiver, ["entitlement.activated", "entitlement.revoked"])
    ent_id = _applied(api, chain, "fx00a8a8a1")
    activated = _event_id(engine, "entitlement.activated", ent_id)
    receiver.fail_ids = {activated}
    t = drain(engine)
    with engine.db.tx() as s:
        d = s.scalar(select(WebhookDelivery).where(WebhookDelivery.event_id == activated))
        assert d.status == DeliveryStatus.dead_letter
    staff = auth(STAFF_TOKEN)
    r = api.post(f"/v1/admin/entitlements/{ent_id}/revoke", headers=staff, json=APPLY)
    assert r.status_code == 200, r.text
    drain(engine, start=t + timedelta(seconds=1))
    receiver.recover()
    receiver.fail_ids = set()
    ops = {"confirm": True, "incident_id": "INC-8", "operator_reason": "receiver fixed"}
    r = api.post(f"/v1/admin/webhook-events/{activated}/replay", headers=staff, json=ops)
    assert (r.status_code, r.json()["error"]["code"]) == (409, "event_superseded"), r.text
    webhooks.deliver_due(engine, "w1", config=FAST)
    with engine.db.tx() as s:
        d = s.scalar(select(WebhookDelivery).where(WebhookDelivery.event_id == activated))
        assert d.status == DeliveryStatus.dead_letter  # nothing was put back
    seen = [
        (e["type"], e["data"]["status"]) for e in receiver.wait_for(1) if e["data"]["id"] == ent_id
    ]
    assert seen == [("entitlement.revoked", "revoked")], seen


def test_a_reorg_under_an_active_entitlement_is_an_entitlement_event(db_url):
    from tests.conftest import make_settings
    from tests.fake_rail import ScriptedChain, catalog_with_fake, fake_rail_toml
    from tests.helpers import advance
    from verifier.core.engine import Engine
    from verifier.services import audit, gate, proofs, queries, sessions
    from verifier.worker import loop as worker

    rail = fake_rail_toml("fake_depth", finality='{ mode = "depth", confirmations = 10 }')
    e = Engine(
        make_settings(db_url, apply_rail_allowlist=["fake_depth"]), catalog=catalog_with_fake(rail)
    )
    chain = ScriptedChain()
    e.chains.set_transport("fakenet", chain)
    e.ensure_rail_states()
    try:
        sess = sessions.open_session(
            e,
            sessions.NewSession(
                owner_id="alice",
                rail_id="fake_depth",
                access_product_id="pro",
                amount=1000,
                recipient="fatreasury",
            ),
            actor="test",
        )
        tx = "fx000000000000a8a8"
        chain.txs[tx] = {
            "status": "ok",
            "to": "fatreasury",
            "amount": 1000,
            "asset": "fusd",
            "time": int(e.now().timestamp()) + 5,
            "finality": "finalized",
            "refs": [sess["reference"]],
            "slot": 1,
        }
        chain.statuses[tx] = "finalized"
        advance(e, 10)
        view, _ = proofs.submit_proof(e, sess["id"], tx, ["alice"])
        op = audit.Operator("ops1", "INC-8", "reorg drill")
        ent_id = gate.apply(e, view["id"], op, gate.Via.staff)["entitlement_id"]
        (b,) = [x for x in queries.entitlements_of(e, "alice", 10) if x["id"] == ent_id]
        assert b["status"] == "active" and b["reorg_flagged"] is False

        chain.statuses[tx] = "reorged"
        advance(e, 3600)
        worker.sweep(e, "w1")
        (a,) = [x for x in queries.entitlements_of(e, "alice", 10) if x["id"] == ent_id]
        assert a["status"] == "active" and a["reorg_flagged"] is True
        assert a["updated_at"] != b["updated_at"]
        with e.db.tx() as s:
            got = s.execute(
                select(OutboxEvent.type, OutboxEvent.payload)
                .where(
                    OutboxEvent.resource_type == "entitlement",
                    OutboxEvent.resource_id == ent_id,
                )
                .order_by(OutboxEvent.sequence)
            ).all()
        assert [t for t, _ in got] == ["entitlement.activated", "entitlement.reorg_flagged"]
        assert got[1][1]["reorg_flagged"] is True
        # Flagged once: later sweeps add nothing.
        advance(e, 3600)
        worker.sweep(e, "w1")
        with e.db.tx() as s:
            n = s.scalar(
                select(OutboxEvent.id)
                .where(OutboxEvent.resource_id == ent_id)
                .order_by(OutboxEvent.sequence.desc())
            )
        assert n == _event_id(e, "entitlement.reorg_flagged", ent_id)
    finally:
        e.db.dispose()
