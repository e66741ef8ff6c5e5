"""The operator console without a browser: staff authentication (cookie flags, expiry, logout,
token rotation), CSRF on every POST, operator context on every action, the audit rows the
actions leave (the same as the staff API's), and what pages never show.

The console's router is included in the app here, as the app factory will do."""

from __future__ import annotations

import re
import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.conftest import OTHER_SERVICE_TOKEN, SERVICE_TOKEN, STAFF_TOKEN, STAFF_TOKEN_2, auth
from tests.helpers import FAKE_SESSION
from verifier.http.api import create_app
from verifier.http.console import console_router, routes
from verifier.http.console.auth import SESSION_COOKIE
from verifier.services import console_reads as queries
from verifier.storage.models import Approval, AuditEvent, Entitlement, RailState, Receipt

SESSION = dict(FAKE_SESSION)
PAGES = [
    "/console",
    "/console/health",
    "/console/rails",
    "/console/proofs",
    "/console/approvals",
    "/console/reconciliation",
    "/console/assurance",
]
OPS = {"incident_id": "INC-9", "operator_reason": "console test", "confirm": "yes"}
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


class Clock:
    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def app(engine, clock):
    return create_app(engine, console=console_router(engine, clock=clock))


@pytest.fixture
def c(app):
    with TestClient(app, raise_server_exceptions=False, follow_redirects=False) as client:
        yield client


def login(c: TestClient, token: str = STAFF_TOKEN):
    form = c.get("/console/login")
    assert form.status_code == 200
    r = c.post("/console/login", data={"token": token, "csrf_token": _CSRF.search(form.text)[1]})
    return r


def csrf(c: TestClient, page: str = "/console/rails") -> str:
    r = c.get(page)
    assert r.status_code == 200, r.text
    return _CSRF.search(r.text)[1]


def paid_proof(c: TestClient, chain, tx: str = "fx0123abcd", **session) -> dict:
    r = c.post("/v1/payment-sessions", headers=auth(), json={**SESSION, **session})
    assert r.status_code == 201, r.text
    sess = r.json()
    chain.txs[tx] = {
        "status": "ok",
        "to": "fatreasury",
        "amount": sess_amount(sess),
        "asset": "fusd",
        "refs": [sess["reference"]],
    }
    r = c.post("/v1/proofs", headers=auth(), json={"session_id": sess["id"], "proof": tx})
    assert r.status_code == 201, r.text
    return r.json()


def sess_amount(sess: dict) -> int:
    return int(sess["amount"])


def audit_rows(engine, action: str) -> list[AuditEvent]:
    with engine.db.tx() as s:
        rows = s.scalars(
            select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)
        ).all()
        s.expunge_all()
        return rows


def receipts(engine) -> int:
    with engine.db.tx() as s:
        return len(s.scalars(select(Receipt)).all())


# -- authentication ---------------------------------------------------------------------------
@pytest.mark.parametrize("page", PAGES + ["/console/proofs/nope"])
def test_every_page_without_a_cookie_redirects_to_login(c, page):
    r = c.get(page)
    assert r.status_code == 303
    assert r.headers["location"].startswith("/console/login")


@pytest.mark.parametrize("token", [SERVICE_TOKEN, OTHER_SERVICE_TOKEN, "nope", ""])
def test_service_or_unknown_token_gets_the_form_again_with_401(c, engine, token):
    r = login(c, token)
    assert r.status_code == 401
    assert "Not a staff token" in r.text and 'name="token"' in r.text
    assert SESSION_COOKIE not in r.cookies
    assert c.get("/console/proofs").status_code == 303
    assert audit_rows(engine, "console.login") == []


def test_a_service_bearer_token_never_reaches_owner_data(c, chain):
    proof = paid_proof(c, chain)
    for headers in (auth(SERVICE_TOKEN), auth(STAFF_TOKEN)):  # bearer tokens are not sessions
        r = c.get(f"/console/proofs/{proof['id']}", headers=headers)
        assert r.status_code == 303 and "alice" not in r.text


