"""The Python client (clients/python, `railproof_client`):

- its models agree with the app's OpenAPI document, field by field (names, types, required),
  and every operation it calls exists there with the bodies it sends and reads;
- its retries: 409 idempotency_in_progress, 429 (Retry-After honoured), 5xx and lost
  connections are retried, bounded, with the same Idempotency-Key; anything else is raised at
  once as a typed error carrying the API's code, message and field (httpx.MockTransport);
- webhook verification with Standard Webhooks, against deliveries signed the server's way;
- end to end against `railproof serve` (SQLite, recorded chain): the README's recorded payment
  from session to verified proof, idempotent replays, typed errors, and a signed delivery made
  by `railproof worker` verified by the client.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
import standardwebhooks
from pydantic import BaseModel
from railproof_client import (
    OPERATIONS,
    AsyncRailproofClient,
    AuthenticationError,
    ConflictError,
    ConnectionFailed,
    Entitlement,
    InvalidRequestError,
    NotFoundError,
    RailproofClient,
    RateLimitedError,
    ServerError,
    Session,
    UnexpectedResponse,
    WebhookVerificationError,
    WebhookVerifier,
    verify_webhook,
)
from railproof_client.client import VERSION as CLIENT_VERSION
from railproof_client.models import OPENAPI_SCHEMAS

from tests.live_server import closed_port, handler_server
from tests.procs import REPO, Api, Worker, base_env, migrate
from tests.webhook_receiver import Receiver
from verifier.core.config import Settings
from verifier.core.engine import Engine
from verifier.http.app import create_app
from verifier.services.webhooks import new_secret, signed_headers

# -- the models and the OpenAPI document ------------------------------------------------------


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    # The shipped catalog and no deployment settings, as scripts/gen_clients.py builds it.
    engine = Engine(Settings(database_url="sqlite:///:memory:", env={}))
    return create_app(engine).openapi()


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[1]


def _types(schema: dict[str, Any], name_of_ref: Callable[[str], str]) -> frozenset[str]:
    """A property's JSON types, flattened: {"string:date-time", "null"}, {"ref:SettlementOut"}."""
    if "$ref" in schema:
        return frozenset({name_of_ref(_ref_name(schema["$ref"]))})
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return frozenset().union(*(_types(s, name_of_ref) for s in schema[key]))
    kind = schema.get("type")
    if kind == "array":
        items = ",".join(sorted(_types(schema.get("items", {}), name_of_ref)))
        return frozenset({f"array[{items}]"})
    if kind == "string" and "enum" in schema:
        return frozenset({"string{" + ",".join(sorted(schema["enum"])) + "}"})
    if kind == "string" and "format" in schema:
        return frozenset({f"string:{schema['format']}"})
    if kind == "integer":
        return frozenset({"integer"})
    return frozenset({kind or "any"})


CLIENT_NAMES = {cls.__name__: name for cls, name in OPENAPI_SCHEMAS.items()}


def _server_fields(document: dict[str, Any], name: str) -> tuple[dict[str, Any], set[str]]:
    schema = document["components"]["schemas"][name]
    modelled = set(OPENAPI_SCHEMAS.values())

    # A schema the client does not model (an admin report inside an error) is an object to it.
    def ref(n: str) -> str:
        return f"ref:{n}" if n in modelled else "object"

    fields = {k: _types(v, ref) for k, v in schema["properties"].items()}
    return fields, set(schema.get("required", []))


def _client_fields(
    cls: type[BaseModel], mode: Literal["validation", "serialization"]
) -> tuple[dict[str, Any], set[str]]:
    schema = cls.model_json_schema(mode=mode)

    def ref(n: str) -> str:
        return f"ref:{CLIENT_NAMES[n]}" if n in CLIENT_NAMES else "object"

    fields = {k: _types(v, ref) for k, v in schema["properties"].items()}
    return fields, set(schema.get("required", []))


REQUESTS = {cls for op in OPERATIONS.values() if (cls := op[0]) is not None}


