"""Another page on the console's host (another port here; a sibling subdomain setting
`Domain=` in a deployment) can set cookies named like the console's for `Path=/`. The
browser sends them beside the console's own, and the server used to take the planted one:
a staff member logging in with their own token worked as someone else (and the audit trail
said so), or could not log in at all. Driven in real headless chromium."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx
from sqlalchemy import select

from tests.live_server import LiveServer, handler_server
from tests.test_console_browser import browser, demo_engine, fill, submit  # noqa: F401
from verifier.http.api import create_app
from verifier.http.console.auth import Signer, derive_key
from verifier.services import console_reads
from verifier.storage.models import AuditEvent


@contextmanager
def planting(cookie: str) -> Iterator[str]:
    """A page on another port of 127.0.0.1 setting `cookie` for the whole host; yields its URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Set-Cookie", f"{cookie}; Path=/; Max-Age=31536000")
            self.end_headers()
            self.wfile.write(b"<p>hello</p>")

        def log_message(self, *args: Any) -> None:
            pass

    with handler_server(Handler) as url:
        yield url + "/"


def _login(driver, url: str, token: str) -> str:
    driver.get(url + "/console/login")
    fill(driver, {"token": token})
    submit(driver, "form.login button[type=submit]")
    return driver.current_url


def _session_of(url: str, token: str) -> str:
    """A valid console session cookie of `token`'s staff member (an insider's own)."""
    with httpx.Client(base_url=url) as c:
        page = c.get("/console/login").text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert csrf is not None
        r = c.post(
            "/console/login",
            data={"csrf_token": csrf.group(1), "token": token, "next": "/console"},
            headers={"Origin": url},
        )
        assert r.status_code == 303, r.text
        cookie = c.cookies.get("railproof_console")
        assert cookie
        return cookie


def test_a_planted_session_does_not_make_a_login_someone_else(demo_engine, browser):  # noqa: F811
    from selenium.webdriver.common.by import By

    with LiveServer(create_app(demo_engine)) as srv:
        insider = _session_of(srv.url, "demo-staff-token-2")  # demo-approver's session
        with planting(f"railproof_console={insider}") as page:
            browser.get(page)  # the operator visits a page on the same host...
        _login(browser, srv.url, "demo-staff-token")  # ... then logs in as demo-operator
        who = browser.find_element(By.CSS_SELECTOR, ".who").text
        browser.get(srv.url + "/console/rails")
        fill(browser, {"pause-solana_usdc-incident": "OPS-9", "pause-solana_usdc-reason": "drill"})
        browser.find_element(By.ID, "pause-solana_usdc-confirm").click()
        submit(browser, "form[action='/console/rails/solana_usdc/pause'] button")
    with demo_engine.db.tx() as s:
        actor = s.scalars(select(AuditEvent.actor).where(AuditEvent.action == "rail.paused")).one()
    assert (who, actor) == ("signed in as demo-operator", "demo-operator")


def test_planted_junk_cookies_do_not_lock_staff_out(demo_engine, browser):  # noqa: F811
    with LiveServer(create_app(demo_engine)) as srv:
        for cookie in ("railproof_console=junk.junk", "railproof_console_login=x.1.y"):
            with planting(cookie) as page:
                browser.get(page)
            landed = _login(browser, srv.url, "demo-staff-token")
            assert "/console/login" not in landed, (cookie, landed)
            browser.delete_all_cookies()


def test_two_live_sessions_of_two_people_are_no_session(demo_engine):  # noqa: F811
    # Planted after the login, beside the console's own: neither is taken (Starlette would
    # take the last one), and the redirect to the login expires the names at the host's root.
    # Junk beside a live session, in any order and at any path, is ignored.
    with LiveServer(create_app(demo_engine)) as srv:
        mine = _session_of(srv.url, "demo-staff-token")
        insider = _session_of(srv.url, "demo-staff-token-2")
        with httpx.Client(base_url=srv.url) as c:
            alone = c.get("/console", headers={"Cookie": f"railproof_console={mine}"})
            assert alone.status_code == 200 and "signed in as <strong>demo-operator<" in alone.text
            both = c.get(
                "/console",
                headers={"Cookie": f"railproof_console={mine}; railproof_console={insider}"},
            )
            assert both.status_code == 303 and "/console/login" in both.headers["location"]
            cleared = both.headers.get_list("set-cookie")
            assert any("railproof_console=" in h and "Path=/;" in h for h in cleared), cleared
            fresh = _session_of(srv.url, "demo-staff-token")  # both sessions above have ended
            for pair in (f"junk.junk; railproof_console={fresh}", f"{fresh}; railproof_console=x"):
                r = c.get("/console", headers={"Cookie": f"railproof_console={pair}"})
                assert r.status_code == 200 and "<strong>demo-operator<" in r.text, pair