def test_login_sets_an_httponly_samesite_strict_expiring_cookie(c, engine):
    r = login(c)
    assert r.status_code == 303 and r.headers["location"] == "/console"
    cookie = next(h for h in r.headers.get_list("set-cookie") if h.startswith(SESSION_COOKIE + "="))
    flags = {p.strip().split("=")[0].lower(): p.strip() for p in cookie.split(";")[1:]}
    assert "httponly" in flags and flags["samesite"].lower() == "samesite=strict"
    assert flags["path"] == "Path=/console"
    assert 0 < int(flags["max-age"].split("=")[1]) <= 3600
    assert STAFF_TOKEN not in cookie  # the token itself never travels in the cookie
    for page in PAGES:
        assert c.get(page).status_code == 200, page
    (row,) = audit_rows(engine, "console.login")
    assert row.actor == "ops1" and row.subject_type == "console_session"


def test_login_needs_its_csrf_token(c):
    c.get("/console/login")
    r = c.post("/console/login", data={"token": STAFF_TOKEN})
    assert r.status_code == 403 and SESSION_COOKIE not in r.cookies
    r = c.post("/console/login", data={"token": STAFF_TOKEN, "csrf_token": "0" * 64})
    assert r.status_code == 403


def test_login_redirects_only_inside_the_console(c):
    form = c.get("/console/login")
    r = c.post(
        "/console/login",
        data={
            "token": STAFF_TOKEN,
            "next": "https://evil.example/",
            "csrf_token": _CSRF.search(form.text)[1],
        },
    )
    assert r.headers["location"] == "/console"


def test_expired_cookie_redirects_to_login(c, clock):
    login(c)
    assert c.get("/console/rails").status_code == 200
    clock.t += 3601
    r = c.get("/console/rails")
    assert r.status_code == 303 and r.headers["location"].startswith("/console/login")


def test_a_visit_renews_the_cookie_up_to_the_absolute_limit(c, clock):
    login(c)
    for _ in range(30):  # 30 × 40 min: kept alive by use, but not past 12 h after login
        clock.t += 40 * 60
        if c.get("/console/rails").status_code != 200:
            break
    else:
        pytest.fail("the session outlived its absolute lifetime")
    assert clock.t - time.time() <= 12 * 3600 + 40 * 60


def test_forged_or_tampered_cookie_is_refused(c):
    login(c)
    value = c.cookies.get(SESSION_COOKIE)
    body, mac = value.split(".")
    c.cookies.clear()
    c.cookies.set(
        SESSION_COOKIE, body + "." + ("0" if mac[0] != "0" else "1") + mac[1:], path="/console"
    )
    assert c.get("/console/rails").status_code == 303


def test_logout_ends_the_session_on_the_server_too(c, engine):
    login(c)
    stolen = c.cookies.get(SESSION_COOKIE)
    r = c.post("/console/logout", data={"csrf_token": csrf(c)})
    assert r.status_code == 303 and r.headers["location"] == "/console/login"
    assert c.get("/console/rails").status_code == 303
    c.cookies.clear()
    c.cookies.set(SESSION_COOKIE, stolen, path="/console")  # a copy kept from before
    assert c.get("/console/rails").status_code == 303
    assert len(audit_rows(engine, "console.logout")) == 1


def test_removing_a_staff_token_ends_its_sessions(c, engine):
    login(c)
    assert c.get("/console/rails").status_code == 200
    engine.settings.staff_tokens.pop(STAFF_TOKEN)
    assert c.get("/console/rails").status_code == 303


def test_sessions_verify_in_another_process_of_the_deployment(engine, app, clock):
    # Another API process: its own router built from the same settings, no shared memory.
    other = create_app(engine, console=console_router(engine, clock=clock))
    with (
        TestClient(app, follow_redirects=False) as a,
        TestClient(other, follow_redirects=False) as b,
    ):
        login(a)
        b.cookies.set(SESSION_COOKIE, a.cookies.get(SESSION_COOKIE), path="/console")
        assert b.get("/console/rails").status_code == 200