@pytest.mark.parametrize("cls", list(OPENAPI_SCHEMAS), ids=lambda c: c.__name__)
def test_each_model_matches_its_schema_in_the_document(cls, document):
    name = OPENAPI_SCHEMAS[cls]
    server, server_required = _server_fields(document, name)
    if cls in REQUESTS:
        client, client_required = _client_fields(cls, "serialization")
    else:
        client, client_required = _client_fields(cls, "validation")
    assert set(client) == set(server), (
        f"{cls.__name__} vs {name}: only in the client {set(client) - set(server)}, "
        f"only in the document {set(server) - set(client)}"
    )
    for field, server_types in server.items():
        if cls in REQUESTS:
            # Whatever the client sends, the server accepts...
            assert client[field] <= server_types, (cls.__name__, field, client[field], server_types)
        else:
            # ...and whatever the server answers, the client reads.
            assert server_types <= client[field], (cls.__name__, field, server_types, client[field])
    if cls in REQUESTS:
        assert server_required <= client_required, (cls.__name__, server_required - client_required)
    else:
        assert client_required <= server_required, (cls.__name__, client_required - server_required)


def _body_ref(content: dict[str, Any]) -> str:
    schema = content["application/json"]["schema"]
    if schema.get("type") == "array":
        schema = schema["items"]
    return _ref_name(schema["$ref"])


CLIENT_QUERY = {("get", "/v1/entitlements"): {"owner_id"}}  # RailproofClient.list_entitlements


@pytest.mark.parametrize("op", list(OPERATIONS), ids=lambda op: f"{op[0].upper()} {op[1]}")
def test_each_operation_is_in_the_document_with_the_clients_bodies(op, document):
    method, path = op
    request_model, response_model = OPERATIONS[op]
    assert path in document["paths"] and method in document["paths"][path], op
    spec = document["paths"][path][method]
    if request_model is None:
        assert "requestBody" not in spec, op
    else:
        assert _body_ref(spec["requestBody"]["content"]) == OPENAPI_SCHEMAS[request_model]
        headers = {p["name"] for p in spec.get("parameters", []) if p["in"] == "header"}
        assert "Idempotency-Key" in headers, op
    # The query parameters the client sends: every one the document requires, none it lacks.
    query = {
        p["name"]: p.get("required", False)
        for p in spec.get("parameters", [])
        if p["in"] == "query"
    }
    sent = CLIENT_QUERY.get(op, set())
    assert sent <= set(query) and {n for n, req in query.items() if req} <= sent, (op, query)
    ok = [s for s in spec["responses"] if s.startswith("2")]
    assert ok, op
    for status in ok:
        assert _body_ref(spec["responses"][status]["content"]) == OPENAPI_SCHEMAS[response_model]
    errors = [
        s for s in spec["responses"] if s[0] in "45" and (op, s) != (("get", "/readyz"), "503")
    ]
    for status in errors:
        assert _body_ref(spec["responses"][status]["content"]) == "ErrorOut", (op, status)


def test_the_drift_check_notices_a_missing_field(document):
    # The comparison itself can fail: a document with one more SessionOut field disagrees.
    doc = json.loads(json.dumps(document))
    doc["components"]["schemas"]["SessionOut"]["properties"]["new_field"] = {"type": "string"}
    server, _ = _server_fields(doc, "SessionOut")
    client, _ = _client_fields(Session, "validation")
    assert set(server) - set(client) == {"new_field"}


# -- retries, keys and typed errors (no network) ----------------------------------------------

SESSION = {
    "id": "ses_1",
    "status": "open",
    "owner_id": "o1",
    "rail_id": "solana_usdc",
    "access_product_id": "p1",
    "amount": "1500000",
    "network": "solana-mainnet",
    "asset": "EPjF",
    "recipient": "C1bL",
    "reference": "ref",
    "payer": None,
    "memo": None,
    "created_at": "2026-01-01T00:00:00Z",
    "expires_at": "2026-01-01T01:00:00Z",
    "paid_at": None,
    "payment_requirements": {"url": "solana:C1bL"},
}
OPEN = {"owner_id": "o1", "rail_id": "solana_usdc", "access_product_id": "p1", "amount": 1500000}


def _err(status: int, code: str, headers: dict[str, str] | None = None, **extra: Any):
    body = {"error": {"code": code, "message": f"{code} happened", **extra}}
    return httpx.Response(status, json=body, headers=headers)


