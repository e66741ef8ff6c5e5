"""Deliveries follow Standard Webhooks: railproof delivers to a real receiver on 127.0.0.1 and
the captured request is checked with the specification's reference verifier
(`standardwebhooks.Webhook(secret).verify(body, headers)`), not with railproof's own code.
Secrets stored before the format (not base64 after whsec_) never sign; rotating the secret
restores delivery. On SQLite and PostgreSQL (the `engine` fixture is parametrized)."""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import pytest
from sqlalchemy import select
from standardwebhooks import Webhook, WebhookVerificationError

from tests.conftest import CLOCK, OTHER_SERVICE_TOKEN, auth
from tests.webhook_receiver import Receiver
from verifier.services import webhooks
from verifier.services.events import emit
from verifier.storage.models import AuditEvent
from verifier.storage.webhook_models import DeliveryStatus, WebhookDelivery, WebhookEndpoint

CFG = webhooks.DeliveryConfig(
    timeout_s=2.0,
    max_attempts=3,
    backoff_initial_s=1.0,
    backoff_max_s=2.0,
    backoff_jitter_s=0.5,
    lease_s=5.0,
    concurrency=2,
)
LATER = timedelta(seconds=CFG.backoff_max_s + CFG.backoff_jitter_s + 1)  # past any backoff
# What railproof stored before Standard Webhooks: whsec_ + secrets.token_urlsafe(32).
LEGACY_SECRET = "whsec_q3-Lx_9vTzr0AbQ1Xk2-YpN8wUe_Hs7JdFgC5mVaRiO"


@pytest.fixture
def receiver():
    with Receiver() as r:
        yield r


def subscribe(client, rcv: Receiver, token: str | None = None) -> dict:
    r = client.post(
        "/v1/webhook-endpoints",
        headers=auth(token) if token else auth(),
        json={"url": rcv.url, "event_types": ["proof.verified"]},
    )
    assert r.status_code == 201, r.text
    rcv.secret = r.json()["secret"]
    return r.json()


def emit_proof_verified(engine, rid: str = "p1") -> str:
    with engine.db.tx() as s:
        return emit(s, engine.now(), "proof.verified", "alice", "proof", rid, {"id": rid})


def delivery_of(engine, event_id: str) -> WebhookDelivery:
    with engine.db.tx() as s:
        return s.scalar(select(WebhookDelivery).where(WebhookDelivery.event_id == event_id))


def test_a_delivery_verifies_with_the_reference_verifier(engine, client, receiver):
    ep = subscribe(client, receiver)
    secret = ep["secret"]
    assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) >= 24
    ev = emit_proof_verified(engine)
    receiver.fail_next = 1  # the first try fails: the retry must carry the same webhook-id
    webhooks.deliver_due(engine, "w1", now=CLOCK, config=CFG)
    webhooks.deliver_due(engine, "w1", now=CLOCK + LATER, config=CFG)
    assert delivery_of(engine, ev).status == DeliveryStatus.delivered
    assert len(receiver.requests) == 2

    for req in receiver.requests:
        headers, body = req["headers"], req["body"]
        assert headers["webhook-id"] == ev  # the event id, stable across retries
        assert headers["webhook-timestamp"].isdigit()
        assert headers["webhook-signature"].startswith("v1,")
        event = Webhook(secret).verify(body, headers)  # raises unless valid
        assert event == json.loads(body) and event["id"] == ev
        assert event["type"] == "proof.verified" and event["data"] == {"id": "p1"}

    headers, body = receiver.requests[-1]["headers"], receiver.requests[-1]["body"]
    tampered = body.replace(b'"p1"', b'"p2"')
    assert tampered != body
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(tampered, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(webhooks.new_secret()).verify(body, headers)  # the wrong secret
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, {**headers, "webhook-id": "evt_" + "0" * 32})
    # A captured delivery sent again later is refused: its signature covers its timestamp.
    stale = {**headers, "webhook-timestamp": str(int(headers["webhook-timestamp"]) - 3600)}
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, stale)