# -- CSRF and operator context ----------------------------------------------------------------
def _actions(proof_id: str) -> list[str]:
    return [
        f"/console/proofs/{proof_id}/apply",
        f"/console/proofs/{proof_id}/receipt",
        f"/console/proofs/{proof_id}/dry-run",
        f"/console/proofs/{proof_id}/review",
        "/console/rails/fake_live/pause",
        "/console/rails/fake_live/resume",
        "/console/rails/fake_gated/production/request",
        "/console/rails/fake_live/treasury/request",
        "/console/logout",
    ]


def test_every_post_without_the_csrf_token_is_403_and_changes_nothing(c, engine, chain):
    proof = paid_proof(c, chain)
    login(c)
    before = len(audit_rows(engine, "proof.dry_run_apply"))
    for url in _actions(proof["id"]):
        for token in (None, "0" * 64, _other_session_csrf(engine)):
            data = {**OPS, **({"csrf_token": token} if token else {})}
            r = c.post(url, data=data)
            assert r.status_code == 403, (url, r.status_code)
    assert receipts(engine) == 0
    assert len(audit_rows(engine, "proof.dry_run_apply")) == before
    assert audit_rows(engine, "rail.paused") == []
    assert c.get("/console/rails").status_code == 200  # logout was refused too


def _other_session_csrf(engine) -> str:
    # A CSRF token of another staff member's session is not this session's.
    a = create_app(engine)
    with TestClient(a, follow_redirects=False) as other:
        login(other, STAFF_TOKEN_2)
        return csrf(other)


def test_cross_site_posts_are_refused_even_with_the_token(c, engine, chain):
    proof = paid_proof(c, chain)
    login(c)
    token = csrf(c)
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        r = c.post(
            f"/console/proofs/{proof['id']}/apply",
            data={**OPS, "csrf_token": token},
            headers=headers,
        )
        assert r.status_code == 403
    assert receipts(engine) == 0


PUBLIC = "https://ops.example.com"  # the name operators open, in front of a proxy


def _behind_proxy(engine, clock, origins: list[str]) -> TestClient:
    # The proxy sends its upstream's address as Host (nginx's default) and speaks http to us.
    if origins:
        engine.settings.console_origin = origins
    app = create_app(engine, console=console_router(engine, clock=clock))
    return TestClient(
        app, base_url="http://10.0.0.5:8000", raise_server_exceptions=False, follow_redirects=False
    )


def _login_from(c: TestClient, origin: str, token: str = STAFF_TOKEN):
    form = c.get("/console/login")
    # The login cookie is Secure when the console's origin is https: the browser sends it
    # back over https, which the proxy turns into this http request.
    nonce = form.cookies.get("railproof_console_login")
    return c.post(
        "/console/login",
        data={"token": token, "csrf_token": _CSRF.search(form.text)[1]},
        headers={"Origin": origin, "Cookie": f"railproof_console_login={nonce}"},
    )


def test_behind_a_proxy_the_configured_public_origin_is_the_consoles(engine, clock, chain):
    """Behind a proxy that sends its upstream's address as Host, the browser's Origin (the
    public name) never equals the request's scheme and Host: every form was refused, the login
    included. RAILPROOF_CONSOLE_ORIGIN names the public origin; cookies are Secure when it is
    https, whatever scheme the proxy speaks to us."""
    with _behind_proxy(engine, clock, [PUBLIC]) as c:
        form = c.get("/console/login")
        assert "secure" in form.headers["set-cookie"].lower()
        r = _login_from(c, PUBLIC)
        assert r.status_code == 303, r.text
        assert "secure" in r.headers["set-cookie"].lower()
        session = r.cookies.get(SESSION_COOKIE)
        page = c.get("/console/rails", headers={"Cookie": f"{SESSION_COOKIE}={session}"})
        token = _CSRF.search(page.text)[1]
        r = c.post(
            "/console/rails/fake_live/pause",
            data={**OPS, "csrf_token": token},
            headers={"Origin": PUBLIC, "Cookie": f"{SESSION_COOKIE}={session}"},
        )
        assert r.status_code == 303 and "done=" in r.headers["location"], r.text
    assert len(audit_rows(engine, "rail.paused")) == 1