class Script:
    """Answers requests in order from a list; records each request and each wait."""

    def __init__(self, *answers: httpx.Response | Exception):
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []
        self.sleeps: list[float] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def client(self, **kw: Any) -> RailproofClient:
        return RailproofClient(
            "http://127.0.0.1:1",
            "tok",
            transport=httpx.MockTransport(self.handle),
            sleep=self.sleeps.append,
            **kw,
        )

    def keys(self) -> list[str | None]:
        return [r.headers.get("Idempotency-Key") for r in self.requests]


def test_429_waits_what_retry_after_says_and_retries_with_the_same_key():
    s = Script(
        _err(429, "rate_limited", {"Retry-After": "7"}, retry_after=7),
        httpx.Response(201, json=SESSION),
    )
    session = s.client().open_session(**OPEN)
    assert session.id == "ses_1" and session.amount == "1500000"
    assert s.sleeps == [7.0]
    keys = s.keys()
    assert len(keys) == 2 and keys[0] and keys[0] == keys[1]
    assert s.requests[0].headers["Authorization"] == "Bearer tok"
    assert s.requests[0].headers["User-Agent"].startswith("railproof-client/")
    assert json.loads(s.requests[0].content) == {
        **OPEN,
        "reference": "auto",
        "memo": None,
        "payer": None,
        "recipient": None,
        "expires_in_seconds": None,
    }


def test_retry_after_is_read_from_the_body_without_the_header():
    s = Script(_err(429, "rate_limited", retry_after=2), httpx.Response(201, json=SESSION))
    s.client(max_wait=5.0).open_session(**OPEN)
    assert s.sleeps == [2.0]


def test_a_retry_after_longer_than_max_wait_is_raised_at_once():
    s = Script(_err(429, "rate_limited", {"Retry-After": "3600"}))
    with pytest.raises(RateLimitedError) as e:
        s.client(max_wait=5.0).open_session(**OPEN)
    assert e.value.retry_after == 3600 and e.value.retryable
    assert len(s.requests) == 1 and s.sleeps == []


def test_409_in_progress_is_retried_until_the_first_call_has_answered():
    s = Script(
        _err(409, "idempotency_in_progress"),
        _err(409, "idempotency_in_progress"),
        httpx.Response(201, json=SESSION),
    )
    s.client(max_wait=4.0).open_session(**OPEN, idempotency_key="order-1001")
    assert s.keys() == ["order-1001"] * 3
    assert len(s.sleeps) == 2 and all(0 < w <= 4.0 for w in s.sleeps)


def test_5xx_and_lost_connections_are_retried_for_reads_too():
    proof = {
        "id": "prf_1",
        "fingerprint": "f",
        "rail_id": "solana_usdc",
        "proof_type": "solana_signature",
        "reference": "ref",
        "session_id": "ses_1",
        "owner_id": "o1",
        "status": "verified",
        "failure_code": None,
        "detail": None,
        "attempts": 1,
        "settlement": {
            "finality": "finalized",
            "is_final": True,
            "reorged": False,
            "observed_at": "2026-01-01T00:00:00Z",
            "slot": 5,
        },
        "receipt_id": None,
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z",
    }
    s = Script(
        httpx.ConnectError("refused"),
        _err(503, "database_busy", {"Retry-After": "1"}),
        httpx.Response(502, text="<html>bad gateway</html>"),
        httpx.ReadTimeout("slow"),
        httpx.Response(200, json=proof),
    )
    got = s.client(max_attempts=5).get_proof("prf_1")
    assert got.status == "verified" and got.settlement and got.settlement.slot == 5
    assert len(s.requests) == 5 and s.sleeps[1] == 1.0
    assert s.keys() == [None] * 5  # GETs carry no key


def test_retries_are_bounded_and_then_raise_the_last_typed_error():
    s = Script(*[_err(503, "database_busy", {"Retry-After": "0"}) for _ in range(3)])
    with pytest.raises(ServerError) as e:
        s.client(max_attempts=3).get_session("ses_1")
    assert e.value.status_code == 503 and e.value.code == "database_busy"
    assert len(s.requests) == 3

    s = Script(*[httpx.ConnectError("refused") for _ in range(2)])
    with pytest.raises(ConnectionFailed, match="ConnectError"):
        s.client(max_attempts=2).health()
    assert len(s.requests) == 2

    # A request that cannot work by repeating it is not repeated.
    s = Script(httpx.UnsupportedProtocol("no such scheme"))
    with pytest.raises(ConnectionFailed) as e:
        s.client().health()
    assert not e.value.retryable and len(s.requests) == 1


