"""Security: scopes on every endpoint, owner isolation on every id, tokens never logged,
evidence redacted, tokens compared in constant time.

The route lists come from the app itself, so an endpoint added later is covered (or the
coverage test fails and names it) without anyone remembering to extend this file.
"""

from __future__ import annotations

import io
import json
import logging
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

import verifier.core.config as config_mod
from tests.conftest import (
    OTHER_SERVICE_TOKEN,
    SERVICE_TOKEN,
    STAFF_TOKEN,
    STAFF_TOKEN_2,
    auth,
)
from tests.helpers import FIXTURES, cassette_engine
from verifier.core.config import Settings
from verifier.core.logs import JsonFormatter, configure_logging, redact
from verifier.http.api import create_app

PUBLIC = {
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/docs",
    "/docs/oauth2-redirect",
    "/redoc",
}
ALL_TOKENS = (SERVICE_TOKEN, OTHER_SERVICE_TOKEN, STAFF_TOKEN, STAFF_TOKEN_2)


def api_routes(app) -> list[tuple[str, str]]:
    out = []
    for r in app.routes:
        if isinstance(r, APIRoute) and r.path not in PUBLIC:
            for m in sorted(r.methods - {"HEAD", "OPTIONS"}):
                out.append((m, r.path))
    return out


def every_route(app) -> list[tuple[str, str]]:
    """api_routes and the included routers' (verifier.http.app.INCLUDED: the webhook routes,
    which app.routes lists as one opaque route)."""
    from verifier.http.app import INCLUDED

    included = [
        (m, r.path)
        for router in INCLUDED
        for r in router.routes
        if isinstance(r, APIRoute)
        for m in sorted(r.methods - {"HEAD", "OPTIONS"})
    ]
    return api_routes(app) + included


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "some-id", path)


def call(client, method: str, path: str, headers: dict, body=None):
    kw = {"headers": headers}
    if method in ("POST", "PUT", "PATCH"):
        kw["json"] = body if body is not None else {}
    return client.request(method, path, **kw)


# -- scopes --------------------------------------------------------------------------------


def test_every_route_is_either_staff_or_service(client):
    routes = api_routes(client.app)
    assert routes, "no routes found"
    for _, path in routes:
        assert path.startswith("/v1/"), f"{path}: neither public nor under /v1"
    admin = [r for r in routes if r[1].startswith("/v1/admin")]
    service = [r for r in routes if not r[1].startswith("/v1/admin")]
    assert len(admin) >= 20 and len(service) >= 5


def test_admin_routes_refuse_service_tokens_and_no_token(client):
    from verifier.http.ratelimit import RateLimiter

    # Every route tried with an unknown token: past the sign-in bound those are 429
    # (tests/test_console_login_bound.py); the walk is about the answer before it.
    client.app.state.login_limiter = RateLimiter(rate=0)
    refusals = 0
    for method, path in api_routes(client.app):
        if not path.startswith("/v1/admin"):
            continue
        for headers in (
            {},
            auth(SERVICE_TOKEN),
            auth(OTHER_SERVICE_TOKEN),
            {"Authorization": "Bearer not-a-token"},
            {"Authorization": STAFF_TOKEN},
        ):  # no "Bearer " scheme
            r = call(client, method, concrete(path), headers)
            assert r.status_code == 401, (method, path, headers, r.text)
            assert r.json()["error"]["code"] == "unauthorized"
            assert r.headers.get("WWW-Authenticate") == "Bearer"
            refusals += 1
    assert refusals >= 100


def test_service_routes_refuse_staff_tokens_and_no_token(client):
    for method, path in api_routes(client.app):
        if path.startswith("/v1/admin"):
            continue
        url = concrete(path) + ("?owner_id=alice" if path == "/v1/entitlements" else "")
        for headers in (
            {},
            auth(STAFF_TOKEN),
            auth(STAFF_TOKEN_2),
            {"Authorization": "Bearer "},
            {"Authorization": "bearer " + SERVICE_TOKEN},
        ):
            r = call(client, method, url, headers)
            assert r.status_code == 401, (method, path, headers, r.text)
            assert r.json()["error"]["field"] == "Authorization"