def test_the_configured_origin_replaces_the_host_never_adds_to_it(engine, clock):
    """With RAILPROOF_CONSOLE_ORIGIN set, a form whose Origin is the request's own scheme and
    Host (what a proxy sends, spoofable by whoever reaches the upstream) is refused too: the
    setting never loosens the check."""
    with _behind_proxy(engine, clock, [PUBLIC]) as c:
        r = _login_from(c, "http://10.0.0.5:8000")
        assert r.status_code == 403, r.text
        assert SESSION_COOKIE not in r.cookies
        r = _login_from(c, "https://evil.example")
        assert r.status_code == 403, r.text


def test_an_origin_mismatch_says_so_and_names_the_setting(engine, clock):
    """Unset, a proxy's Host makes every login fail: the refusal says the Origin did not
    match and names RAILPROOF_CONSOLE_ORIGIN, not "expired" (misleading during an incident)."""
    with _behind_proxy(engine, clock, []) as c:
        r = _login_from(c, PUBLIC)
        assert r.status_code == 403
        assert SESSION_COOKIE not in r.cookies
        assert "Origin" in r.text and "RAILPROOF_CONSOLE_ORIGIN" in r.text, r.text
        assert "secure" not in c.get("/console/login").headers["set-cookie"].lower()


@pytest.mark.parametrize("missing", ["confirm", "incident_id", "operator_reason"])
def test_every_action_needs_confirm_incident_and_reason(c, engine, chain, missing):
    proof = paid_proof(c, chain)
    login(c)
    token = csrf(c)
    with engine.db.tx() as s:
        s.add(
            Approval(
                rail_id="fake_live",
                kind="treasury",
                value="fanew",
                requested_by="ops2",
                created_at=engine.now(),
                incident_id="INC-1",
                reason="r",
            )
        )
    with engine.db.tx() as s:
        approval_id = s.scalars(select(Approval.id)).one()
    data = {k: v for k, v in OPS.items() if k != missing}
    if missing != "confirm":
        data[missing] = "   "  # blank is missing
    for url in (
        f"/console/proofs/{proof['id']}/apply",
        f"/console/proofs/{proof['id']}/receipt",
        f"/console/proofs/{proof['id']}/review",
        "/console/rails/fake_live/pause",
        "/console/rails/fake_live/resume",
        f"/console/approvals/{approval_id}/approve",
        "/console/rails/fake_gated/production/request",
        "/console/rails/fake_live/treasury/request",
    ):
        body = {
            **data,
            "production": "enable",
            "treasury": "fanewer",
            "decision": "release",
            "csrf_token": token,
        }
        r = c.post(url, data=body)
        assert r.status_code == 422, (url, r.status_code)
        assert "Nothing was done" in r.text
    assert receipts(engine) == 0
    with engine.db.tx() as s:
        assert s.scalars(select(Approval.status)).one() == "pending"  # and no new request
        assert not s.get(RailState, "fake_live").paused
    assert audit_rows(engine, "rail.paused") == audit_rows(engine, "rail.resumed") == []