def test_a_planted_cookie_at_any_path_or_domain_locks_no_one_out(demo_engine):  # noqa: F811
    # Sent first (a longer path, Path=/console/) or from the parent domain (which the login
    # page cannot expire without knowing it): junk, so ignored, and the login holds.
    with LiveServer(create_app(demo_engine)) as srv, httpx.Client(base_url=srv.url) as c:
        c.cookies.set("railproof_console", "junk.junk", domain="127.0.0.1", path="/console/")
        c.cookies.set("railproof_console_login", "x.1.y", domain="127.0.0.1", path="/console/")
        page = c.get("/console/login?next=/console/proofs").text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert csrf is not None
        r = c.post(
            "/console/login",
            data={
                "csrf_token": csrf.group(1),
                "token": "demo-staff-token",
                "next": "/console/proofs",
            },
            headers={"Origin": srv.url},
        )
        assert r.status_code == 303 and r.headers["location"] == "/console/proofs", r.text
        r = c.get("/console/proofs")
        assert r.status_code == 200 and "<strong>demo-operator<" in r.text


def _sid(engine, cookie: str) -> str:
    settings = engine.settings
    key = derive_key(settings.audit_key_bytes(), dict(settings.staff_tokens))
    cs = Signer(key).load(cookie)
    assert cs is not None
    return cs.sid


def test_crossed_sessions_both_end_so_the_planted_one_is_never_taken(demo_engine):  # noqa: F811
    # A planted session the console cannot expire (the parent domain's), beside the staff
    # member's own: the request is refused and both sessions end on the record, so the
    # browser's next request, carrying only the planted one, is no session either. A logout
    # pressed meanwhile ends them as well.
    with LiveServer(create_app(demo_engine)) as srv, httpx.Client(base_url=srv.url) as c:
        mine = _session_of(srv.url, "demo-staff-token")  # demo-operator
        insider = _session_of(srv.url, "demo-staff-token-2")  # demo-approver, planted
        both = f"railproof_console={mine}; railproof_console={insider}"
        assert c.get("/console", headers={"Cookie": both}).status_code == 303
        after = c.get("/console", headers={"Cookie": f"railproof_console={insider}"})
        assert after.status_code == 303 and "demo-approver" not in after.text
        for cookie in (mine, insider):
            assert console_reads.logged_out(demo_engine, _sid(demo_engine, cookie))
        # One value repeated is read once.
        fresh = _session_of(srv.url, "demo-staff-token")
        r = c.get("/console", headers={"Cookie": "; ".join([f"railproof_console={fresh}"] * 50)})
        assert r.status_code == 200 and "<strong>demo-operator<" in r.text


def test_a_logout_beside_a_planted_session_ends_the_session(demo_engine):  # noqa: F811
    with LiveServer(create_app(demo_engine)) as srv, httpx.Client(base_url=srv.url) as c:
        mine = _session_of(srv.url, "demo-staff-token")
        insider = _session_of(srv.url, "demo-staff-token-2")
        page = c.get("/console", headers={"Cookie": f"railproof_console={mine}"}).text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert csrf is not None
        r = c.post(
            "/console/logout",
            data={"csrf_token": csrf.group(1)},
            headers={
                "Cookie": f"railproof_console={mine}; railproof_console={insider}",
                "Origin": srv.url,
            },
        )
        assert r.status_code == 303
        assert console_reads.logged_out(demo_engine, _sid(demo_engine, mine))
