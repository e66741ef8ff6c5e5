"""API fuzzing: schemathesis generates requests from the app's own OpenAPI schema and sends
them in-process (ASGI) with valid tokens, so generated bodies reach the handlers instead of
stopping at 401. Bounded and derandomized, so CI runs the same cases every time.

Every answer must be: below 500; free of stack trace text; JSON (the Prometheus text of
/metrics aside); and an error body {"error": {"code", "message"}} whenever it is a 4xx.
Many cases also carry control characters (NUL above all, which PostgreSQL text cannot hold)
in one path parameter, query parameter, header or body string (schemathesis itself keeps
them out of paths): those must be a 422 naming that field. Everything runs on SQLite and on
PostgreSQL.
Plus the hand-written hostile bodies no generator produces: 10,000 nested arrays, a few
hundred levels inside `proof`, a body over the size limit with and without Content-Length.
"""

from __future__ import annotations

import json
import re
import zlib
from urllib.parse import quote

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.conftest import SERVICE_TOKEN, STAFF_TOKEN, auth, make_pg_db, make_settings
from tests.fake_rail import ScriptedChain, catalog_with_fake
from tests.helpers import FIXTURES
from verifier.core.engine import Engine
from verifier.http.api import MAX_BODY_BYTES, create_app
from verifier.http.ratelimit import RateLimiter
from verifier.services.proofs import submit_proof
from verifier.services.sessions import NewSession, open_session
from verifier.storage.db import upgrade

TRACE_MARKERS = ("Traceback", 'File "')
FUZZ_RAILS = ["fake_live", "solana_usdc", "x402", "fake_gated", "tron_usdt"]
X402_PAY_TO = "0x02188583AC333178Dc88122B141B4e169BbdB22e"
SOLANA_TREASURY = "C1bL1CaQ6PjLKZyYRn11ZtydLqEfGUxdcvUS3frx8ocg"


def _app(url: str):
    engine = Engine(
        make_settings(
            url,
            cassette_dir=FIXTURES,
            env={
                "RAILPROOF_TREASURY_X402": X402_PAY_TO,
                "RAILPROOF_TREASURY_SOLANA_USDC": SOLANA_TREASURY,
            },
        ),
        catalog=catalog_with_fake(),
    )
    chain = ScriptedChain()
    chain.txs["fx0123abcd"] = {
        "status": "ok",
        "to": "fatreasury",
        "amount": 1500000,
        "asset": "fusd",
    }
    engine.chains.set_transport("fakenet", chain)
    engine.ensure_rail_states()
    app = create_app(engine)
    app.state.rate_limiter = RateLimiter(rate=0)  # limits have their own test; fuzz deep
    return app, engine


def _seed(engine) -> dict[str, list[str]]:
    """Real ids for the fuzzer to aim at, so generated bodies get past the 404s."""
    out: dict[str, list[str]] = {"session": [], "proof": []}
    for rail_id, recipient in (("fake_live", "fatreasury"), ("solana_usdc", None), ("x402", None)):
        sess = open_session(
            engine,
            NewSession(
                owner_id="alice",
                rail_id=rail_id,
                access_product_id="pro",
                amount=1500000,
                recipient=recipient,
                reference=None if rail_id == "x402" else "auto",
            ),
            actor="fuzz-seed",
        )
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


def _operations() -> tuple[list[tuple[str, str]], dict[tuple[str, str], list[tuple[str, str]]]]:
    """Every (method, path), and each one's parameters as (location, name)."""
    # The schema without a database: building the app opens no connection.
    engine = Engine(make_settings("sqlite:///unused-for-schema.db"), catalog=catalog_with_fake())
    spec = create_app(engine).openapi()
    ops = [(m.upper(), path) for path, item in sorted(spec["paths"].items()) for m in sorted(item)]
    params = {
        (m.upper(), path): [(p["in"], p["name"]) for p in op.get("parameters", [])]
        for path, item in spec["paths"].items()
        for m, op in item.items()
    }
    return ops, params


OPERATIONS, PARAMETERS = _operations()


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def fuzz_db_url(request, tmp_path_factory):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('fuzz')}/fuzz.db"
        upgrade(url)
        yield url
        return
    url, drop = make_pg_db(request.getfixturevalue("pg_template"))
    yield url
    drop()


@pytest.fixture(scope="module")
def api_schema(fuzz_db_url):
    app, engine = _app(fuzz_db_url)
    yield schemathesis.openapi.from_asgi("/openapi.json", app), _seed(engine)
    engine.db.dispose()


# -- control characters -------------------------------------------------------------------

CONTROL = re.compile(r"[\x00-\x1f\x7f]")
HEADER_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # HTTP allows HTAB in a header
# NUL most of all; then any C0 control character or DEL, alone or in a run.
BAD_TEXT = st.sampled_from(
    ["\x00", "a\x00b", "\x00\x01", "\x7f", "\n", "\t", "\r\n", "\x1b[0m"]
) | st.text(st.characters(max_codepoint=0x1F) | st.just("\x7f"), min_size=1, max_size=4)
TAINT = st.none() | st.tuples(st.integers(0, 2**31), BAD_TEXT)


def body_strings(value, keys: tuple = ()):
    """(keys, text) of every string in a JSON value; the API names one by ".".join(keys)."""
    if isinstance(value, str):
        yield keys, value
    elif isinstance(value, (dict, list)):
        for k, v in value.items() if isinstance(value, dict) else enumerate(value):
            yield from body_strings(v, (*keys, k))


def _dotted(keys: tuple) -> str:
    return ".".join(map(str, keys)) or "body"