# -- actions: the same services, the same audit path ------------------------------------------
def test_dry_run_then_apply_leave_the_apis_audit_rows(c, engine, chain):
    proof = paid_proof(c, chain)
    login(c)
    page = c.get(f"/console/proofs/{proof['id']}")
    assert page.status_code == 200 and proof["id"] in page.text
    token = _CSRF.search(page.text)[1]
    r = c.post(
        f"/console/proofs/{proof['id']}/dry-run",
        data={"csrf_token": token, "incident_id": "INC-9", "operator_reason": "look"},
    )
    assert r.status_code == 200
    checks = re.findall(r'<tr class="(pass|fail)"><th scope="row">(\w+)</th>', r.text)
    assert [n for _, n in checks] == [
        "proof_verified",
        "settlement_final",
        "rail_registered",
        "rail_network_current",
        "rail_not_paused",
        "rail_production_enabled",
        "rail_allowlisted",
        "live_apply_enabled",
        "receipt_creation_allowed",
        "tuple_bound",
        "transfer_not_sent_back",
        "settlement_not_another_proof",
    ]
    assert all(p == "pass" for p, _ in checks)
    (dry,) = audit_rows(engine, "proof.dry_run_apply")
    assert (dry.actor, dry.incident_id, dry.reason) == ("ops1", "INC-9", "look")
    assert receipts(engine) == 0

    r = c.post(f"/console/proofs/{proof['id']}/apply", data={**OPS, "csrf_token": token})
    assert r.status_code == 303 and "done=applied." in r.headers["location"]
    for action in ("receipt.created", "entitlement.activated", "proof.applied"):
        (row,) = audit_rows(engine, action)
        assert (row.actor, row.incident_id, row.reason) == ("ops1", "INC-9", "console test")
    assert audit_rows(engine, "proof.applied")[0].data["via"] == "staff"
    with engine.db.tx() as s:
        assert s.scalars(select(Entitlement.status)).one() == "active"
    page = c.get(r.headers["location"])
    assert "Applied" in page.text and 'ent-active">active' in page.text
    assert "receipt.created" in page.text and "INC-9" in page.text
    # Idempotent, as the API: a second apply changes nothing.
    r = c.post(f"/console/proofs/{proof['id']}/apply", data={**OPS, "csrf_token": token})
    assert r.status_code == 303 and "done=already_applied." in r.headers["location"]
    assert receipts(engine) == 1


def test_pause_from_the_console_blocks_apply_with_the_gates_report(c, engine, chain):
    proof = paid_proof(c, chain)
    login(c)
    token = csrf(c)
    r = c.post("/console/rails/fake_live/pause", data={**OPS, "csrf_token": token})
    assert r.status_code == 303
    (row,) = audit_rows(engine, "rail.paused")
    assert (row.actor, row.subject_id, row.incident_id) == ("ops1", "fake_live", "INC-9")
    rails = c.get("/console/rails").text
    assert re.search(
        r'id="rail-fake_live">.*?class="rail-state"><span class="badge failed">paused', rails, re.S
    )
    r = c.post(f"/console/proofs/{proof['id']}/apply", data={**OPS, "csrf_token": token})
    assert r.status_code == 409 and "apply_blocked" not in r.text  # the message, not the code
    assert '<tr class="fail"><th scope="row">rail_not_paused</th>' in r.text
    assert receipts(engine) == 0
    r = c.post("/console/rails/fake_live/resume", data={**OPS, "csrf_token": token})
    assert r.status_code == 303 and len(audit_rows(engine, "rail.resumed")) == 1


def test_unknown_rail_or_proof_answers_404_page(c):
    login(c)
    token = csrf(c)
    assert c.post("/console/rails/nope/pause", data={**OPS, "csrf_token": token}).status_code == 404
    assert c.get("/console/proofs/nope").status_code == 404
    r = c.post("/console/proofs/nope/apply", data={**OPS, "csrf_token": token})
    assert r.status_code == 404


def pending_treasury_change(engine) -> str:
    """A treasury change ops1 asked for, waiting for a second staff member."""
    with engine.db.tx() as s:
        s.add(
            Approval(
                rail_id="fake_live",
                kind="treasury",
                value="fanew",
                requested_by="ops1",
                created_at=engine.now(),
                incident_id="INC-1",
                reason="r",
            )
        )
    with engine.db.tx() as s:
        return s.scalars(select(Approval.id)).one()


