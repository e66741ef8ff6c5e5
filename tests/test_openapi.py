"""The OpenAPI document is the contract clients are generated from, so it must be complete:
every operation has a schema for its 2xx answer, every non-public one declares the bearer
scheme, every error it documents is the shared error model, and the document is valid
OpenAPI 3.1.

The operations come from the app's routers, not from a list here: a route added without a
response model fails these tests and names itself.
"""

from __future__ import annotations

import re

import jsonschema_rs
import pytest
from fastapi.routing import APIRoute

from tests.conftest import make_settings
from tests.fake_rail import catalog_with_fake
from verifier.core.engine import Engine
from verifier.http.api import create_app
from verifier.http.app import INCLUDED, MOUNTED

PUBLIC = {"/healthz", "/readyz", "/metrics"}
ERROR_REF = "#/components/schemas/ErrorOut"
# The one error answer that is not the shared error model: /readyz's 503 is its readiness
# report (the same body as its 200), naming the checks that failed.
OWN_ERROR_BODY = {("get", "/readyz", "503"): "#/components/schemas/ReadyOut"}
METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


@pytest.fixture(scope="module")
def app():
    # The schema needs no database: building the app opens no connection.
    engine = Engine(make_settings("sqlite:///unused-for-schema.db"), catalog=catalog_with_fake())
    return create_app(engine)


@pytest.fixture(scope="module")
def spec(app):
    from fastapi.testclient import TestClient

    with TestClient(app) as client:  # the document a client downloads, not a private copy
        r = client.get("/openapi.json")
    assert r.status_code == 200
    return r.json()


def operations(app) -> list[tuple[str, str]]:
    """(method, path) of every API route: the app's own and every router's."""
    routes = [r for r in app.routes if isinstance(r, APIRoute)]
    routes += [r for router in (*MOUNTED, *INCLUDED) for r in router.routes]
    out = {
        (m.lower(), r.path)
        for r in routes
        if r.include_in_schema
        for m in r.methods - {"HEAD", "OPTIONS"}
    }
    return sorted(out)


def resolve(spec: dict, ref: str) -> dict:
    assert ref.startswith("#/"), ref
    node = spec
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def test_the_walk_finds_every_operation(app, spec):
    ops = operations(app)
    assert len(ops) >= 30
    assert ("post", "/v1/proofs") in ops
    assert ("delete", "/v1/webhook-endpoints/{endpoint_id}") in ops
    documented = {(m, p) for p, item in spec["paths"].items() for m in item if m in METHODS}
    assert set(ops) == documented


def test_every_operation_has_a_schema_for_its_success_answer(app, spec):
    missing = []
    for method, path in operations(app):
        op = spec["paths"][path][method]
        ok = {code: r for code, r in op["responses"].items() if code.startswith("2")}
        if not ok:
            missing.append(f"{method.upper()} {path}: no 2xx response")
        for code, r in ok.items():
            schemas = [c.get("schema") for c in r.get("content", {}).values()]
            if not schemas or not all(schemas) or any(s == {} for s in schemas):
                missing.append(f"{method.upper()} {path} {code}: no response schema")
    assert not missing, "\n".join(missing)


def test_json_answers_are_named_models_that_refuse_unknown_keys(app, spec):
    # A named model (a $ref, or an array of one) rather than an anonymous object, and closed:
    # a service that grows a key fails validation instead of leaking it undocumented.
    for method, path in operations(app):
        for code, r in spec["paths"][path][method]["responses"].items():
            schema = r.get("content", {}).get("application/json", {}).get("schema")
            if not code.startswith("2") or schema is None:
                continue
            ref = schema.get("$ref") or schema.get("items", {}).get("$ref")
            assert ref, f"{method.upper()} {path} {code}: {schema}"
            assert resolve(spec, ref).get("additionalProperties") is False, ref


def test_every_non_public_operation_declares_bearer_security(app, spec):
    schemes = spec["components"]["securitySchemes"]
    assert schemes == {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": schemes["bearer"]["description"],
        }
    }
    for method, path in operations(app):
        op = spec["paths"][path][method]
        if path in PUBLIC:
            assert "security" not in op, path
            continue
        assert op.get("security") == [{"bearer": []}], f"{method.upper()} {path}"
        assert "401" in op["responses"], f"{method.upper()} {path}: 401 not documented"
        # The token is the scheme's business, not a header parameter of its own.
        names = {p["name"].lower() for p in op.get("parameters", []) if p["in"] == "header"}
        assert "authorization" not in names, path


def test_every_documented_error_is_the_shared_error_model(app, spec):
    for method, path in operations(app):
        for code, r in spec["paths"][path][method]["responses"].items():
            if code.startswith("2"):
                continue
            assert code[0] in "45", (path, code)
            ref = OWN_ERROR_BODY.get((method, path, code), ERROR_REF)
            assert r["content"] == {"application/json": {"schema": {"$ref": ref}}}, (
                f"{method.upper()} {path} {code}: {r}"
            )
    # FastAPI's own {"detail": [...]} 422 never appears: the API does not answer it.
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    assert "ValidationError" not in spec["components"]["schemas"]


