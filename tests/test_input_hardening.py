"""Hostile input at the edges, on SQLite and PostgreSQL:

- NUL (and, in ids, every control character) in a path parameter, query parameter, header
  or JSON body is a 422 naming the field, never a database error (PostgreSQL text cannot
  hold NUL: it used to be a 500 and a dropped connection);
- a body that is not UTF-8 (UTF-16, UTF-32, which the JSON parser would read otherwise than
  the guards) is a 422 naming `body`;
- only JSON `true` confirms a staff action;
- an Idempotency-Key stores only a request that executed: a refusal is run again on retry;
- `railproof verify-offline --proof` takes a real X-PAYMENT header, and anything that is
  neither a readable file nor a proof is exit 2 with a message, never a traceback.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import func, select

from tests.conftest import STAFF_TOKEN, auth
from tests.helpers import FAKE_SESSION, counts
from tests.live_server import LiveServer
from verifier.core.errors import BadInput
from verifier.http import guards
from verifier.services import idempotency
from verifier.storage.models import IdempotencyClaim

ROOT = Path(__file__).resolve().parent.parent
X402 = ROOT / "fixtures" / "x402"
RAILPROOF = str(Path(sys.executable).parent / "railproof")
SESSION = dict(FAKE_SESSION)
STAFF = auth(STAFF_TOKEN)
CONTEXT = {"incident_id": "INC-7", "operator_reason": "input hardening test"}


def refused(r, field: str) -> None:
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert (err["code"], err["field"]) == ("invalid_request", field), err
    assert err["message"].startswith(f"{field}: ")


# -- NUL and control characters ------------------------------------------------------------

PATH_ROUTES = [  # every route with a path parameter
    ("get", "/v1/payment-sessions/{}", "session_id", None),
    ("get", "/v1/proofs/{}", "proof_id", None),
    ("delete", "/v1/webhook-endpoints/{}", "endpoint_id", None),
    ("get", "/v1/admin/proofs/{}", "proof_id", None),
    ("get", "/v1/admin/proofs/{}/attempts", "proof_id", None),
    ("get", "/v1/admin/proofs/{}/settlement-evidence", "proof_id", None),
    ("post", "/v1/admin/proofs/{}/dry-run-apply", "proof_id", {}),
    ("post", "/v1/admin/proofs/{}/apply", "proof_id", {"confirm": True, **CONTEXT}),
    ("post", "/v1/admin/proofs/{}/receipt", "proof_id", {"confirm": True, **CONTEXT}),
    (
        "post",
        "/v1/admin/proofs/{}/review",
        "proof_id",
        {"decision": "release", "confirm": True, **CONTEXT},
    ),
    ("post", "/v1/admin/rails/{}/pause", "rail_id", {"confirm": True, **CONTEXT}),
    ("post", "/v1/admin/rails/{}/resume", "rail_id", {"confirm": True, **CONTEXT}),
    ("post", "/v1/admin/rails/{}/production/request", "rail_id", {"enable": True, **CONTEXT}),
    ("post", "/v1/admin/rails/{}/treasury/request", "rail_id", {"treasury": "fa1", **CONTEXT}),
    ("post", "/v1/admin/approvals/{}/approve", "approval_id", {"confirm": True, **CONTEXT}),
    ("post", "/v1/admin/entitlements/{}/revoke", "entitlement_id", {"confirm": True, **CONTEXT}),
    ("get", "/v1/admin/webhook-events/{}", "event_id", None),
    ("post", "/v1/admin/webhook-events/{}/replay", "event_id", {"confirm": True, **CONTEXT}),
    ("post", "/v1/webhook-endpoints/{}/rotate-secret", "endpoint_id", None),
    ("get", "/v1/admin/entitlements/{}", "entitlement_id", None),
    ("post", "/v1/admin/approvals/{}/reject", "approval_id", {"confirm": True, **CONTEXT}),
    ("get", "/v1/admin/reconciliation-runs/{}", "run_id", None),
    (
        "post",
        "/v1/admin/reconciliation-findings/{}/resolution",
        "finding_id",
        {"resolution": "accepted", **CONTEXT},
    ),
    ("get", "/v1/admin/rails/{}/release-gates", "rail_id", None),
    ("get", "/v1/admin/rails/{}/release-gates/evidence", "rail_id", None),
    (
        "post",
        "/v1/admin/rails/{}/release-gates/rate_limit_review/evidence",
        "rail_id",
        CONTEXT,
    ),
]


def test_control_characters_in_path_ids_name_the_param(client, engine):
    before = counts(engine)
    for bad in ("\x00", "ab\x00", "\x01", "\n", "\x7f"):
        for method, template, name, body in PATH_ROUTES:
            token = STAFF if "/admin/" in template else auth()
            url = template.format(quote("fake_live" + bad, safe=""))
            r = client.request(
                method.upper(), url, headers=token, **({"json": body} if body is not None else {})
            )
            refused(r, name)
    assert counts(engine) == before
    # The database connection survived: the same client still gets real answers.
    assert client.post("/v1/payment-sessions", headers=auth(), json=SESSION).status_code == 201


QUERY_ROUTES = [
    ("/v1/entitlements", "owner_id", auth()),
    ("/v1/admin/audit", "subject_id", STAFF),
    ("/v1/admin/audit", "limit", STAFF),
    ("/v1/admin/proofs", "rail_id", STAFF),
    ("/v1/admin/proofs", "status", STAFF),
    ("/v1/admin/proof-contracts", "rail_id", STAFF),
    ("/v1/admin/webhook-events", "status", STAFF),
    ("/v1/admin/idempotency-claims/stuck", "min_age_seconds", STAFF),
]


def test_control_characters_in_query_params_name_the_param(client, engine):
    before = counts(engine)
    for bad in ("%00", "al%00ice", "%1F", "%0A", "%7F"):
        for path, name, headers in QUERY_ROUTES:
            refused(client.get(f"{path}?{name}={bad}", headers=headers), name)
    assert counts(engine) == before


NUL_BODIES = [
    ("/v1/payment-sessions", {**SESSION, "memo": "pay\x00"}, "memo"),
    ("/v1/payment-sessions", {**SESSION, "owner_id": "alice\x00"}, "owner_id"),
    ("/v1/payment-sessions", {**SESSION, "reference": "\x00"}, "reference"),
    ("/v1/proofs", {"session_id": "s\x00", "proof": "fx0123abcd"}, "session_id"),
    ("/v1/proofs", {"session_id": "s", "proof": "fx01\x00"}, "proof"),
    (
        "/v1/proofs",
        {"session_id": "s", "proof": {"payload": {"authorization": {"nonce": "0x\x00"}}}},
        "proof.payload.authorization.nonce",
    ),
    ("/v1/proofs", {"session_id": "s", "proof": {"list": ["a", "b\x00"]}}, "proof.list.1"),
    ("/v1/proofs", {"session_id": "s", "proof": {"k\x00": "v"}}, "proof"),
    (
        "/v1/webhook-endpoints",
        {"url": "https://example.com/\x00", "event_types": ["proof.verified"]},
        "url",
    ),
    (
        "/v1/webhook-endpoints",
        {"url": "https://example.com/h", "event_types": ["proof.verified", "x\x00"]},
        "event_types.1",
    ),
    ("/v1/admin/proofs/pr_1/dry-run-apply", {"operator_reason": "why\x00"}, "operator_reason"),
    (
        "/v1/admin/rails/fake_live/pause",
        {"confirm": True, "incident_id": "INC\x00", "operator_reason": "r"},
        "incident_id",
    ),
    ("/v1/admin/rails/fake_gated/treasury/request", {"treasury": "fa\x00", **CONTEXT}, "treasury"),
]


def test_nul_in_a_json_body_names_the_dotted_field(client, engine):
    before = counts(engine)
    for path, body, field in NUL_BODIES:
        headers = STAFF if "/admin/" in path else auth()
        refused(client.post(path, headers=headers, json=body), field)
    assert counts(engine) == before
    assert client.post("/v1/payment-sessions", headers=auth(), json=SESSION).status_code == 201


def test_other_control_characters_in_free_text_are_stored(client):
    # Only NUL is refused in body text: PostgreSQL stores tabs and newlines fine.
    r = client.post(
        "/v1/admin/rails/fake_live/pause",
        headers=STAFF,
        json={"confirm": True, "incident_id": "INC-8", "operator_reason": "line 1\nline 2\tx\x1b"},
    )
    assert r.status_code == 200 and r.json()["paused"] is True, r.text
    audit = client.get("/v1/admin/audit?subject_id=fake_live", headers=STAFF).json()
    assert audit[0]["reason"] == "line 1\nline 2\tx\x1b"


@pytest.mark.parametrize(
    "path,raw,field",
    [
        ("/v1/proofs", b'{"session_id": "a\\u0001", "proof": "x"}', "session_id"),
        ("/v1/proofs", b'{"session_id": "a\\nb", "proof": "x"}', "session_id"),
        (
            "/v1/payment-sessions",
            b'{"owner_id": "alice", "rail_id": "fake_live\\u001b", "access_product_id": "p",'
            b' "amount": 1}',
            "rail_id",
        ),
        ("/v1/proofs", b'{"session_id": "\xff\xfe", "proof": "x"}', "body"),  # not UTF-8
        ("/v1/proofs", b'{"session_id": "a", "proof": ' + b"9" * 5000 + b"}", "body"),
    ],
    ids=[
        "control-in-session-id",
        "newline-in-session-id",
        "escape-in-rail-id",
        "not-utf8",
        "huge-int",
    ],
)
def test_body_ids_with_control_characters_and_unreadable_bodies_name_the_field(
    client, engine, path, raw, field
):
    """An id in a body is made of an id's characters: a control character is refused naming
    the field, never looked up (a 404 echoing it). A body the JSON parser cannot read (not
    UTF-8, an integer past its 4300 digits) is 422 naming `body`, as invalid JSON is."""
    before = counts(engine)
    r = client.post(path, headers={**auth(), "Content-Type": "application/json"}, content=raw)
    refused(r, field)
    assert counts(engine) == before


def test_escaped_backslash_u0000_is_text_not_nul(client):
    body = json.dumps({**SESSION, "memo": "\\u0000"}).encode()  # the six characters \u0000
    assert b"\\\\u0000" in body
    r = client.post(
        "/v1/payment-sessions", headers={**auth(), "Content-Type": "application/json"}, content=body
    )
    assert r.status_code == 201 and r.json()["memo"] == "\\u0000", r.text


# -- bodies in another encoding than UTF-8 --------------------------------------------------
# json.loads on bytes (FastAPI's parser) also reads UTF-16 and UTF-32: such a body is
# refused before anything reads it, as the guards read UTF-8 only.

JSON = {"Content-Type": "application/json"}


def test_a_utf16_or_utf32_body_is_refused_as_not_utf8_json(client, engine):
    text = json.dumps(SESSION)
    before = counts(engine)
    for encoding in ("utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le"):
        r = client.post(
            "/v1/payment-sessions", content=text.encode(encoding), headers={**auth(), **JSON}
        )
        refused(r, "body")
    assert counts(engine) == before


def test_a_utf8_body_with_a_bom_is_read_as_before(client):
    raw = b"\xef\xbb\xbf" + json.dumps(SESSION).encode()
    r = client.post("/v1/payment-sessions", content=raw, headers={**auth(), **JSON})
    assert r.status_code == 201, r.text


def test_nul_in_a_utf16_body_is_a_422_never_a_500(client, engine):
    before = counts(engine)
    for path, body, headers in (
        ("/v1/payment-sessions", {**SESSION, "memo": "a\x00b"}, auth()),
        (
            "/v1/admin/rails/fake_live/pause",
            {"confirm": True, "incident_id": "INC-1", "operator_reason": "a\x00b"},
            STAFF,
        ),
    ):
        r = client.post(
            path, content=json.dumps(body).encode("utf-16"), headers={**headers, **JSON}
        )
        refused(r, "body")
    assert counts(engine) == before
    assert client.get("/v1/admin/rails", headers=STAFF).status_code == 200


def test_deep_nesting_in_a_utf16_body_is_refused_as_too_deep(client):
    # U+2200 is the bytes 00 22 in UTF-16-LE: read as bytes, 0x22 is a quote, and none of
    # the brackets after it would be counted.
    n = 5000
    text = '{"session_id":"\u2200","proof":' + "[" * n + "]" * n + "}"
    r = client.post("/v1/proofs", content=text.encode("utf-16-le"), headers={**auth(), **JSON})
    declared = client.get("/openapi.json").json()["paths"]["/v1/proofs"]["post"]["responses"]
    assert str(r.status_code) in declared, (r.status_code, r.text, sorted(declared))
    refused(r, "body")


def test_nesting_the_parser_gives_up_on_is_body_too_deep_not_a_400(client, monkeypatch):
    # Should nesting ever pass the depth count, the parser's RecursionError is the same
    # refusal, never FastAPI's undeclared 400.
    monkeypatch.setattr(guards, "json_depth_exceeds", lambda body, limit=0: False)
    n = 10_000
    raw = b'{"session_id": "s", "proof": ' + b"[" * n + b"]" * n + b"}"
    # Python's default limit: some libraries the suite imports (py_ecc, py-evm) raise it
    # for the whole process, and 10,000 levels then parse.
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    try:
        r = client.post("/v1/proofs", content=raw, headers={**auth(), **JSON})
    finally:
        sys.setrecursionlimit(limit)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert (err["code"], err["field"]) == ("body_too_deep", "body"), err


def test_control_characters_in_headers_name_the_header(client, engine):
    before = counts(engine)
    for name, value in (
        ("Idempotency-Key", "k\x00"),
        ("Idempotency-Key", "k\x01"),
        ("X-Operator-Reason", "why\x00"),
        ("X-Incident-Id", "INC\x7f"),
    ):
        if name.startswith("X-"):
            r = client.get("/v1/admin/rails", headers={**STAFF, name: value})
        else:
            r = client.post("/v1/payment-sessions", headers={**auth(), name: value}, json=SESSION)
        refused(r, name)
    assert counts(engine) == before


def test_idempotency_key_is_printable(client, engine):
    # HTTP allows a tab inside a header value; a key is an id and refuses it all the same.
    r = client.post(
        "/v1/payment-sessions", headers={**auth(), "Idempotency-Key": "k\tk"}, json=SESSION
    )
    assert r.status_code == 422 and r.json()["error"]["field"] == "Idempotency-Key", r.text
    with pytest.raises(BadInput):
        idempotency.run_idempotent(engine, "svc:x", "POST /x", "k\x00", {}, lambda: (201, {}))


def _raw_post(url: str, path: str, body: dict, headers: list[tuple[bytes, bytes]]) -> dict:
    """A request written byte for byte (a client library would trim the header itself)."""
    host, port = url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    head = [b"POST " + path.encode() + b" HTTP/1.1", b"Host: " + host.encode()]
    head += [k + b": " + v for k, v in headers]
    head += [b"Content-Type: application/json", b"Content-Length: %d" % len(data)]
    head += [b"Connection: close"]
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(b"\r\n".join(head) + b"\r\n\r\n" + data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    status_line, _, rest = out.partition(b"\r\n")
    assert status_line.split()[1] in (b"200", b"201"), out
    return json.loads(rest.partition(b"\r\n\r\n")[2])


def test_a_key_padded_with_whitespace_is_the_same_key(client, engine):
    # RFC 9110 5.5: a field value has no surrounding whitespace. The server drops the leading
    # kind; a trailing space (a proxy, a client building the header another way) used to make
    # another key, and a retry opened a second payment session.
    before = counts(engine)
    authz = (b"Authorization", b"Bearer " + auth()["Authorization"].split()[1].encode())
    with LiveServer(client.app) as srv:
        ids = {
            _raw_post(srv.url, "/v1/payment-sessions", SESSION, [authz, (b"Idempotency-Key", k)])[
                "id"
            ]
            for k in (b"order-77", b" order-77", b"order-77 ", b"order-77 \t ")
        }
    assert len(ids) == 1, ids
    assert counts(engine)["payment_sessions"] == before["payment_sessions"] + 1


# -- strict confirmation ------------------------------------------------------------------


def paused(client, rail_id: str = "fake_live") -> bool:
    return next(
        r["paused"]
        for r in client.get("/v1/admin/rails", headers=STAFF).json()
        if r["rail_id"] == rail_id
    )


def test_only_json_true_confirms(client, engine):
    before = counts(engine)
    for value in ("yes", 1, "on", "true", "1", 1.0):
        for path in (
            "/v1/admin/rails/fake_live/pause",
            "/v1/admin/proofs/pr_1/apply",
            "/v1/admin/approvals/ap_1/approve",
            "/v1/admin/webhook-events/we_1/replay",
        ):
            refused(client.post(path, headers=STAFF, json={"confirm": value, **CONTEXT}), "confirm")
        refused(
            client.post(
                "/v1/admin/rails/fake_gated/production/request",
                headers=STAFF,
                json={"enable": value, **CONTEXT},
            ),
            "enable",
        )
    assert not paused(client)
    assert counts(engine) == before
    r = client.post(
        "/v1/admin/rails/fake_live/pause", headers=STAFF, json={"confirm": True, **CONTEXT}
    )
    assert r.status_code == 200 and paused(client)


# -- idempotency: only executed requests are stored ----------------------------------------


def claims(engine) -> int:
    with engine.db.tx() as s:
        return s.scalar(select(func.count()).select_from(IdempotencyClaim))


def test_refusal_under_a_key_is_not_replayed_after_resume(client, engine):
    def switch(action: str) -> None:
        r = client.post(
            f"/v1/admin/rails/fake_live/{action}", headers=STAFF, json={"confirm": True, **CONTEXT}
        )
        assert r.status_code == 200, r.text

    h = {**auth(), "Idempotency-Key": "K-paused"}
    switch("pause")
    r = client.post("/v1/payment-sessions", headers=h, json=SESSION)
    assert r.status_code == 409 and r.json()["error"]["code"] == "rail_paused", r.text
    assert claims(engine) == 0  # the refusal released its key
    switch("resume")
    r1 = client.post("/v1/payment-sessions", headers=h, json=SESSION)
    assert r1.status_code == 201, r1.text
    r2 = client.post("/v1/payment-sessions", headers=h, json=SESSION)  # now stored: replayed
    assert r2.status_code == 201 and r2.json() == r1.json()
    assert claims(engine) == 1 and counts(engine)["payment_sessions"] == 1


# -- verify-offline --proof ---------------------------------------------------------------

X402_ARGS = [
    "--rail",
    "x402",
    "--network",
    "base-sepolia",
    "--recipient",
    "0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
    "--amount",
    "10000",
    "--now",
    "2025-02-27T16:02:00Z",
    "--json",
]


def verify_offline(proof: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [RAILPROOF, "verify-offline", "--proof", proof, *X402_ARGS],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def test_real_x402_proofs_inline_verify_offline():
    # Each is longer than a file name may be: deciding "is it a file?" used to raise.
    v2 = json.loads((X402 / "x402_base_sepolia_payload_v2.json").read_text())
    proofs = [
        (X402 / f"x402_base_sepolia_payload_{v}.b64").read_text().strip() for v in ("v1", "v2")
    ]  # X-PAYMENT headers (base64 of ASCII JSON has no `/`)
    proofs.append(json.dumps(v2))  # the payload itself, with `/` in its resource URL
    assert all(len(p) >= 600 for p in proofs)
    assert ["/" in p for p in proofs] == [False, False, True]
    for proof in proofs:
        r = verify_offline(proof)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-500:]
        out = json.loads(r.stdout)
        assert (out["status"], out["failure_code"]) == ("verified", None), out


def test_proof_that_is_neither_a_file_nor_a_payload_exits_2(tmp_path):
    not_utf8 = tmp_path / "payload.bin"
    not_utf8.write_bytes(b"\xff\xfe\x00garbage")
    for proof in (
        "A" * 700,
        "eyJ4/" * 150,
        "a/" * 2100,
        str(tmp_path),
        str(not_utf8),
        str(tmp_path / "missing.json"),
    ):
        r = verify_offline(proof)
        assert r.returncode == 2, (proof[:40], r.returncode, r.stderr[-300:])
        assert "--proof" in r.stderr and "Traceback" not in r.stderr, r.stderr[-300:]
        assert r.stdout == ""


def test_non_ascii_digit_amount_exits_2():
    r = subprocess.run(
        [
            RAILPROOF,
            "verify-offline",
            "--rail",
            "x402",
            "--proof",
            "x",
            "--recipient",
            "0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
            "--amount",
            "²",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert r.returncode == 2 and "--amount" in r.stderr and "Traceback" not in r.stderr


def test_path_routes_lists_every_route_with_a_path_parameter(engine):
    # A route added later is tried with control characters too, or this fails.
    from fastapi.routing import APIRoute

    from verifier.http.api import create_app

    listed = {(m, re.sub(r"\{[a-z_]+\}", "{}", t)) for m, t, _, _ in PATH_ROUTES}
    listed |= {(m, t.replace("rate_limit_review", "{}")) for m, t in listed}
    missing = []
    for route in create_app(engine).routes:
        if not isinstance(route, APIRoute) or "{" not in route.path:
            continue
        for method in route.methods:
            key = (method.lower(), re.sub(r"\{[a-z_]+\}", "{}", route.path))
            if key not in listed:
                missing.append(key)
    assert missing == [], missing