def test_a_stale_delivery_is_refused_by_the_receiver_and_retried(
    engine, client, receiver, monkeypatch
):
    subscribe(client, receiver)
    ev = emit_proof_verified(engine)
    real = webhooks.signing_time
    monkeypatch.setattr(webhooks, "signing_time", lambda: real() - 3600)  # a sender clock off
    webhooks.deliver_due(engine, "w1", now=CLOCK, config=CFG)
    d = delivery_of(engine, ev)
    assert receiver.rejected == 1 and receiver.ids() == []
    assert d.status == DeliveryStatus.pending and d.last_status_code == 400
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(receiver.secret).verify(
            receiver.requests[0]["body"], receiver.requests[0]["headers"]
        )

    monkeypatch.setattr(webhooks, "signing_time", real)
    webhooks.deliver_due(engine, "w1", now=CLOCK + LATER, config=CFG)
    assert receiver.ids() == [ev] and delivery_of(engine, ev).status == DeliveryStatus.delivered


def test_secret_format_checks():
    assert webhooks.secret_problem(webhooks.new_secret()) is None
    assert webhooks.new_secret() != webhooks.new_secret()
    assert "not base64" in webhooks.secret_problem(LEGACY_SECRET)
    assert "whsec_" in webhooks.secret_problem("c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0")
    short = "whsec_" + base64.b64encode(b"x" * 16).decode()
    assert "shorter" in webhooks.secret_problem(short)
    with pytest.raises(ValueError, match="not base64"):
        webhooks.signed_headers(LEGACY_SECRET, "evt_1", b"{}", 1_800_000_000)


def test_a_legacy_secret_never_signs_and_rotation_restores_delivery(engine, client, receiver):
    ep = subscribe(client, receiver)
    with engine.db.tx() as s:
        s.get(WebhookEndpoint, ep["id"]).secret = LEGACY_SECRET  # as stored before the change
    ev = emit_proof_verified(engine)
    out = webhooks.deliver_due(engine, "w1", now=CLOCK, config=CFG)
    d = delivery_of(engine, ev)
    assert out["retrying"] == 1 and receiver.requests == []  # nothing was sent
    assert d.status == DeliveryStatus.pending and d.last_error.startswith("not sent")
    assert f"/v1/webhook-endpoints/{ep['id']}/rotate-secret" in d.last_error
    assert LEGACY_SECRET not in d.last_error and LEGACY_SECRET[6:] not in d.last_error

    url = f"/v1/webhook-endpoints/{ep['id']}/rotate-secret"
    other = client.post(url, headers=auth(OTHER_SERVICE_TOKEN))
    assert other.status_code == 404  # another token's endpoint answers like a missing one
    assert other.json()["error"]["code"] == "webhook_endpoint_not_found"
    assert client.post(url).status_code == 401
    missing = client.post("/v1/webhook-endpoints/whe_nope/rotate-secret", headers=auth())
    assert missing.status_code == 404
    r = client.post(url, headers=auth())
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    secret = r.json()["secret"]
    assert webhooks.secret_problem(secret) is None and secret != ep["secret"]
    assert r.json()["id"] == ep["id"] and r.json()["active"] is True
    assert secret not in client.get("/v1/webhook-endpoints", headers=auth()).text
    with engine.db.tx() as s:
        a = s.scalar(
            select(AuditEvent).where(AuditEvent.action == "webhook_endpoint.secret_rotated")
        )
        assert a.subject_id == ep["id"] and a.data["replaced_legacy_secret"] is True
        assert secret not in json.dumps(a.data)

    receiver.secret = secret  # the owner updates its receiver
    webhooks.deliver_due(engine, "w1", now=CLOCK + LATER, config=CFG)
    assert delivery_of(engine, ev).status == DeliveryStatus.delivered
    req = receiver.requests[-1]
    assert Webhook(secret).verify(req["body"], req["headers"])["id"] == ev
    with pytest.raises(WebhookVerificationError):
        Webhook(ep["secret"]).verify(req["body"], req["headers"])  # the replaced secret