@pytest.mark.parametrize(
    ("answer", "error", "code", "field"),
    [
        (
            _err(422, "invalid_amount", field="amount"),
            InvalidRequestError,
            "invalid_amount",
            "amount",
        ),
        (_err(409, "idempotency_conflict"), ConflictError, "idempotency_conflict", None),
        (_err(404, "not_found"), NotFoundError, "not_found", None),
        (_err(401, "unauthorized"), AuthenticationError, "unauthorized", None),
    ],
)
def test_other_errors_are_raised_at_once_with_the_apis_code_and_field(answer, error, code, field):
    s = Script(answer)
    with pytest.raises(error) as e:
        s.client().open_session(**OPEN)
    assert (e.value.code, e.value.field, e.value.status_code) == (code, field, answer.status_code)
    assert e.value.message == f"{code} happened" and not e.value.retryable
    assert len(s.requests) == 1 and s.sleeps == []


def test_an_error_keeps_what_the_refusal_carries():
    s = Script(_err(409, "duplicate_payment", proof_id="prf_9", hint="x"))
    with pytest.raises(ConflictError) as e:
        s.client().submit_proof(session_id="ses_1", proof="sig")
    assert e.value.error.proof_id == "prf_9" and e.value.details["hint"] == "x"


def test_each_logical_call_has_its_own_key():
    s = Script(httpx.Response(201, json=SESSION), httpx.Response(201, json=SESSION))
    c = s.client()
    c.open_session(**OPEN)
    c.open_session(**OPEN)
    a, b = s.keys()
    assert a and b and a != b


def test_an_answer_that_is_not_its_model_is_an_unexpected_response():
    s = Script(httpx.Response(200, json={"id": "ses_1"}))
    with pytest.raises(UnexpectedResponse) as e:
        s.client().get_session("ses_1")
    assert e.value.status_code == 200


def test_ids_stay_one_path_segment():
    s = Script(_err(404, "not_found"))
    with pytest.raises(NotFoundError):
        s.client().get_proof("../admin/proofs")
    assert s.requests[0].url.raw_path == b"/v1/proofs/..%2Fadmin%2Fproofs"


def test_readiness_returns_the_503_report_without_retrying():
    report = {"status": "not_ready", "checks": [{"name": "schema", "ok": False, "detail": "run"}]}
    s = Script(httpx.Response(503, json=report))
    got = s.client().readiness()
    assert got.status == "not_ready" and not got.checks[0].ok
    assert len(s.requests) == 1


def test_the_token_is_not_in_the_clients_repr():
    assert "tok" not in repr(Script().client())


@pytest.mark.parametrize("cls", [RailproofClient, AsyncRailproofClient])
def test_the_clients_repr_hides_credentials_in_its_base_url(cls):
    # repr() printed the base URL whole: a password in its user information, a key in its query.
    c = cls("http://ops:hunter2@127.0.0.1:1/api?key=gw-key", "tok")
    assert repr(c) == f"{cls.__name__}('http://127.0.0.1:1/api')"


@pytest.mark.parametrize("token", ["s3cret-token\n", "s3cret-token\r\n", " s3cret-token", ""])
@pytest.mark.parametrize("cls", [RailproofClient, AsyncRailproofClient])
def test_a_token_no_header_can_carry_is_refused_when_the_client_is_built(cls, token):
    # A token read from a file kept its newline: httpx refused the header and the client put
    # httpx's message, `Illegal header value b'Bearer <token>'`, into ConnectionFailed.
    with pytest.raises(ValueError, match="^token: ") as e:
        cls("http://127.0.0.1:1", token)
    if token:
        assert "s3cret" not in f"{e.value}{e.value!r}"