def test_the_requester_cannot_approve_another_staff_member_can(c, engine, app):
    approval_id = pending_treasury_change(engine)
    login(c)
    page = c.get("/console/approvals").text
    assert approval_id in page and "your request" in page
    r = c.post(f"/console/approvals/{approval_id}/approve", data={**OPS, "csrf_token": csrf(c)})
    assert r.status_code == 403 and "cannot approve" in r.text
    with TestClient(app, follow_redirects=False) as other:
        login(other, STAFF_TOKEN_2)
        r = other.post(
            f"/console/approvals/{approval_id}/approve", data={**OPS, "csrf_token": csrf(other)}
        )
        assert r.status_code == 303
    (row,) = audit_rows(engine, "approval.approved")
    assert (row.actor, row.incident_id) == ("ops2", "INC-9")


def test_another_staff_member_can_reject_and_nothing_takes_effect(c, engine, app):
    approval_id = pending_treasury_change(engine)
    login(c)
    r = c.post(f"/console/approvals/{approval_id}/reject", data={**OPS, "csrf_token": csrf(c)})
    assert r.status_code == 403  # the requester decides neither way
    with TestClient(app, follow_redirects=False) as other:
        login(other, STAFF_TOKEN_2)
        page = other.get("/console/approvals").text
        assert f"/console/approvals/{approval_id}/reject" in page
        r = other.post(
            f"/console/approvals/{approval_id}/reject", data={**OPS, "csrf_token": csrf(other)}
        )
        assert r.status_code == 303
    with engine.db.tx() as s:
        a = s.get(Approval, approval_id)
        assert (a.status, a.approved_by) == ("rejected", "ops2")
        assert s.get(RailState, "fake_live").treasury is None
    (row,) = audit_rows(engine, "approval.rejected")
    assert (row.actor, row.incident_id) == ("ops2", "INC-9")


# -- pages --------------------------------------------------------------------------------------
def test_proofs_filter_and_page(c, chain, monkeypatch):
    ok = paid_proof(c, chain, tx="fxaaaa0001")
    r = c.post("/v1/payment-sessions", headers=auth(), json=SESSION)
    sess = r.json()
    chain.txs["fxbbbb0002"] = {
        "status": "ok",
        "to": "fatreasury",
        "amount": 999,
        "asset": "fusd",
        "refs": [sess["reference"]],
    }
    bad = c.post(
        "/v1/proofs", headers=auth(), json={"session_id": sess["id"], "proof": "fxbbbb0002"}
    ).json()
    assert bad["status"] == "failed"
    login(c)
    page = c.get("/console/proofs?status=failed").text
    assert bad["id"] in page and ok["id"] not in page
    page = c.get(f"/console/proofs?failure_code={bad['failure_code']}").text
    assert bad["id"] in page and ok["id"] not in page
    page = c.get(f"/console/proofs?q={ok['id']}").text
    assert ok["id"] in page and bad["id"] not in page
    assert bad["id"] not in c.get("/console/proofs?owner_id=bob").text
    monkeypatch.setattr(routes, "PAGE_SIZE", 1)
    first = c.get("/console/proofs").text
    assert 'rel="next"' in first and 'rel="prev"' not in first
    second = c.get("/console/proofs?page=2").text
    assert 'rel="prev"' in second and 'rel="next"' not in second
    # A page that is not an ASCII number is the first page (Unicode "digits" included).
    for junk in ("%C2%B2", "%E2%91%A0", "%D9%A3", "-1", "0", "x"):
        r = c.get(f"/console/proofs?page={junk}")
        assert r.status_code == 200 and 'rel="prev"' not in r.text, junk
    assert {ok["id"], bad["id"]} == {i for i in (ok["id"], bad["id"]) if i in first + second}


def test_health_charts_are_inline_svg_from_stored_data(c, chain):
    paid_proof(c, chain)
    login(c)
    page = c.get("/console").text
    assert page.count('<svg role="img"') == 4
    assert "Proofs per hour by status" in page and "verified 1" in page
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")


