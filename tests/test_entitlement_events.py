# ruff: noqa: F811  (fixtures imported from tests.test_webhooks)
"""What a backend granting access learns by events: never an older state after a newer one
(a dead letter replayed after a later event of its resource was sent). A reorg flag on an
active entitlement as an event of its own: tests/test_reorg_flag_alert.py."""

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
