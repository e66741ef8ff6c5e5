"""API fuzzing: schemathesis generates requests from the app's own OpenAPI schema and sends
them in-process (ASGI) with valid tokens, so generated bodies reach the handlers instead of
stopping at 401. Bounded and derandomized, so CI runs the same cases every time.

Every answer must be: below 500; free of stack trace text; JSON (the Prometheus text of
/metrics aside); and an error body {"error": {"code", "message"}} whenever it is a 4xx.
Plus the hand-written hostile bodies no generator produces: 10,000 nested arrays, a few
hundred levels inside `proof`, a body over the size limit with and without Content-Length.
"""

from __future__ import annotations

import json
import zlib

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings

from tests.conftest import SERVICE_TOKEN, STAFF_TOKEN, auth, make_settings
from tests.fake_rail import ScriptedChain, catalog_with_fake
from tests.helpers import FIXTURES
from verifier.api import MAX_BODY_BYTES, create_app
from verifier.engine import Engine
from verifier.proofs import submit_proof
from verifier.ratelimit import RateLimiter
from verifier.sessions import NewSession, open_session
from verifier.storage.db import upgrade

TRACE_MARKERS = ("Traceback", 'File "')
FUZZ_RAILS = ["fake_live", "solana_usdc", "x402", "fake_gated", "tron_usdt"]
X402_PAY_TO = "0x02188583AC333178Dc88122B141B4e169BbdB22e"
SOLANA_TREASURY = "C1bL1CaQ6PjLKZyYRn11ZtydLqEfGUxdcvUS3frx8ocg"


def _app(tmp_path):
    url = f"sqlite:///{tmp_path}/fuzz.db"
    upgrade(url)
    engine = Engine(make_settings(url, cassette_dir=FIXTURES,
                                  env={"RAILPROOF_TREASURY_X402": X402_PAY_TO,
                                       "RAILPROOF_TREASURY_SOLANA_USDC": SOLANA_TREASURY}),
                    catalog=catalog_with_fake())
    chain = ScriptedChain()
    chain.txs["fx0123abcd"] = {"status": "ok", "to": "fatreasury", "amount": 1500000,
                               "asset": "fusd"}
    engine.chains.set_transport("fakenet", chain)
    engine.ensure_rail_states()
    app = create_app(engine)
    app.state.rate_limiter = RateLimiter(rate=0)  # limits have their own test; fuzz deep
    return app, engine


def _seed(engine) -> dict[str, list[str]]:
    """Real ids for the fuzzer to aim at, so generated bodies get past the 404s."""
    out: dict[str, list[str]] = {"session": [], "proof": []}
    for rail_id, recipient in (("fake_live", "fatreasury"), ("solana_usdc", None),
                               ("x402", None)):
        sess = open_session(engine, NewSession(owner_id="alice", rail_id=rail_id,
                                               access_product_id="pro", amount=1500000,
                                               recipient=recipient,
                                               reference=None if rail_id == "x402" else "auto"),
                            actor="fuzz-seed")
        out["session"].append(sess["id"])
    view, _ = submit_proof(engine, out["session"][0], "fx0123abcd", ["alice"], actor="fuzz-seed")
    out["proof"].append(view["id"])
    return out


def steer(case, path: str, seeds: dict[str, list[str]]) -> None:
    """Aim two cases in three at real owners, rails and ids; the third stays as generated."""
    pick = zlib.crc32(repr((case.body, case.query, case.path_parameters)).encode())
    if pick % 3 == 0:
        return
    body = case.body if isinstance(case.body, dict) else None
    if path == "/v1/payment-sessions" and body is not None:
        case.body = {**body, "owner_id": "alice", "rail_id": FUZZ_RAILS[pick % len(FUZZ_RAILS)]}
    elif path == "/v1/proofs" and body is not None:
        case.body = {**body, "session_id": seeds["session"][pick % len(seeds["session"])]}
    elif path == "/v1/entitlements":
        case.query = {**(case.query or {}), "owner_id": "alice"}
    params = dict(case.path_parameters or {})
    if "proof_id" in params:
        params["proof_id"] = seeds["proof"][0]
    if "session_id" in params:
        params["session_id"] = seeds["session"][pick % len(seeds["session"])]
    if "rail_id" in params:
        params["rail_id"] = FUZZ_RAILS[pick % len(FUZZ_RAILS)]
    if params:
        case.path_parameters = params


def _operations() -> list[tuple[str, str]]:
    # The schema without a database: building the app opens no connection.
    engine = Engine(make_settings("sqlite:///unused-for-schema.db"), catalog=catalog_with_fake())
    spec = create_app(engine).openapi()
    return [(m.upper(), path) for path, item in sorted(spec["paths"].items())
            for m in sorted(item)]


OPERATIONS = _operations()


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    app, engine = _app(tmp_path_factory.mktemp("fuzz"))
    yield schemathesis.openapi.from_asgi("/openapi.json", app), _seed(engine)
    engine.db.dispose()


def assert_sound(response, path: str) -> None:
    text = response.text
    assert response.status_code < 500, f"{path}: {response.status_code} {text[:300]}"
    for marker in TRACE_MARKERS:
        assert marker not in text, f"{path}: stack trace text in the answer: {text[:300]}"
    if path == "/metrics":
        return
    body = json.loads(text)  # every answer is JSON
    if response.status_code >= 400:
        err = body["error"]
        assert isinstance(err["code"], str) and err["code"]
        assert isinstance(err["message"], str)