def test_two_authorization_lines_are_refused_everywhere(client):
    # Authorization is a singleton field (RFC 9110): the first line must not win, since a
    # proxy or gateway in front that checks another line authenticates someone else than
    # railproof does. Refused like two Idempotency-Key lines, with the right token first.
    for method, path in every_route(client.app):
        token = STAFF_TOKEN if path.startswith("/v1/admin") else SERVICE_TOKEN
        url = concrete(path) + ("?owner_id=alice" if path == "/v1/entitlements" else "")
        for second in (f"Bearer {token}", "Bearer a-gateway-token", "Basic Zm9vOmJhcg=="):
            lines = [("Authorization", f"Bearer {token}"), ("Authorization", second)]
            r = call(client, method, url, lines)
            assert r.status_code == 401, (method, path, r.text)
            err = r.json()["error"]
            assert (err["code"], err["field"]) == ("unauthorized", "Authorization"), r.text
            assert r.headers.get("WWW-Authenticate") == "Bearer"


def test_two_authorization_lines_are_refused_by_metrics(db_url):
    from tests.conftest import make_settings
    from tests.fake_rail import catalog_with_fake
    from verifier.core.engine import Engine

    engine = Engine(make_settings(db_url, metrics_token="scrape-me"), catalog=catalog_with_fake())
    try:
        with TestClient(create_app(engine), raise_server_exceptions=False) as c:
            right = ("Authorization", "Bearer scrape-me")
            for lines in ([right, ("Authorization", "Bearer other")], [right, right]):
                r = c.get("/metrics", headers=lines)
                assert r.status_code == 401, r.text
                assert r.json()["error"]["field"] == "Authorization"
            assert c.get("/metrics", headers=[right]).status_code == 200
    finally:
        engine.db.dispose()


def test_the_right_token_gets_past_auth_everywhere(client):
    # The other side of the two tests above: with the right scope, no route answers 401.
    for method, path in api_routes(client.app):
        token = STAFF_TOKEN if path.startswith("/v1/admin") else SERVICE_TOKEN
        url = concrete(path) + ("?owner_id=alice" if path == "/v1/entitlements" else "")
        r = call(client, method, url, auth(token))
        assert r.status_code != 401, (method, path, r.text)


# -- owner isolation -----------------------------------------------------------------------


def _alice_world(client, chain):
    sess = client.post(
        "/v1/payment-sessions",
        headers=auth(),
        json={
            "owner_id": "alice",
            "rail_id": "fake_live",
            "access_product_id": "pro",
            "amount": 1500000,
            "recipient": "fatreasury",
        },
    ).json()
    chain.txs["fx0123abcd"] = {
        "status": "ok",
        "to": "fatreasury",
        "amount": 1500000,
        "asset": "fusd",
        "refs": [sess["reference"]],
    }
    proof = client.post(
        "/v1/proofs", headers=auth(), json={"session_id": sess["id"], "proof": "fx0123abcd"}
    ).json()
    assert proof["status"] == "verified"
    return sess, proof


def test_owner_isolation_on_every_service_path_with_an_id(client, engine, chain):
    sess, proof = _alice_world(client, chain)
    ids = {"session_id": sess["id"], "proof_id": proof["id"]}
    bob = auth(OTHER_SERVICE_TOKEN)
    covered = 0
    for method, path in api_routes(client.app):
        params = re.findall(r"\{([^}]+)\}", path)
        if path.startswith("/v1/admin") or not params:
            continue
        missing = [p for p in params if p not in ids]
        assert not missing, f"{method} {path}: add an id for {missing} to this test"
        url = path.format(**ids)
        mine = call(client, method, url, auth())
        theirs = call(client, method, url, bob)
        assert mine.status_code == 200, (path, mine.text)
        assert theirs.status_code == 404, (path, theirs.text)
        # The refusal says nothing the owner's answer would: no owner, no amount.
        assert "alice" not in theirs.text and "1500000" not in theirs.text
        covered += 1
    assert covered >= 2

    # Ids in bodies and queries: acting for alice, or on alice's session, with bob's token.
    r = client.post(
        "/v1/proofs", headers=bob, json={"session_id": sess["id"], "proof": "fx0123abcd"}
    )
    assert r.status_code == 404 and r.json()["error"]["code"] == "session_not_found"
    r = client.post(
        "/v1/proofs", headers=bob, json={"session_id": sess["id"], "proof": "fx9999abcd"}
    )
    assert r.status_code == 404
    r = client.get("/v1/entitlements", headers=bob, params={"owner_id": "alice"})
    assert r.status_code == 404 and r.json()["error"]["field"] == "owner_id"
    r = client.post(
        "/v1/payment-sessions",
        headers=bob,
        json={
            "owner_id": "alice",
            "rail_id": "fake_live",
            "access_product_id": "pro",
            "amount": 1,
            "recipient": "fatreasury",
        },
    )
    assert r.status_code == 404
    # An id that does not exist answers exactly like someone else's.
    nobody = client.get("/v1/proofs/0000000000000000", headers=bob)
    theirs = client.get(f"/v1/proofs/{proof['id']}", headers=bob)
    assert nobody.status_code == theirs.status_code == 404
    assert nobody.json()["error"]["code"] == theirs.json()["error"]["code"]