def test_the_error_model(spec):
    schemas = spec["components"]["schemas"]
    err = schemas["ErrorOut"]
    assert err["required"] == ["error"]
    detail = resolve(spec, err["properties"]["error"]["$ref"])
    assert set(detail["required"]) == {"code", "message"}
    # Refusals carry more than the three fields: the gate's report, the refused proof.
    assert {"field", "report", "proof_id", "retry_after"} <= set(detail["properties"])
    assert detail["additionalProperties"] is True


@pytest.mark.parametrize(
    "method,path,statuses",
    [
        ("post", "/v1/payment-sessions", {"401", "404", "409", "413", "422", "429", "503"}),
        ("post", "/v1/proofs", {"401", "404", "409", "413", "422", "429", "503"}),
        ("get", "/v1/entitlements", {"401", "404", "422", "503"}),
        ("post", "/v1/admin/proofs/{proof_id}/apply", {"401", "404", "409", "422", "503"}),
        ("post", "/v1/admin/approvals/{approval_id}/approve", {"401", "403", "404", "409"}),
        ("delete", "/v1/webhook-endpoints/{endpoint_id}", {"401", "404", "422"}),
    ],
)
def test_errors_that_can_happen_are_documented(spec, method, path, statuses):
    assert statuses <= set(spec["paths"][path][method]["responses"])


def test_every_staff_operation_declares_the_sign_in_bounds_429(app, spec):
    # Past the staff sign-in bound every staff request from an address is refused with 429,
    # a right token too (tests/test_console_login_bound.py).
    staff = [(m, p) for m, p in operations(app) if p.startswith("/v1/admin")]
    assert staff
    for method, path in staff:
        assert "429" in spec["paths"][path][method]["responses"], f"{method.upper()} {path}"


def test_proof_submission_answers_201_new_and_200_the_same_again(spec):
    responses = spec["paths"]["/v1/proofs"]["post"]["responses"]
    for code in ("200", "201"):
        assert responses[code]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ProofOut"
        }


def test_amount_is_an_integer_or_a_digit_string(spec):
    amount = spec["components"]["schemas"]["SessionIn"]["properties"]["amount"]
    kinds = {s["type"]: s for s in amount["anyOf"]}
    assert set(kinds) == {"integer", "string"}
    assert kinds["integer"]["minimum"] == 1 and kinds["string"]["pattern"] == "^[0-9]+$"
    # Out of the API it is always the string of base units.
    assert spec["components"]["schemas"]["SessionOut"]["properties"]["amount"]["type"] == "string"


def test_proof_type_is_not_a_fixed_list_of_families(spec):
    # The session's rail decides which proof types it takes (422 invalid_proof_type).
    prop = spec["components"]["schemas"]["ProofIn"]["properties"]["proof_type"]
    text = [s for s in prop["anyOf"] if s.get("type") == "string"]
    assert text and "enum" not in text[0] and "const" not in text[0]
    assert text[0]["maxLength"] <= 64 and text[0]["pattern"]


# -- the document is valid OpenAPI --------------------------------------------------------------


def _refs(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                yield v
            else:
                yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


def test_the_document_is_valid_openapi_3_1(spec):
    assert re.fullmatch(r"3\.1\.\d+", spec["openapi"])
    assert spec["info"]["title"] and spec["info"]["version"]
    try:
        # The OpenAPI 3.1 meta-schema schemathesis (the fuzzer's library) bundles.
        from schemathesis.specs.openapi.definitions import OPENAPI_31
    except ImportError:  # pragma: no cover - the structural checks below still run
        OPENAPI_31 = None
    if OPENAPI_31 is not None:
        errors = [
            f"{'/'.join(map(str, e.instance_path))}: {e.message}"
            for e in jsonschema_rs.Draft202012Validator(OPENAPI_31).iter_errors(spec)
        ]
        assert not errors, "\n".join(errors[:20])
    for schema in spec["components"]["schemas"].values():
        jsonschema_rs.meta.validate(schema)  # each model is a valid JSON Schema (2020-12)
    for ref in set(_refs(spec)):
        resolve(spec, ref)  # every $ref resolves
    ids = [
        op["operationId"]
        for item in spec["paths"].values()
        for m, op in item.items()
        if m in METHODS
    ]
    assert len(ids) == len(set(ids)), "operationIds must be unique"
    for path, item in spec["paths"].items():
        for m, op in item.items():
            if m not in METHODS:
                continue
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == set(re.findall(r"\{([^}]+)\}", path)), (m, path)
            for code, r in op["responses"].items():
                assert r.get("description"), (m, path, code)
            for req in op.get("security", []):
                assert set(req) <= set(spec["components"]["securitySchemes"]), (m, path)
