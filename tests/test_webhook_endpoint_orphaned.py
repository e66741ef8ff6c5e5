"""An endpoint made for owners the deployment later split across two tokens is held by no
token: nobody can list or delete it, and it receives nothing. It must not keep its URL from the
tokens that now act for those owners: registering the URL again retires it (audited), so it
never delivers beside the new one should the old configuration come back."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.conftest import SERVICE_TOKEN, auth, make_settings
from tests.fake_rail import catalog_with_fake
from verifier.core.engine import Engine
from verifier.http.api import create_app
from verifier.storage.models import AuditEvent
from verifier.storage.webhook_models import WebhookEndpoint

THIRD = "svc-token-carol"
HOOK = {"url": "http://127.0.0.1:9/hooks", "event_types": ["proof.verified"]}


def test_an_endpoint_no_token_holds_any_more_gives_its_url_back(db_url, client):
    made = client.post("/v1/webhook-endpoints", headers=auth(SERVICE_TOKEN), json=HOOK)
    assert made.status_code == 201, made.text
    orphan = made.json()["id"]
    # The deployment splits the token's two owners across two tokens (a restart with new
    # configuration): no token acts for both any more.
    split = Engine(
        make_settings(db_url, service_tokens={SERVICE_TOKEN: ["alice"], THIRD: ["alice-2"]}),
        catalog=catalog_with_fake(),
    )
    try:
        with TestClient(create_app(split), raise_server_exceptions=False) as c:
            for token in (SERVICE_TOKEN, THIRD):
                listed = [
                    e["id"] for e in c.get("/v1/webhook-endpoints", headers=auth(token)).json()
                ]
                assert orphan not in listed
                again = c.post("/v1/webhook-endpoints", headers=auth(token), json=HOOK)
                assert again.status_code == 201, (token, again.text)
            # The URL is still one endpoint per owner: a second create for the same owner is
            # refused as before.
            dup = c.post("/v1/webhook-endpoints", headers=auth(SERVICE_TOKEN), json=HOOK)
            assert (
                dup.status_code == 409 and dup.json()["error"]["code"] == "webhook_endpoint_exists"
            )
        with split.db.tx() as s:
            ep = s.get(WebhookEndpoint, orphan)
            assert ep is not None and ep.active is False
            retired = s.scalars(
                select(AuditEvent.action).where(AuditEvent.subject_id == orphan)
            ).all()
        assert "webhook_endpoint.retired" in retired
    finally:
        split.db.dispose()


def test_an_endpoint_a_token_still_holds_keeps_its_url(client):
    made = client.post("/v1/webhook-endpoints", headers=auth(SERVICE_TOKEN), json=HOOK)
    assert made.status_code == 201, made.text
    again = client.post("/v1/webhook-endpoints", headers=auth(SERVICE_TOKEN), json=HOOK)
    assert again.status_code == 409 and again.json()["error"]["code"] == "webhook_endpoint_exists"
