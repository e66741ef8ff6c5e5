"""A token's webhook endpoint writes (create, rotate-secret, delete) take from one rate-limit
bucket: each appends to the one audit chain every tenant's payments append to, under its lock,
and keeps rows for good (audit events are append-only; a deleted endpoint stays as a row), so
one token looping rotate-secret or create+delete must not grow them without bound or queue
other tenants' audited writes behind its own."""

from __future__ import annotations

from sqlalchemy import func, select

from tests.conftest import auth
from tests.test_ratelimit import _limit
from verifier.storage.models import AuditEvent
from verifier.storage.webhook_models import WebhookEndpoint


def _audit_rows(engine) -> int:
    with engine.db.tx() as s:
        return s.scalar(select(func.count()).select_from(AuditEvent))


def _endpoint_rows(engine) -> int:
    with engine.db.tx() as s:
        return s.scalar(select(func.count()).select_from(WebhookEndpoint))


def test_rotating_a_webhook_secret_in_a_loop_is_rate_limited(client, engine):
    _limit(client, rate=1.0, burst=5)  # a clock that does not move: 5 writes, then 429
    r = client.post(
        "/v1/webhook-endpoints",
        headers=auth(),
        json={"url": "http://127.0.0.1:9/hook", "event_types": ["proof.verified"]},
    )
    assert r.status_code == 201, r.text
    ep = r.json()["id"]
    before = _audit_rows(engine)
    codes = [
        client.post(f"/v1/webhook-endpoints/{ep}/rotate-secret", headers=auth()).status_code
        for _ in range(50)
    ]
    assert 429 in codes, f"50 secret rotations in a row, none limited: {set(codes)}"
    assert _audit_rows(engine) - before <= 5


def test_creating_and_deleting_webhook_endpoints_in_a_loop_is_rate_limited(client, engine):
    _limit(client, rate=1.0, burst=5)
    rows, audited = _endpoint_rows(engine), _audit_rows(engine)
    codes = []
    for i in range(25):
        r = client.post(
            "/v1/webhook-endpoints",
            headers=auth(),
            json={"url": f"http://127.0.0.1:9/hook{i}", "event_types": ["proof.verified"]},
        )
        codes.append(r.status_code)
        if r.status_code == 201:
            codes.append(
                client.delete(f"/v1/webhook-endpoints/{r.json()['id']}", headers=auth()).status_code
            )
    assert 429 in codes, f"25 create+delete rounds, none limited: {set(codes)}"
    assert _endpoint_rows(engine) - rows <= 5 and _audit_rows(engine) - audited <= 10
