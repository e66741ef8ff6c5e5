"""The API answers what README's error tables and the OpenAPI document say: a refusal the
request's model makes carries the field's documented code (not the generic invalid_request),
names the field even when it is called `path`, a staff action's incident may come in the
headers every staff operation declares, and a path with a trailing slash is not found rather
than redirected. On both stores (the `client` fixture)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import STAFF_TOKEN, auth
from tests.helpers import FAKE_SESSION

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
STAFF = auth(STAFF_TOKEN)
CONTEXT = {"incident_id": "INC-9", "operator_reason": "contract check"}


def readme_status(code: str) -> str:
    m = re.search(rf"^\| `{re.escape(code)}` \| ([^|]+) \|", README, re.M)
    assert m, f"README documents no `{code}`"
    return m.group(1).strip()


def verified_proof(client, chain, tx: str = "fx0a0b0c0d") -> dict[str, Any]:
    r = client.post("/v1/payment-sessions", headers=auth(), json=FAKE_SESSION)
    sess = r.json()
    chain.txs[tx] = {
        "status": "ok",
        "to": sess["recipient"],
        "amount": int(sess["amount"]),
        "asset": "fusd",
        "refs": [sess["reference"]],
    }
    r = client.post("/v1/proofs", headers=auth(), json={"session_id": sess["id"], "proof": tx})
    assert r.status_code == 201 and r.json()["status"] == "verified", r.text
    return r.json()


RUN = {"scope": "rail_proofs", **CONTEXT}
SESSIONS = "/v1/payment-sessions"


@pytest.mark.parametrize(
    ("method", "path", "body", "code", "field"),
    [
        ("POST", SESSIONS, {**FAKE_SESSION, "amount": 0}, "invalid_amount", "amount"),
        ("POST", SESSIONS, {**FAKE_SESSION, "amount": "-5"}, "invalid_amount", "amount"),
        ("POST", SESSIONS, {**FAKE_SESSION, "expires_in_seconds": 0}, "invalid_expiry", None),
        ("POST", SESSIONS, {**FAKE_SESSION, "memo": "m" * 201}, "invalid_memo", "memo"),
        ("GET", "/v1/admin/webhook-events?status=bogus", None, "invalid_status", "status"),
        ("GET", "/v1/admin/reconciliation-runs?scope=bogus", None, "invalid_scope", "scope"),
        ("POST", "/v1/admin/reconciliation-runs", {**RUN, "scope": "x"}, "invalid_scope", None),
        ("GET", "/v1/admin/proofs?limit=0", None, "invalid_limit", "limit"),
        ("POST", "/v1/admin/reconciliation-runs", {**RUN, "limit": 0}, "invalid_limit", None),
        ("POST", "/v1/admin/reconciliation-runs", {**RUN, "since": "1 Jan"}, "invalid_time", None),
    ],
)
def test_a_field_the_model_refuses_carries_its_documented_code(
    client, method, path, body, code, field
):
    # These answered invalid_request: the request's model refused the value before the
    # service that raises the documented code could.
    assert readme_status(code) == "422"
    headers = auth() if path == SESSIONS else STAFF
    r = client.request(method, path, headers=headers, json=body)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == code, r.text
    assert err["field"] == (field or err["field"]) and err["field"] != "body", r.text


def test_a_body_field_named_path_is_named(client, chain):
    # The dry run's `path` was reported as `body`: "path" was dropped from the error's
    # location as if it were where the value came from.
    proof = verified_proof(client, chain)
    r = client.post(
        f"/v1/admin/proofs/{proof['id']}/dry-run-apply", headers=STAFF, json={"path": "bogus"}
    )
    assert r.status_code == 422 and r.json()["error"]["field"] == "path", r.text


def test_a_staff_action_records_the_incident_its_headers_carry(client, chain):
    # Every staff operation declares X-Incident-Id and X-Operator-Reason; a dry run sent with
    # them was audited without the incident, so the incident's trail left it out.
    proof = verified_proof(client, chain)
    r = client.post(
        f"/v1/admin/proofs/{proof['id']}/dry-run-apply",
        headers={**STAFF, "X-Incident-Id": "INC-HDR", "X-Operator-Reason": "checking"},
        json={},
    )
    assert r.status_code == 200, r.text
    trail = client.get("/v1/admin/audit?incident_id=INC-HDR", headers=STAFF).json()
    assert [e["subject_id"] for e in trail] == [proof["id"]], trail
    # The body's, when given, is the one recorded.
    client.post(
        f"/v1/admin/proofs/{proof['id']}/dry-run-apply",
        headers={**STAFF, "X-Incident-Id": "INC-HDR"},
        json={"incident_id": "INC-BODY", "operator_reason": "from the body"},
    )
    body = client.get("/v1/admin/audit?incident_id=INC-BODY", headers=STAFF).json()
    assert [e["subject_id"] for e in body] == [proof["id"]], body


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/proofs/"), ("POST", "/v1/payment-sessions/"), ("GET", "/v1/entitlements/")],
)
def test_a_trailing_slash_is_not_found_never_a_redirect(client, method, path):
    # It was a 307 to a URL built from the request's Host and scheme (behind a TLS proxy,
    # http://), which a client following it re-sent its body and bearer token to.
    r = client.request(
        method,
        path,
        headers=auth(),
        json={"session_id": "x", "proof": "fx0a0b0c0d"} if method == "POST" else None,
        follow_redirects=False,
    )
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", r.text


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [("PUT", "/v1/proofs", {"POST"}), ("DELETE", "/v1/payment-sessions/x", {"GET"})],
)
def test_method_not_allowed_names_the_allowed_methods(client, method, path, allowed):
    # RFC 9110: a 405 carries Allow. The error body is the shared error model as for any
    # other refusal.
    r = client.request(method, path, headers=auth(), json={})
    assert r.status_code == 405, r.text
    err = r.json()["error"]
    assert err == {"code": "method_not_allowed", "message": "Method Not Allowed"}, r.text
    assert {m.strip() for m in r.headers.get("allow", "").split(",")} == allowed, r.headers


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v1/admin/proof-contracts?rail_id=nope", None),
        ("GET", "/v1/admin/rails/nope/release-gates", None),
        ("POST", "/v1/admin/rails/nope/pause", {"confirm": True, **CONTEXT}),
    ],
)
def test_rail_not_registered_comes_with_a_documented_status(client, method, path, body):
    documented = readme_status("rail_not_registered")
    r = client.post(SESSIONS, headers=auth(), json={**FAKE_SESSION, "rail_id": "nope"})
    assert r.json()["error"]["code"] == "rail_not_registered"
    assert str(r.status_code) in documented
    r = client.request(method, path, headers=STAFF, json=body)
    assert r.json()["error"]["code"] == "rail_not_registered", r.text
    assert str(r.status_code) in documented, (documented, r.text)


def test_a_reconciliation_run_takes_the_incident_its_headers_carry(client):
    # The one staff action that read only its body: header-only context was refused (422).
    r = client.post(
        "/v1/admin/reconciliation-runs",
        headers={**STAFF, "X-Incident-Id": "INC-HDR", "X-Operator-Reason": "drift"},
        json={"scope": "rail_proofs"},
    )
    assert r.status_code == 201, r.text
    assert (r.json()["incident_id"], r.json()["operator_reason"]) == ("INC-HDR", "drift")


@pytest.mark.parametrize("path", ["/v1/admin/proofs", "/v1/admin/receipts"])
def test_a_staff_filter_on_an_unknown_rail_is_rail_not_registered(client, path):
    # README: rail_not_registered is 404 where a staff path or filter addresses it. A list
    # filtered on a mistyped rail answered 200 [], which `list-rail-proofs --rail-id RAIL
    # --status failed` showed as "(none)": a clean bill for a rail that does not exist.
    r = client.get(path, params={"rail_id": "solana_usdcc"}, headers=auth(STAFF_TOKEN))
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == "rail_not_registered"
    assert r.json()["error"]["field"] == "rail_id"
    ok = client.get(path, params={"rail_id": "solana_usdc"}, headers=auth(STAFF_TOKEN))
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize(
    ("amount", "said"),
    [
        ("1" + "0" * 5000, "must be at most"),  # thousands of digits: refused unread
        ("1" + "0" * 19, "must be at most"),
        (2**64, "must be at most"),
        ("0" * 30, "positive"),
    ],
)
def test_an_amount_out_of_range_is_refused_in_the_services_words(client, amount, said):
    r = client.post(SESSIONS, headers=auth(), json={**FAKE_SESSION, "amount": amount})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert (err["code"], err["field"]) == ("invalid_amount", "amount")
    assert said in err["message"] and "sys." not in err["message"], err["message"]


def test_an_amount_with_leading_zeros_is_its_digits(client):
    r = client.post(SESSIONS, headers=auth(), json={**FAKE_SESSION, "amount": "0" * 25 + "1500000"})
    assert r.status_code == 201 and r.json()["amount"] == "1500000", r.text