def test_pages_carry_security_headers_and_no_secrets(c, chain):
    paid_proof(c, chain)
    login(c)
    for page in PAGES:
        r = c.get(page)
        assert "default-src 'none'" in r.headers["content-security-policy"]
        assert r.headers["x-frame-options"] == "DENY" and r.headers["cache-control"] == "no-store"
        for secret in (STAFF_TOKEN, STAFF_TOKEN_2, SERVICE_TOKEN, "test-audit-key"):
            assert secret not in r.text
    assert c.get("/console/static/console.css").headers["content-type"].startswith("text/css")


def test_observed_data_is_redacted_at_any_depth():
    got = queries.redact(
        {
            "amount": "1",
            "Signature": "s",
            "nested": {"payload": {"x": 1}, "list": [{"authorization": "a", "ok": 2}]},
        }
    )
    assert got == {
        "amount": "1",
        "Signature": "[redacted]",
        "nested": {"payload": "[redacted]", "list": [{"authorization": "[redacted]", "ok": 2}]},
    }


def test_reconciliation_dry_run_from_the_console_is_a_persisted_run_on_the_record(c, engine, chain):
    pytest.importorskip("verifier.services.reconciliation")
    paid_proof(c, chain)
    login(c)
    page = c.get("/console/reconciliation").text
    assert "No runs yet" in page and 'id="assurance-score"' in page
    token = _CSRF.search(page)[1]
    r = c.post(
        "/console/reconciliation/runs",
        data={
            "csrf_token": token,
            "scope": "rail_proofs",
            "incident_id": " ",
            "operator_reason": "x",
        },
    )
    assert r.status_code == 422 and "Nothing was done" in r.text
    assert (
        c.post("/console/reconciliation/runs", data={"scope": "rail_proofs", **OPS}).status_code
        == 403
    )  # no CSRF token
    assert audit_rows(engine, "reconciliation.started") == []
    r = c.post(
        "/console/reconciliation/runs",
        data={"csrf_token": token, "scope": "rail_proofs", "rail_id": "", **OPS},
    )
    assert r.status_code == 303
    run_page = c.get(r.headers["location"])
    assert run_page.status_code == 200 and 'id="run"' in run_page.text
    assert "dry run" in run_page.text and "INC-9" in run_page.text
    (row,) = audit_rows(engine, "reconciliation.started")
    assert (row.actor, row.incident_id, row.reason) == ("ops1", "INC-9", "console test")
    assert row.data["dry_run"] is True
    listing = c.get("/console/reconciliation").text
    assert r.headers["location"] in listing
    assert c.get("/console/reconciliation/runs/nope").status_code == 404


# -- release gates and change requests --------------------------------------------------------
def test_rails_page_shows_release_gate_evidence(c, engine):
    from tests.gates import pass_release_gates

    login(c)
    page = c.get("/console/rails").text
    row = page.split('id="gates-fake_gated"', 1)[1].split("</tr>", 1)[0]
    assert row.count("gate-missing") == 5 and "gate-passed" not in row
    pass_release_gates(c, "fake_gated")
    page = c.get("/console/rails").text
    row = page.split('id="gates-fake_gated"', 1)[1].split("</tr>", 1)[0]
    assert row.count("gate-passed") == 5 and "ops1" in row


