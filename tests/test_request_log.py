"""The request-log middleware around a tiny FastAPI app: one structured line per request with
method, route template, status, duration, principal kind (never the token), incident id and a
request id taken from X-Request-Id or generated, echoed and readable while the request runs."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import pytest
from fastapi import FastAPI, Header
from fastapi.testclient import TestClient

from verifier.http.request_log import (
    RequestLogMiddleware,
    current_request_id,
    request_id_var,
    settings_principal,
)

STAFF, SERVICE = "staff-secret-token", "svc-secret-token"


class FakeSettings:
    def staff_name(self, token: str) -> str | None:
        return "ops1" if token == STAFF else None

    def service_owners(self, token: str) -> list[str] | None:
        return ["bob", "alice"] if token == SERVICE else None


def tiny_app() -> FastAPI:
    app = FastAPI()

    @app.get("/v1/items/{item_id}")
    def item(item_id: str) -> dict[str, Any]:  # sync: runs in a worker thread
        return {"item_id": item_id, "request_id": current_request_id()}

    @app.post("/v1/items/{item_id}/touch")
    async def touch(item_id: str, x_request_id: str | None = Header(None)) -> dict[str, Any]:
        return {"request_id": current_request_id(), "header": x_request_id}

    @app.get("/v1/boom")
    def boom() -> None:
        raise RuntimeError("kaput")

    return app


@pytest.fixture
def logged():
    docs: list[dict[str, Any]] = []
    app = RequestLogMiddleware(
        tiny_app(), principal=settings_principal(FakeSettings()), emit=docs.append
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, docs


def test_one_line_per_request_with_route_template_principal_and_incident(logged):
    client, docs = logged
    r = client.get(
        "/v1/items/it_42",
        headers={
            "Authorization": f"Bearer {STAFF}",
            "X-Request-Id": "req-abc.1",
            "X-Incident-Id": "INC-9",
        },
    )
    assert r.status_code == 200
    assert r.headers["X-Request-Id"] == "req-abc.1"
    assert r.json() == {"item_id": "it_42", "request_id": "req-abc.1"}  # seen by the handler
    [doc] = docs
    assert doc["duration_ms"] >= 0
    del doc["duration_ms"]
    assert doc == {
        "request_id": "req-abc.1",
        "method": "GET",
        "route": "/v1/items/{item_id}",
        "status": 200,
        "principal": "staff",
        "owner": "ops1",
        "incident_id": "INC-9",
    }
    assert STAFF not in json.dumps(doc)

    r = client.post("/v1/items/x/touch", headers={"Authorization": f"Bearer {SERVICE}"})
    assert r.status_code == 200
    rid = r.headers["X-Request-Id"]
    assert re.fullmatch(r"[0-9a-f]{32}", rid)  # generated: uuid4 hex
    assert r.json()["request_id"] == rid
    assert docs[1]["principal"] == "service" and docs[1]["owner"] == "alice,bob"
    assert docs[1]["route"] == "/v1/items/{item_id}/touch" and "incident_id" not in docs[1]
    assert SERVICE not in json.dumps(docs[1])
    assert len(docs) == 2


def test_unknown_or_missing_token_unmatched_route_and_fresh_ids(logged):
    client, docs = logged
    r1 = client.get("/nowhere/123", headers={"Authorization": "Bearer who-knows"})
    r2 = client.get("/nowhere/123")
    assert (r1.status_code, r2.status_code) == (404, 404)
    assert [(d["route"], d["status"], d["principal"]) for d in docs] == [
        ("unmatched", 404, "none"),
        ("unmatched", 404, "none"),
    ]
    assert "owner" not in docs[0] and "who-knows" not in json.dumps(docs[0])
    assert r1.headers["X-Request-Id"] != r2.headers["X-Request-Id"]


def test_two_authorization_lines_are_nobodys_request(logged):
    # The API refuses them (401): the line is not the first line's principal.
    client, docs = logged
    lines = [("Authorization", f"Bearer {STAFF}"), ("Authorization", f"Bearer {SERVICE}")]
    client.get("/v1/items/a", headers=lines)
    assert docs[0]["principal"] == "none" and "owner" not in docs[0], docs


@pytest.mark.parametrize("bad", ["has space", "x" * 129, "semi;colon", 'quote"d'])
def test_a_malformed_request_id_is_replaced(logged, bad):
    client, docs = logged
    r = client.get("/v1/items/a", headers={"X-Request-Id": bad})
    rid = r.headers["X-Request-Id"]
    assert rid != bad and re.fullmatch(r"[0-9a-f]{32}", rid)
    assert docs[0]["request_id"] == rid == r.json()["request_id"]


def test_a_failing_handler_is_logged_as_500_and_the_context_is_reset(logged):
    client, docs = logged
    r = client.get("/v1/boom", headers={"X-Request-Id": "rid-boom"})
    assert r.status_code == 500
    assert [(d["route"], d["status"], d["request_id"]) for d in docs] == [
        ("/v1/boom", 500, "rid-boom")
    ]
    assert current_request_id() is None and request_id_var.get() is None


def test_the_app_header_is_replaced_not_doubled():
    async def app(scope, receive, send):
        await send(
            {
                "type": "http.response.start",
                "status": 204,
                "headers": [(b"x-request-id", b"from-app")],
            }
        )
        await send({"type": "http.response.body", "body": b""})

    client = TestClient(RequestLogMiddleware(app, emit=lambda d: None))  # no lifespan
    r = client.get("/", headers={"X-Request-Id": "rid-1"})
    assert r.headers.get_list("X-Request-Id") == ["rid-1"]


def test_default_sink_is_one_log_record_carrying_the_document(caplog):
    app = RequestLogMiddleware(tiny_app(), principal=settings_principal(FakeSettings()))
    with caplog.at_level(logging.INFO, logger="railproof.request"), TestClient(app) as client:
        client.get(
            "/v1/items/z", headers={"Authorization": f"Bearer {STAFF}", "X-Request-Id": "rid-log"}
        )
    records = [r for r in caplog.records if r.name == "railproof.request"]
    assert len(records) == 1
    rec = records[0]
    assert rec.getMessage().startswith("GET /v1/items/{item_id} 200 ")
    assert rec.http_request["request_id"] == "rid-log"
    assert rec.http_request["principal"] == "staff"
    line = json.dumps(rec.http_request)  # what a JSON formatter merges into the line
    assert json.loads(line)["route"] == "/v1/items/{item_id}" and STAFF not in line


def test_a_broken_sink_never_breaks_the_request():
    def sink(_: dict[str, Any]) -> None:
        raise ValueError("disk full")

    with TestClient(RequestLogMiddleware(tiny_app(), emit=sink)) as client:
        assert client.get("/v1/items/a").status_code == 200


def test_non_http_scopes_pass_through():
    seen = []

    async def app(scope, receive, send):
        seen.append(scope["type"])

    import asyncio

    asyncio.run(RequestLogMiddleware(app, emit=seen.append)({"type": "lifespan"}, None, None))
    assert seen == ["lifespan"]


def test_added_as_fastapi_middleware_it_still_sees_the_route_template():
    docs: list[dict[str, Any]] = []
    app = tiny_app()
    app.add_middleware(
        RequestLogMiddleware, principal=settings_principal(FakeSettings()), emit=docs.append
    )
    with TestClient(app) as client:
        r = client.get("/v1/items/q", headers={"X-Incident-Id": "INC-1"})
    assert r.json()["request_id"] == r.headers["X-Request-Id"]
    assert [(d["route"], d["status"], d["incident_id"]) for d in docs] == [
        ("/v1/items/{item_id}", 200, "INC-1")
    ]


def test_the_app_echoes_the_request_id_and_stamps_it_on_audit_events(client, engine):
    from sqlalchemy import select

    from tests.conftest import auth
    from verifier.storage.models import AuditEvent

    r = client.post(
        "/v1/payment-sessions",
        headers={**auth(), "X-Request-Id": "req-42"},
        json={
            "owner_id": "alice",
            "rail_id": "fake_live",
            "access_product_id": "p",
            "amount": 5,
            "recipient": "fatreasury",
        },
    )
    assert r.status_code == 201, r.text
    assert r.headers["X-Request-Id"] == "req-42"
    with engine.db.tx() as s:
        ev = s.scalars(select(AuditEvent).where(AuditEvent.action == "session.opened")).one()
    assert ev.data["request_id"] == "req-42"
    # Without one, the app makes one up and still echoes it.
    r = client.get("/healthz")
    assert len(r.headers["X-Request-Id"]) == 32


def test_a_client_that_hangs_up_mid_upload_is_499_not_a_server_error(engine, caplog):
    """A client that sends part of a body and closes gets no answer, and the request is
    counted and logged as closed by its client (499), not as a server error: anyone could
    otherwise raise the 5xx alert without a token."""
    import socket
    import time

    import httpx

    from tests.live_server import LiveServer
    from verifier.http.api import create_app

    with (
        caplog.at_level(logging.INFO, logger="railproof.request"),
        LiveServer(create_app(engine)) as server,
    ):
        for _ in range(5):
            with socket.create_connection(("127.0.0.1", server.port)) as sock:
                sock.sendall(
                    b"POST /v1/proofs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 100\r\n\r\n" + b'{"session_id": '
                )
        deadline = time.monotonic() + 10
        while True:
            metrics = httpx.get(f"{server.url}/metrics").text
            closed = [ln for ln in metrics.splitlines() if 'status="499"' in ln]
            if closed or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert closed and closed[0].startswith("railproof_http_requests_total{")
    assert closed[0].endswith(" 5.0"), closed
    assert not [ln for ln in metrics.splitlines() if 'status="500"' in ln]
    logged = [
        (r.http_request["route"], r.http_request["status"])
        for r in caplog.records
        if r.name == "railproof.request" and r.http_request["method"] == "POST"
    ]
    assert logged == [("/v1/proofs", 499)] * 5
