"""Every answer the app sends matches a response declared for its route and status in the
OpenAPI document (the contract clients are generated from, clients/openapi.json).

The walk takes every operation from the app's own /openapi.json, sends it valid and malformed
requests in process, and validates each body against the schema declared for the status it
got (jsonschema_rs, Draft 2020-12, with the document's components). An answer whose status
the operation does not declare is a contract break, as is a body its schema refuses.
"""

from __future__ import annotations

import json
import re

import jsonschema_rs
import pytest
from fastapi.testclient import TestClient

from tests.conftest import OTHER_SERVICE_TOKEN, STAFF_TOKEN, auth
from verifier.http.api import MAX_BODY_BYTES, create_app

TRACE_MARKERS = ("Traceback", 'File "', "sqlalchemy", "psycopg", "sqlite3.")


class Contract:
    def __init__(self, spec: dict):
        self.spec = spec
        self.routes = [
            (re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$"), path, item)
            for path, item in spec["paths"].items()
        ]
        self.violations: list[str] = []
        self._validators: dict[str, jsonschema_rs.Draft202012Validator] = {}

    def _validator(self, schema: dict) -> jsonschema_rs.Draft202012Validator:
        key = json.dumps(schema, sort_keys=True)
        if key not in self._validators:
            self._validators[key] = jsonschema_rs.Draft202012Validator(
                {**schema, "components": self.spec["components"]}
            )
        return self._validators[key]

    def check(self, method: str, url: str, r) -> None:
        label = f"{method} {url[:90]} -> {r.status_code}"
        if r.status_code >= 500:
            self.violations.append(f"{label}: a 5xx: {r.text[:200]}")
        for marker in TRACE_MARKERS:
            if marker in r.text:
                self.violations.append(f"{label}: leaks {marker!r}: {r.text[:200]}")
        path = url.split("?")[0]
        ops = [
            (p, item[method.lower()])
            for rx, p, item in self.routes
            if rx.match(path) and method.lower() in item
        ]
        if not ops:
            return  # no such operation: nothing declared to hold it to
        template, op = ops[0]
        declared = op["responses"].get(str(r.status_code)) or op["responses"].get("default")
        if declared is None:
            self.violations.append(
                f"{label}: status {r.status_code} is not declared for {method} {template} "
                f"(declared: {sorted(op['responses'])}); body {r.text[:120]}"
            )
            return
        content = declared.get("content") or {}
        if not content:
            return
        ctype = r.headers.get("content-type", "")
        media = next((m for m in content if ctype.startswith(m.split(";")[0])), None)
        if media is None:
            self.violations.append(f"{label}: content-type {ctype!r} not in {list(content)}")
            return
        if media != "application/json":
            return
        try:
            body = r.json()
        except ValueError:
            self.violations.append(f"{label}: not JSON: {r.text[:120]}")
            return
        errors = [
            f"{'/'.join(map(str, e.instance_path))}: {e.message[:160]}"
            for e in self._validator(content[media]["schema"]).iter_errors(body)
        ]
        if errors:
            self.violations.append(f"{label}: body refused by its schema: {errors[:3]}")


@pytest.fixture
def walk(engine, chain):
    app = create_app(engine)
    with TestClient(app, raise_server_exceptions=False) as client:
        spec = client.get("/openapi.json").json()
        contract = Contract(spec)

        def send(method: str, url: str, **kw):
            r = client.request(method, url, **kw)
            contract.check(method, url, r)
            return r

        yield spec, contract, send, chain


def _token(path: str) -> dict[str, str]:
    return auth(STAFF_TOKEN) if path.startswith("/v1/admin") else auth()


def _operations(spec: dict) -> list[tuple[str, str]]:
    return [(m.upper(), p) for p, item in sorted(spec["paths"].items()) for m in sorted(item)]


def _fill(template: str, ids: dict[str, str], default: str = "nope") -> str:
    return re.sub(r"\{([^}]+)\}", lambda m: ids.get(m.group(1), default), template)


def _seed(send, chain) -> dict[str, str]:
    """A verified, applied proof and its session, entitlement and receipt: real ids."""
    r = send(
        "POST",
        "/v1/payment-sessions",
        headers=auth(),
        json={
            "owner_id": "alice",
            "rail_id": "fake_live",
            "access_product_id": "pro",
            "amount": 1500000,
            "recipient": "fatreasury",
        },
    )
    assert r.status_code == 201, r.text
    session = r.json()
    chain.txs["fx0123abcd"] = {
        "status": "ok",
        "to": "fatreasury",
        "amount": 1500000,
        "asset": "fusd",
        "refs": [session["reference"]],
    }
    chain.statuses["fx0123abcd"] = "finalized"
    r = send(
        "POST",
        "/v1/proofs",
        headers=auth(),
        json={"session_id": session["id"], "proof": "fx0123abcd"},
    )
    assert r.status_code == 201 and r.json()["status"] == "verified", r.text
    proof_id = r.json()["id"]
    ctx = {"confirm": True, "incident_id": "INC-1", "operator_reason": "contract walk"}
    r = send("POST", f"/v1/admin/proofs/{proof_id}/apply", headers=auth(STAFF_TOKEN), json=ctx)
    assert r.status_code == 200, r.text
    return {
        "session_id": session["id"],
        "proof_id": proof_id,
        "entitlement_id": r.json()["entitlement_id"],
        "rail_id": "fake_live",
    }


def test_valid_and_malformed_requests_answer_only_what_the_contract_declares(walk):
    """The broad walk: everything but the oversized bodies (their own test below)."""
    spec, contract, send, chain = walk
    ids = _seed(send, chain)
    ctx = {"confirm": True, "incident_id": "INC-1", "operator_reason": "contract walk"}
    for method, template in _operations(spec):
        url = _fill(template, ids)
        tok = _token(template)
        send(method, url)  # no token
        send(
            method,
            url,
            headers=auth(OTHER_SERVICE_TOKEN if tok == auth(STAFF_TOKEN) else STAFF_TOKEN),
        )
        send(method, url, headers=tok)
        if method == "POST":
            send(method, url, headers=tok, json=ctx)
        for ctype, content in (
            ("application/json", b""),
            ("application/json", b"{"),
            ("application/json", b"[1]"),
            ("application/json", b'{"confirm": true, "confirm": false}'),
            ("application/json", b'{"x": "\\u0000"}'),
            ("application/json", b'{"x": "\\ud800"}'),
            ("application/json", b'{"limit": 123456789012345678901234567890}'),
            ("application/json", b"[" * 40 + b"]" * 40),
            ("text/plain", b"hello"),
            ("application/x-www-form-urlencoded", b"a=1"),
        ):
            send(method, url, headers={**tok, "Content-Type": ctype}, content=content)
        if "{" in template:
            for odd in ("a%2Fb", "%E2%98%83", "%ff", "a%20b", "x" * 3000, "%25", "%00"):
                send(method, _fill(template, {}, odd), headers=tok)
        for q in (
            "limit=0",
            "limit=-1",
            "limit=abc",
            "limit=1.5",
            "limit=99999999999999999999",
            "limit=1&limit=abc",
            "status=zzz",
            "owner_id=alice&owner_id=bob",
            "owner_id=",
            "scope=zz",
            "period_days=1e3",
            "min_age_seconds=99999999999999999999",
            "after=",
        ):
            send(method, f"{url}?{q}", headers=tok)
    assert not contract.violations, "\n".join(contract.violations)


def _spec() -> dict:
    from tests.conftest import make_settings
    from tests.fake_rail import catalog_with_fake
    from verifier.core.engine import Engine

    engine = Engine(make_settings("sqlite:///unused-for-schema.db"), catalog=catalog_with_fake())
    return create_app(engine).openapi()


OPERATIONS = _operations(_spec())


@pytest.mark.parametrize("method,template", OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_an_oversized_body_is_answered_with_a_declared_status(walk, method, template):
    """BodyGuard answers 413 `body_too_large` to any request whose Content-Length is over
    64 KiB, on every route and method (GET included: the length is checked before the method),
    but only the routes that read a JSON body declare 413: on every GET route, on
    POST .../rotate-secret and DELETE /v1/webhook-endpoints/{id}, a client generated from the
    document meets a status it was told cannot happen."""
    spec, contract, send, _ = walk
    url = _fill(template, {"rail_id": "fake_live"})
    r = send(
        method,
        url,
        headers={**_token(template), "Content-Type": "application/json"},
        content=b'{"x": "' + b"a" * (MAX_BODY_BYTES + 1) + b'"}',
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    assert not contract.violations, "\n".join(contract.violations)