def token_for(path: str) -> str:
    return STAFF_TOKEN if path.startswith("/v1/admin") else SERVICE_TOKEN


def test_every_route_is_in_the_fuzzed_schema():
    assert len(OPERATIONS) >= 25
    assert ("POST", "/v1/proofs") in OPERATIONS and ("GET", "/metrics") in OPERATIONS


@pytest.mark.parametrize("method,path", OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_fuzz_operation(api_schema, method, path):
    api, seeds = api_schema
    op = next(r.ok() for r in api.get_all_operations()
              if r.ok().method.upper() == method and r.ok().path == path)
    headers = {"Authorization": f"Bearer {token_for(path)}"}

    # No shrinking: a failure is reported as found (with its curl line), in bounded time.
    @settings(max_examples=25, deadline=None, derandomize=True, database=None,
              phases=(Phase.explicit, Phase.generate), report_multiple_bugs=False,
              suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy())
    def run(case):
        case.headers = {**(case.headers or {}), **headers}
        steer(case, path, seeds)
        assert_sound(case.call(), path)

    run()


# -- hostile bodies by hand ---------------------------------------------------------------


@pytest.fixture
def hostile_client(tmp_path):
    app, engine = _app(tmp_path)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c
    engine.db.dispose()


JSON_HEADERS = {**auth(), "Content-Type": "application/json"}


@pytest.mark.parametrize("path", ["/v1/proofs", "/v1/payment-sessions"])
def test_ten_thousand_nested_arrays_are_refused(hostile_client, path):
    r = hostile_client.post(path, headers=JSON_HEADERS, content=b"[" * 10_000 + b"]" * 10_000)
    assert 400 <= r.status_code < 500
    assert r.json()["error"]["code"] == "body_too_deep"
    assert_sound(r, path)


def test_deep_proof_object_is_refused_not_a_500(hostile_client):
    # 300 levels parse fine in Python but overflow the canonical-JSON encoder behind
    # fingerprints and idempotency hashes: refused before parsing.
    body = b'{"session_id": "s", "proof": {"a": ' + b"[" * 300 + b"]" * 300 + b"}}"
    for extra in ({}, {"Idempotency-Key": "deep-1"}):
        r = hostile_client.post("/v1/proofs", headers={**JSON_HEADERS, **extra}, content=body)
        assert r.status_code == 422 and r.json()["error"]["code"] == "body_too_deep", r.text


def test_brackets_inside_strings_do_not_count_as_depth(hostile_client):
    r = hostile_client.post("/v1/proofs", headers=JSON_HEADERS, content=json.dumps(
        {"session_id": "nope", "proof": "[" * 1000 + "{" * 1000}).encode())
    assert r.status_code == 404 and r.json()["error"]["code"] == "session_not_found"


def test_oversized_body_with_and_without_content_length(hostile_client):
    big = b'{"session_id": "s", "proof": "' + b"a" * (MAX_BODY_BYTES + 10) + b'"}'
    r = hostile_client.post("/v1/proofs", headers=JSON_HEADERS, content=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"

    def chunked():  # no Content-Length: the size is counted as the bytes arrive
        yield big[:1000]
        for i in range(1000, len(big), 8192):
            yield big[i:i + 8192]

    r = hostile_client.post("/v1/proofs", headers=JSON_HEADERS, content=chunked())
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    assert_sound(r, "/v1/proofs")


@pytest.mark.parametrize("content", [b"\xff\xfe\x00", b'{"session_id": ', b"null", b"[]",
                                     b'{"session_id": "s", "proof": 12}', b"\x00" * 100])
def test_garbage_bodies_are_json_4xx(hostile_client, content):
    r = hostile_client.post("/v1/proofs", headers=JSON_HEADERS, content=content)
    assert 400 <= r.status_code < 500
    assert_sound(r, "/v1/proofs")


@pytest.mark.parametrize("proof", [b'{"a": "\\ud800"}', b'{"a": 123456789012345678901234567890}'])
@pytest.mark.parametrize("key", [None, "k-unencodable"])
def test_proof_object_canonical_json_cannot_encode_is_a_422(hostile_client, proof, key):
    # Found by the fuzzer: a proof object with a lone surrogate or an integer beyond 64 bits
    # broke the canonical-JSON encoder behind fingerprints and idempotency hashes (a 500).
    headers = {**JSON_HEADERS, **({"Idempotency-Key": key} if key else {})}
    r = hostile_client.post("/v1/proofs", headers=headers,
                            content=b'{"session_id": "s", "proof": ' + proof + b"}")
    assert r.status_code == 422 and r.json()["error"]["field"].startswith("proof"), r.text


@pytest.mark.parametrize("rail_id,treasury", [("solana_usdc", "0"), ("tron_usdt", "1\x13"),
                                              ("evm_usdc", "0xnothex")])
def test_malformed_treasury_request_is_a_422(hostile_client, rail_id, treasury):
    # Found by the fuzzer: the adapter's ProofMalformed escaped as a 500.
    r = hostile_client.post(f"/v1/admin/rails/{rail_id}/treasury/request",
                            headers=auth(STAFF_TOKEN),
                            json={"treasury": treasury, "incident_id": "INC-1",
                                  "operator_reason": "fuzz finding"})
    assert r.status_code == 422, r.text