class _Health(BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        body = b'{"status": "ok", "chain": "cassette"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_a_header_httpx_would_refuse_is_not_quoted_into_the_error(caplog):
    # httpx names the header value it refuses; that text (and httpx's exception, as the cause)
    # used to be carried into ConnectionFailed and the retry log. The key is refused by name
    # before httpx sees it now, and still not quoted.
    caplog.set_level(logging.WARNING, logger="railproof_client")
    with handler_server(_Health) as url, RailproofClient(url, "tok", max_attempts=1) as c:
        assert c.health().status == "ok"
        with pytest.raises(ValueError) as e:
            c.open_session(**OPEN, idempotency_key="order-s3cret\r\nX-Injected: 1")
    text = f"{e.value}{e.value!r}{e.value.__cause__!r}{e.value.__context__!r}{caplog.text}"
    assert "s3cret" not in text and str(e.value).startswith("idempotency_key: ")


def test_a_network_failure_keeps_its_own_words_and_cause():
    with RailproofClient(f"http://127.0.0.1:{closed_port()}", "tok", max_attempts=1) as c:
        with pytest.raises(ConnectionFailed) as e:
            c.health()
    assert "ConnectError" in str(e.value) and isinstance(e.value.__cause__, httpx.ConnectError)
    assert e.value.retryable


def test_the_async_client_retries_the_same_way():
    s = Script(_err(429, "rate_limited", {"Retry-After": "3"}), httpx.Response(201, json=SESSION))

    async def handle(request: httpx.Request) -> httpx.Response:
        return s.handle(request)

    async def sleep(seconds: float) -> None:
        s.sleeps.append(seconds)

    async def main() -> str:
        async with AsyncRailproofClient(
            "http://127.0.0.1:1", "tok", transport=httpx.MockTransport(handle), sleep=sleep
        ) as c:
            return (await c.open_session(**OPEN)).id

    assert asyncio.run(main()) == "ses_1"
    assert s.sleeps == [3.0]
    a, b = s.keys()
    assert a and a == b


# -- webhook verification ---------------------------------------------------------------------

EVENT = {
    "id": "evt_1",
    "type": "proof.verified",
    "created_at": "2026-01-01T00:00:00Z",
    "owner_id": "o1",
    "data": {"id": "prf_1", "status": "verified"},
}


def _signed(secret: str, body: bytes, when: datetime | None = None) -> dict[str, str]:
    when = when or datetime.now(UTC)
    return {
        "webhook-id": "evt_1",
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": standardwebhooks.Webhook(secret).sign("evt_1", when, body.decode()),
    }


def test_a_delivery_signed_the_servers_way_verifies_into_an_event():
    secret = new_secret()
    body = json.dumps(EVENT).encode()
    headers = signed_headers(secret, "evt_1", body, int(datetime.now(UTC).timestamp()))
    event = verify_webhook(secret, body, httpx.Headers(headers))
    assert (event.id, event.type, event.owner_id) == ("evt_1", "proof.verified", "o1")
    assert event.data["id"] == "prf_1"


@pytest.mark.parametrize(
    "tamper",
    [
        "body",
        "other_secret",
        "old",
        "no_signature",
        "garbled_signature",
        "not_an_event",
    ],
)
def test_a_delivery_that_does_not_hold_is_rejected(tamper):
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    body = json.dumps(EVENT).encode()
    headers = _signed(secret, body)
    if tamper == "body":
        body = body.replace(b"o1", b"o2")
    elif tamper == "other_secret":
        headers = _signed("whsec_" + base64.b64encode(os.urandom(32)).decode(), body)
    elif tamper == "old":
        headers = _signed(secret, body, datetime.now(UTC) - timedelta(minutes=10))
    elif tamper == "no_signature":
        del headers["webhook-signature"]
    elif tamper == "garbled_signature":
        headers["webhook-signature"] = "garbage"
    elif tamper == "not_an_event":
        body = b'{"hello": 1}'
        headers = _signed(secret, body)
    with pytest.raises(WebhookVerificationError):
        WebhookVerifier(secret).verify(body, headers)


def test_a_malformed_secret_is_refused_without_echoing_it():
    with pytest.raises(ValueError) as e:
        WebhookVerifier("whsec_not-base64!!")
    assert "not-base64" not in str(e.value)


# -- against a running server -----------------------------------------------------------------

# The README's walk-through payment: 1.50 USDC for order 1001, recorded as a cassette.
OWNER = "demo-owner"
TOKEN = "demo-service-token"
REFERENCE = "5EgHDWBUEbpZyrLBFVikjVKZY9MsRbEUtMvPdDr9ytPE"
SIGNATURE = (
    "jWBMRhxbBNqUUrt8PotW9D6Jkc66fULBhVA98XS69siqT6br4z5iaqXPMjdFLYDzFpjEb2pqe5vvvoxdf6bbH8i"
)
WALK = {
    "owner_id": OWNER,
    "rail_id": "solana_usdc",
    "access_product_id": "api-credits",
    "amount": 1500000,
    "reference": REFERENCE,
    "memo": "order-1001",
}


def _serve(tmp: Path, **settings: str) -> tuple[Api, dict[str, str]]:
    env = base_env(
        database_url=f"sqlite:///{tmp}/clients.db",
        chain="cassette",
        clock="2026-01-01T00:00:00Z",
        service_tokens=json.dumps({TOKEN: [OWNER], "other-token": ["other-owner"]}),
        treasury_solana_usdc="C1bL1CaQ6PjLKZyYRn11ZtydLqEfGUxdcvUS3frx8ocg",
        **settings,
    )
    migrate(env)
    return Api(env, tmp).wait_ready(), env


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[Api, dict[str, str]]]:
    api, env = _serve(tmp_path_factory.mktemp("clients"))
    try:
        yield api, env
    finally:
        api.stop()