def test_a_refused_id_in_a_body_names_its_field_and_tells_nothing(client, chain):
    # README: a 4xx names the field. An owner or a session a body names that is not the
    # token's is refused naming the field, with the same bytes whether it is someone else's
    # or does not exist (the id itself aside): no existence oracle.
    sess, _ = _alice_world(client, chain)
    bob = auth(OTHER_SERVICE_TOKEN)

    def refused(path: str, body: dict, field: str, theirs: str, nobody: str) -> None:
        answers = []
        for value in (theirs, nobody):
            r = client.post(path, headers=bob, json={**body, field: value})
            assert r.status_code == 404, r.text
            assert r.json()["error"]["field"] == field, r.text
            answers.append(r.content.replace(value.encode(), b"<id>"))
        assert answers[0] == answers[1]

    refused(
        "/v1/proofs",
        {"proof": "fx0123abcd"},
        "session_id",
        sess["id"],
        "0" * len(sess["id"]),
    )
    session = {
        "rail_id": "fake_live",
        "access_product_id": "pro",
        "amount": 1,
        "recipient": "fatreasury",
    }
    refused("/v1/payment-sessions", session, "owner_id", "alice", "nobdy")


# -- tokens never logged -------------------------------------------------------------------


@pytest.fixture
def json_logs():
    """configure_logging() as `railproof serve` does; its handler's stream is captured."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    configure_logging(logging.DEBUG)
    buf = io.StringIO()
    root.handlers[0].setStream(buf)
    try:
        yield buf.getvalue
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


def test_tokens_never_appear_in_logs(client, engine, chain, json_logs, monkeypatch):
    sess, proof = _alice_world(client, chain)
    # Successful, refused, malformed and crashing requests, with every token in play.
    client.get("/v1/admin/rails", headers=auth(STAFF_TOKEN))
    client.get("/v1/admin/rails", headers=auth(SERVICE_TOKEN))
    client.get(f"/v1/proofs/{proof['id']}", headers=auth(OTHER_SERVICE_TOKEN))
    client.post("/v1/proofs", headers=auth(STAFF_TOKEN_2), json={"session_id": "x"})
    client.post(
        "/v1/proofs", headers={**auth(), "Content-Type": "application/json"}, content=b"{not json"
    )
    client.post(
        f"/v1/admin/proofs/{proof['id']}/apply",
        headers=auth(STAFF_TOKEN),
        json={"confirm": True, "incident_id": "INC-1", "operator_reason": "t"},
    )
    # Code that carelessly logs a credential in a key=value or header shape is still masked.
    logging.getLogger("railproof.test").warning("retrying with Bearer %s", SERVICE_TOKEN)
    logging.getLogger("railproof.test").info('{"token": "%s"}', STAFF_TOKEN)

    def boom(*a, **k):
        raise RuntimeError(f"exploded; authorization={STAFF_TOKEN}")

    monkeypatch.setattr("verifier.services.rails_admin.list_rails", boom)
    r = client.get("/v1/admin/rails", headers=auth(STAFF_TOKEN))
    assert r.status_code == 500 and STAFF_TOKEN not in r.text and "Traceback" not in r.text
    try:
        boom()
    except RuntimeError:
        logging.getLogger("railproof.test").exception("with exc_info: token=%s", STAFF_TOKEN)

    out = json_logs()
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines, "nothing was logged"
    for token in ALL_TOKENS:
        assert token not in out, f"token {token} leaked into the logs"
    assert "[redacted]" in out


def test_redact_masks_bearer_tokens_signatures_and_payloads():
    sig = "5h3kTBBTy7pBGx4CXwJpJ6phuwLQgcwLTdHhU3c7uiXyz"
    cases = [
        f"Bearer {SERVICE_TOKEN}",
        f"authorization={STAFF_TOKEN}",
        f'{{"signature": "{sig}", "amount": "5"}}',
        f"signature={sig}",
        '{"payload": "eyJ4NDAyVmVyc2lvbiI6MX0=", "rail": "x402"}',
        f"token: {SERVICE_TOKEN}",
        f"secret={STAFF_TOKEN}",
    ]
    for text in cases:
        out = redact(text)
        assert "[redacted]" in out, text
        for secret in (SERVICE_TOKEN, STAFF_TOKEN, sig, "eyJ4NDAyVmVyc2lvbiI6MX0="):
            assert secret not in out, (text, out)
    # What is not a secret stays readable.
    assert '"amount": "5"' in redact(cases[2]) and "x402" in redact(cases[4])


@pytest.mark.parametrize(
    "text",
    [f"Authorization: Bearer {SERVICE_TOKEN}", f'{{"authorization": "Bearer {SERVICE_TOKEN}"}}'],
)
def test_redact_masks_a_full_authorization_header(text):
    assert SERVICE_TOKEN not in redact(text), redact(text)


def test_redact_drops_every_url_query_whatever_its_parameters_are_called():
    # An RPC provider's key and a webhook receiver's credentials sit in queries named freely.
    for text in (
        'HTTP Request: POST http://127.0.0.1:9/hook?key=SuperSecret&sig=SuperSecret "200"',
        "rpc https://mainnet.example-rpc.com/?api-key=SuperSecret timed out",
        "wss://node.example/ws?code=SuperSecret#frag",
    ):
        out = redact(text)
        assert "SuperSecret" not in out and "?[redacted]" in out, out
    assert redact("http://127.0.0.1:9/hook done") == "http://127.0.0.1:9/hook done"
    assert redact("is this a question? yes=1") == "is this a question? yes=1"


@pytest.mark.parametrize(
    "text",
    [
        "rpc https://user:SuperSecret@node.example/ timed out",  # an RPC node's basic auth
        "postgresql+psycopg://railproof:SuperSecret@127.0.0.1:5432/railproof refused",
        "GET /v1/x?next=1 Authorization: Bearer%20SuperSecret",  # a header quoted in a URL
        "authorization%3A%20Bearer+SuperSecret",
    ],
)
def test_redact_masks_url_credentials_and_encoded_bearer_tokens(text):
    out = redact(text)
    assert "SuperSecret" not in out and "[redacted]" in out, out


def test_redact_leaves_addresses_that_are_not_url_credentials():
    assert redact("mail ops@example.com, see http://127.0.0.1:9/hook") == (
        "mail ops@example.com, see http://127.0.0.1:9/hook"
    )


def test_http_client_request_lines_stay_out_of_the_logs():
    # httpx logs each request's URL at INFO; the service's logging keeps it below that.
    from verifier.core.logs import configure_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging()
        for name in ("httpx", "httpcore"):
            assert not logging.getLogger(name).isEnabledFor(logging.INFO)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_json_formatter_redacts_message_and_exception():
    rec = logging.LogRecord(
        "railproof", logging.ERROR, __file__, 1, "calling with Bearer %s", (SERVICE_TOKEN,), None
    )
    try:
        raise ValueError(f"token={STAFF_TOKEN}")
    except ValueError:
        import sys

        rec.exc_info = sys.exc_info()
    line = JsonFormatter().format(rec)
    doc = json.loads(line)
    assert SERVICE_TOKEN not in line and STAFF_TOKEN not in line
    assert doc["level"] == "ERROR" and "[redacted]" in doc["msg"]


# -- evidence is redacted ------------------------------------------------------------------

X402_SIGNED = json.loads((FIXTURES / "x402" / "x402_base_signed.json").read_text())
DEMO = json.loads((FIXTURES / "solana" / "generated" / "demo_payment.json").read_text())["demo"]
BANNED_KEYS = {"signature", "payload", "raw", "authorization", "secret", "token"}


def _walk_keys(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from _walk_keys(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk_keys(v)


def _evidence_text(client, proof_id: str) -> tuple[list, str]:
    staff = auth(STAFF_TOKEN)
    attempts = client.get(f"/v1/admin/proofs/{proof_id}/attempts", headers=staff).json()
    texts = [
        json.dumps(attempts),
        client.get(f"/v1/admin/proofs/{proof_id}", headers=staff).text,
        client.get(f"/v1/admin/proofs/{proof_id}/settlement-evidence", headers=staff).text,
        client.get(f"/v1/proofs/{proof_id}", headers=auth()).text,
    ]
    return attempts, "\n".join(texts)


def test_x402_evidence_holds_no_signature_or_payload(db_url):
    case = X402_SIGNED["payloads"]["valid_v1"]["payload"]
    now = datetime.fromtimestamp(X402_SIGNED["now"], UTC)
    engine = cassette_engine(db_url, clock=now)
    with TestClient(create_app(engine), raise_server_exceptions=False) as client:
        sess = client.post(
            "/v1/payment-sessions",
            headers=auth(),
            json={
                "owner_id": "alice",
                "rail_id": "x402",
                "access_product_id": "pro",
                "amount": case["payload"]["authorization"]["value"],
                "recipient": X402_SIGNED["pay_to"],
                "reference": None,
            },
        )
        assert sess.status_code == 201, sess.text
        r = client.post(
            "/v1/proofs", headers=auth(), json={"session_id": sess.json()["id"], "proof": case}
        )
        assert r.status_code == 201 and r.json()["status"] == "verified", r.text
        attempts, text = _evidence_text(client, r.json()["id"])
    engine.db.dispose()
    assert attempts and attempts[-1]["observed"]["amount"] == "10000"
    assert not BANNED_KEYS & set(_walk_keys([a["observed"] for a in attempts]))
    sig_hex = case["payload"]["signature"]
    assert sig_hex not in text and sig_hex[2:].lower() not in text.lower()
    assert json.dumps(case) not in text and '"x402Version"' not in text


def test_solana_evidence_holds_no_signature_key_or_raw_transaction(db_url):
    engine = cassette_engine(db_url)
    with TestClient(create_app(engine), raise_server_exceptions=False) as client:
        sess = client.post(
            "/v1/payment-sessions",
            headers=auth(),
            json={
                "owner_id": "alice",
                "rail_id": "solana_usdc",
                "access_product_id": "pro",
                "amount": DEMO["amount"],
                "recipient": DEMO["recipient"],
                "reference": DEMO["reference"],
                "memo": DEMO["memo"],
            },
        )
        assert sess.status_code == 201, sess.text
        r = client.post(
            "/v1/proofs",
            headers=auth(),
            json={"session_id": sess.json()["id"], "proof": DEMO["signature"]},
        )
        assert r.status_code == 201 and r.json()["status"] == "verified", r.text
        attempts, text = _evidence_text(client, r.json()["id"])
    engine.db.dispose()
    observed = [a["observed"] for a in attempts]
    assert observed[-1]["amount"] == DEMO["amount"]
    assert not BANNED_KEYS & set(_walk_keys(observed))
    # The signature is the proof's public id, never a value inside the chain evidence.
    assert DEMO["signature"] not in json.dumps(observed)
    assert '"transaction"' not in text and '"meta"' not in text


# -- tokens compared in constant time ------------------------------------------------------


def test_token_lookup_uses_compare_digest_on_every_configured_token(monkeypatch):
    calls: list[tuple[bytes, bytes]] = []
    real = config_mod.hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(config_mod.hmac, "compare_digest", spy)
    tokens = {f"svc-{i}": [f"owner-{i}"] for i in range(5)}
    s = Settings(service_tokens=tokens, staff_tokens={"staff-a": "a", "staff-b": "b"}, env={})
    # A match on the first token still compares against all of them (no early exit).
    assert s.service_owners("svc-0") == ["owner-0"]
    assert len(calls) == 5 and {a for a, _ in calls} == {t.encode() for t in tokens}
    calls.clear()
    assert s.service_owners("svc-4x") is None and len(calls) == 5
    calls.clear()
    assert s.staff_name("staff-b") == "b" and len(calls) == 2
    # Nothing else compares tokens with ==: the source uses compare_digest only.
    src = Path(config_mod.__file__).read_text()
    assert "compare_digest(candidate.encode(), given)" in src
    assert "table.get(token)" not in src and "token in table" not in src
