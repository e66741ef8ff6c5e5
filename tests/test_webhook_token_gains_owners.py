"""A token manages (lists, rotates, deletes) the webhook endpoints made for owners it all acts
for. README: "A token that gains owners keeps its endpoints". Endpoints used to be keyed by the
token's principal name, built from its owner list, so once an owner was added to a token the
same token no longer listed its endpoint, could not rotate or delete it (404), and could
register the same URL again (201), every event then reaching that receiver twice."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.conftest import OTHER_SERVICE_TOKEN, SERVICE_TOKEN, auth, make_settings
from tests.fake_rail import catalog_with_fake
from verifier.core.engine import Engine
from verifier.http.api import create_app

BODY = {"url": "http://127.0.0.1:9/hooks", "event_types": ["proof.verified"]}
THIRD = "svc-token-carol"


def _app(db_url, tokens):
    return Engine(make_settings(db_url, service_tokens=tokens), catalog=catalog_with_fake())


def test_a_token_that_gains_an_owner_keeps_managing_its_endpoints(db_url, engine, client):
    made = client.post("/v1/webhook-endpoints", headers=auth(SERVICE_TOKEN), json=BODY)
    assert made.status_code == 201, made.text
    ep_id = made.json()["id"]

    # The deployment adds owners to the same token (a restart with new configuration).
    grown = _app(
        db_url, {SERVICE_TOKEN: ["alice", "alice-2", "alice-3"], OTHER_SERVICE_TOKEN: ["bob"]}
    )
    try:
        with TestClient(create_app(grown), raise_server_exceptions=False) as c:
            listed = c.get("/v1/webhook-endpoints", headers=auth(SERVICE_TOKEN))
            assert [e["id"] for e in listed.json()] == [ep_id], listed.text
            again = c.post("/v1/webhook-endpoints", headers=auth(SERVICE_TOKEN), json=BODY)
            assert again.status_code == 409, again.text  # not a second copy of every delivery
            assert again.json()["error"]["code"] == "webhook_endpoint_exists"
            # Another tenant's token still sees nothing of it, and cannot touch it.
            assert c.get("/v1/webhook-endpoints", headers=auth(OTHER_SERVICE_TOKEN)).json() == []
            other = c.delete(f"/v1/webhook-endpoints/{ep_id}", headers=auth(OTHER_SERVICE_TOKEN))
            assert other.status_code == 404, other.text
            rotated = c.post(
                f"/v1/webhook-endpoints/{ep_id}/rotate-secret", headers=auth(SERVICE_TOKEN)
            )
            assert rotated.status_code == 200, rotated.text
            gone = c.delete(f"/v1/webhook-endpoints/{ep_id}", headers=auth(SERVICE_TOKEN))
            assert gone.status_code == 200, gone.text
    finally:
        grown.db.dispose()


def test_a_token_that_lost_an_owner_no_longer_manages_an_endpoint_made_for_it(db_url, client):
    made = client.post("/v1/webhook-endpoints", headers=auth(SERVICE_TOKEN), json=BODY)
    ep_id = made.json()["id"]
    # The endpoint was made for alice and alice-2; they move to another token, and the old
    # token keeps only alice.
    moved = _app(db_url, {SERVICE_TOKEN: ["alice"], THIRD: ["alice", "alice-2"]})
    try:
        with TestClient(create_app(moved), raise_server_exceptions=False) as c:
            assert c.get("/v1/webhook-endpoints", headers=auth(SERVICE_TOKEN)).json() == []
            r = c.delete(f"/v1/webhook-endpoints/{ep_id}", headers=auth(SERVICE_TOKEN))
            assert r.status_code == 404, r.text
            # The token now acting for both manages what was made for them.
            listed = c.get("/v1/webhook-endpoints", headers=auth(THIRD)).json()
            assert [e["id"] for e in listed] == [ep_id]
    finally:
        moved.db.dispose()