@pytest.mark.slow
def test_the_client_against_railproof_serve(served, tmp_path):
    api, env = served
    with Receiver() as receiver, RailproofClient(api.url, TOKEN) as rp:
        assert rp.health().status == "ok"
        assert rp.readiness().status == "ready"

        # Deliveries of this owner's events go to a local receiver (registered through the API).
        r = httpx.post(
            api.url + "/v1/webhook-endpoints",
            headers={"Authorization": f"Bearer {TOKEN}"},
            json={"url": receiver.url, "event_types": ["proof.verified"]},
        )
        assert r.status_code == 201, r.text
        secret = r.json()["secret"]
        receiver.secret = secret

        session = rp.open_session(**WALK, idempotency_key="clients-walk-s-1")
        again = rp.open_session(**WALK, idempotency_key="clients-walk-s-1")
        assert again.id == session.id  # the same logical call: the stored answer
        assert session.amount == "1500000" and session.reference == REFERENCE
        read_session = rp.get_session(session.id)
        assert read_session.model_dump(exclude={"rail_paused"}) == session.model_dump(
            exclude={"rail_paused"}
        )
        assert read_session.rail_paused is False
        requirements = session.payment_requirements or {}
        assert f"reference={REFERENCE}" in requirements["url"]

        # Same key, other body: the API refuses, naming the conflict.
        with pytest.raises(ConflictError) as conflict:
            rp.open_session(**{**WALK, "amount": 1}, idempotency_key="clients-walk-s-1")
        assert conflict.value.code == "idempotency_conflict"

        proof = rp.submit_proof(session_id=session.id, proof=SIGNATURE)
        assert proof.status == "verified", proof
        assert proof.settlement and proof.settlement.is_final
        read = rp.get_proof(proof.id)
        assert (read.id, read.status, read.session_id) == (proof.id, "verified", session.id)
        # Another logical call with the same transfer: the same proof, nothing new stored.
        assert rp.submit_proof(session_id=session.id, proof=SIGNATURE).id == proof.id

        ents = rp.list_entitlements(OWNER)
        assert all(isinstance(e, Entitlement) and e.owner_id == OWNER for e in ents)
        mine = [e for e in ents if e.session_id == session.id]
        assert [(e.access_product_id, e.status) for e in mine] == [("api-credits", "pending")]

        # Typed errors, with the field named.
        with pytest.raises(InvalidRequestError) as bad:
            rp.open_session(**{**WALK, "access_product_id": "no spaces allowed"})
        assert bad.value.status_code == 422 and bad.value.field == "access_product_id"
        with pytest.raises(InvalidRequestError) as bad_amount:
            rp.open_session(**{**WALK, "amount": 0, "reference": "auto"})
        assert bad_amount.value.field == "amount"
        with pytest.raises(NotFoundError):
            rp.get_proof("prf_does_not_exist")
        with pytest.raises(NotFoundError) as other:
            rp.list_entitlements("other-owner")  # another token's owner: 404, not 403
        assert other.value.field == "owner_id"
        with RailproofClient(api.url, "wrong-token") as stranger:
            with pytest.raises(AuthenticationError):
                stranger.get_session(session.id)

        # The async client reads the same proof.
        async def read_async() -> str:
            async with AsyncRailproofClient(api.url, TOKEN) as arp:
                return (await arp.get_proof(proof.id)).status

        assert asyncio.run(read_async()) == "verified"

        # The worker delivers proof.verified, signed; the client's verifier accepts it.
        worker = Worker(env, tmp_path, "clients-worker", once=True)
        assert worker.wait() == 0, worker.output()
        delivered = [q for q in receiver.requests if q["verified"]]
        assert delivered, receiver.requests
        event = verify_webhook(secret, delivered[0]["body"], delivered[0]["headers"])
        assert event.type == "proof.verified" and event.data["id"] == proof.id
        assert event.owner_id == OWNER
        with pytest.raises(WebhookVerificationError):
            verify_webhook(new_secret(), delivered[0]["body"], delivered[0]["headers"])


