# ruff: noqa: F811  (fixtures imported from tests.test_webhooks)
"""A staff replay of a dead letter must never hand a receiver an older state of a resource as
its current one. tests/test_entitlement_events.py covers a later event that was *sent*; here
the later event (the revocation) dead-lettered too: replaying only `entitlement.activated`
is accepted and the receiver, which never learned of the revocation, grants access again."""

from __future__ import annotations

from sqlalchemy import select

from tests.conftest import STAFF_TOKEN, auth
from tests.test_entitlement_events import _applied, _event_id
from tests.test_webhooks import (  # noqa: F401  (fixtures)
    APPLY,
    FAST,
    api,
    drain,
    receiver,
    subscribe,
)
from verifier.services import webhooks
from verifier.storage.webhook_models import DeliveryStatus, WebhookDelivery


def _status(engine, event_id: str) -> str:
    with engine.db.tx() as s:
        return s.scalar(select(WebhookDelivery.status).where(WebhookDelivery.event_id == event_id))


def test_replaying_an_activation_behind_a_dead_lettered_revocation_is_refused(
    engine, api, receiver, chain
):
    subscribe(api, receiver, ["entitlement.activated", "entitlement.revoked"])
    ent_id = _applied(api, chain, "fx00a8a8a2")
    activated = _event_id(engine, "entitlement.activated", ent_id)
    staff = auth(STAFF_TOKEN)
    r = api.post(f"/v1/admin/entitlements/{ent_id}/revoke", headers=staff, json=APPLY)
    assert r.status_code == 200, r.text
    revoked = _event_id(engine, "entitlement.revoked", ent_id)
    receiver.fail_ids = {activated, revoked}  # the receiver is down for both
    drain(engine)
    assert _status(engine, activated) == DeliveryStatus.dead_letter
    assert _status(engine, revoked) == DeliveryStatus.dead_letter
    receiver.recover()
    receiver.fail_ids = set()

    # The operator replays the activation a customer asks about: the entitlement is revoked,
    # and the receiver would apply "active" as its current state.
    ops = {"confirm": True, "incident_id": "INC-9", "operator_reason": "receiver fixed"}
    r = api.post(f"/v1/admin/webhook-events/{activated}/replay", headers=staff, json=ops)
    webhooks.deliver_due(engine, "w1", config=FAST)
    seen = [
        (e["type"], e["data"]["status"])
        for e in (receiver.wait_for(1, deadline_s=2) if r.status_code == 200 else [])
        if e["data"]["id"] == ent_id
    ]
    # Refused, as when the revocation was sent: replay the revocation (the current state).
    assert (r.status_code, r.json().get("error", {}).get("code")) == (409, "event_superseded"), (
        f"replay accepted ({r.status_code}); the receiver was then sent {seen} for an "
        "entitlement staff revoked"
    )
    assert _status(engine, activated) == DeliveryStatus.dead_letter  # nothing was put back