def test_production_request_from_the_console_waits_for_gates_and_a_second_person(c, engine, app):
    from tests.gates import pass_release_gates

    login(c)
    url = "/console/rails/fake_gated/production/request"
    r = c.post(url, data={**OPS, "production": "maybe", "csrf_token": csrf(c)})
    assert r.status_code == 422 and "production" in r.text
    r = c.post(url, data={"production": "enable", "csrf_token": csrf(c)})
    assert r.status_code == 422  # no incident context: nothing asked for
    with engine.db.tx() as s:
        assert s.scalars(select(Approval)).all() == []
    r = c.post(url, data={**OPS, "production": "enable", "csrf_token": csrf(c)})
    assert r.status_code == 303 and r.headers["location"].startswith("/console/approvals")
    with engine.db.tx() as s:
        (a,) = s.scalars(select(Approval)).all()
        assert (a.kind, a.value, a.requested_by, a.incident_id) == (
            "production",
            "true",
            "ops1",
            "INC-9",
        )
        approval_id = a.id
    with TestClient(app, follow_redirects=False) as other:
        login(other, STAFF_TOKEN_2)
        approve = f"/console/approvals/{approval_id}/approve"
        r = other.post(approve, data={**OPS, "csrf_token": csrf(other)})
        assert r.status_code == 409 and "release gates" in r.text
        with engine.db.tx() as s:
            assert s.get(RailState, "fake_gated").production_enabled is False
        pass_release_gates(c, "fake_gated")
        r = other.post(approve, data={**OPS, "csrf_token": csrf(other)})
        assert r.status_code == 303
    with engine.db.tx() as s:
        assert s.get(RailState, "fake_gated").production_enabled is True


def test_treasury_request_from_the_console_is_validated_and_queued(c, engine):
    login(c)
    url = "/console/rails/fake_live/treasury/request"
    r = c.post(url, data={**OPS, "treasury": "", "csrf_token": csrf(c)})
    assert r.status_code == 422 and "treasury" in r.text
    r = c.post(url, data={**OPS, "treasury": "fanewtreasury", "csrf_token": csrf(c)})
    assert r.status_code == 303
    page = c.get("/console/approvals").text
    assert "fanewtreasury" in page and "your request" in page
    with engine.db.tx() as s:
        assert s.get(RailState, "fake_live").treasury is None  # not before a second person


def test_a_review_is_released_from_the_console_and_never_credited_against_its_rail(
    c, engine, chain
):
    """A review-only rail's proof on its page: the release form only; a credit posted anyway
    is refused on the page, naming why; the release is the API's, audited with the context."""
    proof = paid_proof(c, chain, "fx7777abcd", rail_id="fake_review")
    assert (proof["status"], proof["failure_code"]) == ("requires_review", "review_only_rail")
    login(c)
    page = c.get(f"/console/proofs/{proof['id']}")
    assert 'id="release-form"' in page.text and 'id="credit-form"' not in page.text
    token = _CSRF.search(page.text)[1]
    r = c.post(
        f"/console/proofs/{proof['id']}/review",
        data={**OPS, "decision": "credit", "csrf_token": token},
    )
    assert r.status_code == 409 and "it can be released, not credited" in r.text
    r = c.post(
        f"/console/proofs/{proof['id']}/review",
        data={**OPS, "decision": "approve", "csrf_token": token},
    )
    assert r.status_code == 422 and "decision: credit or release" in r.text
    r = c.post(
        f"/console/proofs/{proof['id']}/review",
        data={**OPS, "decision": "release", "csrf_token": token},
    )
    assert r.status_code == 303 and "?done=released." in r.headers["location"]
    page = c.get(r.headers["location"])
    assert '<span class="badge failed" id="proof-status">failed</span>' in page.text
    assert "Released: the proof failed" in page.text
    (row,) = audit_rows(engine, "proof.review_released")
    assert (row.actor, row.incident_id) == ("ops1", OPS["incident_id"])


@pytest.mark.parametrize(
    "path, field",
    [
        ("/console/rails/fake_gated/production/request", {"production": "enable"}),
        ("/console/rails/fake_live/treasury/request", {"treasury": "fanewtreasury"}),
    ],
)
def test_a_queued_change_request_says_it_was_queued(c, path, field):
    """Without a notice a queued request looks like a form that did nothing, and is sent
    again: a second pending request."""
    login(c)
    r = c.post(path, data={**OPS, **field, "csrf_token": csrf(c)})
    assert r.status_code == 303 and "done=requested." in r.headers["location"], r.headers
    page = c.get(r.headers["location"])
    notice = re.search(r'<p class="notice" role="status">([^<]*)</p>', page.text)
    assert notice is not None and "second staff member" in notice.group(1), page.text