def taint(case, method: str, path: str, taint_with) -> None:
    """Put control characters into one parameter, header or body string of the case."""
    if taint_with is None:
        return
    pick, bad = taint_with
    spots: dict[str, list] = {}
    for loc, name in PARAMETERS[(method, path)]:
        spots.setdefault(loc, []).append(name)
    if isinstance(case.body, (dict, list)):
        spots["body"] = [keys for keys, _ in body_strings(case.body) if keys] or None
    kinds = sorted(k for k, v in spots.items() if v)  # each kind as often, however many names
    if not kinds:
        return
    loc = kinds[pick % len(kinds)]
    name = spots[loc][pick // len(kinds) % len(spots[loc])]
    if loc == "path":  # schemathesis sends path parameters as it holds them: percent-encoded
        params = dict(case.path_parameters or {})
        params[name] = str(params.get(name, "")) + quote(bad, safe="")
        case.path_parameters = params
    elif loc == "query":
        case.query = {**(case.query or {}), name: f"{(case.query or {}).get(name, '')}{bad}"}
    elif loc == "header":
        headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != name.lower()}
        # The HTTP client itself refuses CR and LF in a header (and HTAB is allowed there).
        kept = "".join(c for c in bad if c not in "\t\r\n") or "\x00"
        case.headers = {**headers, name: "k" + kept}
    else:
        parent = case.body
        for k in name[:-1]:
            parent = parent[k]
        parent[name[-1]] = parent[name[-1]][:1] + bad + parent[name[-1]][1:]


def refused_fields(case) -> set[str]:
    """The names the API may give what the case holds and must refuse (lower-cased)."""
    out = {k.lower() for k, v in (case.headers or {}).items() if HEADER_CONTROL.search(str(v))}
    out |= {
        "query" if CONTROL.search(k) else k.lower()
        for k, v in (case.query or {}).items()
        if CONTROL.search(f"{k}{v}")
    }
    out |= {
        k.lower()
        for k, v in (case.path_parameters or {}).items()
        if re.search(r"%(?:[01][0-9A-Fa-f]|7[Ff])", str(v))
    }
    if isinstance(case.body, (dict, list)):
        out |= {_dotted(k).lower() for k, text in body_strings(case.body) if "\x00" in text}
        out |= {_dotted(k).lower() for k in _objects_with_nul_keys(case.body)}
    return out


def _objects_with_nul_keys(value, keys: tuple = ()):
    if isinstance(value, (dict, list)):
        for k, v in value.items() if isinstance(value, dict) else enumerate(value):
            if isinstance(k, str) and "\x00" in k:
                yield keys
            yield from _objects_with_nul_keys(v, (*keys, k))


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
    op = next(
        r.ok()
        for r in api.get_all_operations()
        if r.ok().method.upper() == method and r.ok().path == path
    )
    headers = {"Authorization": f"Bearer {token_for(path)}"}

    # No shrinking: a failure is reported as found (with its curl line), in bounded time.
    @settings(
        max_examples=25,
        deadline=None,
        derandomize=True,
        database=None,
        phases=(Phase.explicit, Phase.generate),
        report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=op.as_strategy(), taint_with=TAINT)
    def run(case, taint_with):
        case.headers = {**(case.headers or {}), **headers}
        steer(case, path, seeds)
        taint(case, method, path, taint_with)
        refused = refused_fields(case)
        response = case.call()
        assert_sound(response, path)
        if refused:
            err = response.json()["error"]
            assert response.status_code == 422 and err["code"] == "invalid_request", (
                refused,
                response.text,
            )
            assert err["field"].lower() in refused, (refused, err)

    run()


# -- hostile bodies by hand ---------------------------------------------------------------


@pytest.fixture
def hostile_client(db_url):
    app, engine = _app(db_url)
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
    r = hostile_client.post(
        "/v1/proofs",
        headers=JSON_HEADERS,
        content=json.dumps({"session_id": "nope", "proof": "[" * 1000 + "{" * 1000}).encode(),
    )
    assert r.status_code == 404 and r.json()["error"]["code"] == "session_not_found"


def test_oversized_body_with_and_without_content_length(hostile_client):
    big = b'{"session_id": "s", "proof": "' + b"a" * (MAX_BODY_BYTES + 10) + b'"}'
    r = hostile_client.post("/v1/proofs", headers=JSON_HEADERS, content=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"

    def chunked():  # no Content-Length: the size is counted as the bytes arrive
        yield big[:1000]
        for i in range(1000, len(big), 8192):
            yield big[i : i + 8192]

    r = hostile_client.post("/v1/proofs", headers=JSON_HEADERS, content=chunked())
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    assert_sound(r, "/v1/proofs")


@pytest.mark.parametrize(
    "content",
    [
        b"\xff\xfe\x00",
        b'{"session_id": ',
        b"null",
        b"[]",
        b'{"session_id": "s", "proof": 12}',
        b"\x00" * 100,
    ],
)
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
    r = hostile_client.post(
        "/v1/proofs", headers=headers, content=b'{"session_id": "s", "proof": ' + proof + b"}"
    )
    assert r.status_code == 422 and r.json()["error"]["field"].startswith("proof"), r.text


@pytest.mark.parametrize(
    "rail_id,treasury", [("solana_usdc", "0"), ("tron_usdt", "1\x13"), ("evm_usdc", "0xnothex")]
)
def test_malformed_treasury_request_is_a_422(hostile_client, rail_id, treasury):
    # Found by the fuzzer: the adapter's ProofMalformed escaped as a 500.
    r = hostile_client.post(
        f"/v1/admin/rails/{rail_id}/treasury/request",
        headers=auth(STAFF_TOKEN),
        json={"treasury": treasury, "incident_id": "INC-1", "operator_reason": "fuzz finding"},
    )
    assert r.status_code == 422, r.text