@pytest.mark.slow
def test_the_servers_429_is_retried_after_its_retry_after_then_raised(tmp_path):
    # Writes are rate-limited: two of burst, then one every 20 s; the third is refused.
    api, _ = _serve(tmp_path, rate_limit_per_second="0.05", rate_limit_burst="2")
    waits: list[float] = []
    try:
        with RailproofClient(api.url, TOKEN, max_attempts=2, sleep=waits.append) as rp:
            for _ in range(2):
                with pytest.raises(NotFoundError):
                    rp.submit_proof(session_id="ses_does_not_exist", proof=SIGNATURE)
            with pytest.raises(RateLimitedError) as limited:
                rp.submit_proof(session_id="ses_does_not_exist", proof=SIGNATURE)
        # Asking for more than this client waits: raised without a retry.
        with RailproofClient(api.url, TOKEN, max_wait=1.0, sleep=waits.append) as impatient:
            with pytest.raises(RateLimitedError):
                impatient.submit_proof(session_id="ses_does_not_exist", proof=SIGNATURE)
    finally:
        api.stop()
    assert limited.value.code == "rate_limited" and limited.value.retryable
    # One retry (then raised), after waiting the whole seconds the server asked for.
    assert len(waits) == 1 and 1 < waits[0] <= 20 and waits[0] == int(waits[0])


def _readme_example() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Clients\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```python\n(.*?)```", section, re.S)
    assert block, "the Clients section has no python block"
    return block.group(1)


@pytest.mark.slow
def test_the_readme_example_runs_as_shown(tmp_path):
    # Its own server: the example spends the recorded payment the test above also uses.
    api, _ = _serve(tmp_path)
    try:
        code = _readme_example()
        assert "http://127.0.0.1:8000" in code
        run = subprocess.run(
            [sys.executable, "-c", code.replace("http://127.0.0.1:8000", api.url)],
            env={**os.environ, "PYTHONPATH": str(REPO / "clients" / "python")},
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
    finally:
        api.stop()
    assert run.returncode == 0, run.stdout + run.stderr
    url, verdict, statuses = run.stdout.splitlines()
    assert url.startswith("solana:C1bL") and f"reference={REFERENCE}" in url
    assert verdict == "verified True"
    # Verified and final; applied (receipt, active entitlement) by the worker or staff.
    assert ast.literal_eval(statuses) == ["pending"]


@pytest.mark.slow
def test_the_client_is_its_own_distribution(tmp_path):
    # Built from a copy (no build output in the tree) with this environment's setuptools.
    src = tmp_path / "src"
    shutil.copytree(
        REPO / "clients" / "python", src, ignore=shutil.ignore_patterns("build", "*.egg-info")
    )
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", str(src), "-w", str(tmp_path)]
    run = subprocess.run(build, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    (wheel,) = tmp_path.glob("railproof_client-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        metadata = z.read(next(n for n in names if n.endswith("dist-info/METADATA"))).decode()
    assert "railproof_client/py.typed" in names and "railproof_client/webhooks.py" in names
    assert not any(n.startswith(("verifier/", "rails/", "registry/")) for n in names)
    assert "Name: railproof-client" in metadata
    assert f"Version: {CLIENT_VERSION}\n" in metadata  # the User-Agent's version is the package's
    for dep in ("httpx", "pydantic", "tenacity", "standardwebhooks"):
        assert f"Requires-Dist: {dep}" in metadata, dep
