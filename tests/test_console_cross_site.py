"""What another site can make the console do, in a real browser.

A cross-site link or form arrives without the console's SameSite=Strict session cookie, and
the redirect to the login page deleted the cookie anyway: any web page (a tenant's site, a
link in a ticket) logged operators out of every console tab, a self-submitting form with no
click at all. And an action's success notice was read from the query string, so a crafted
link made the console say "Applied" on a proof nothing was done to.
"""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from tests import loopback_http as loopback
from tests.live_server import LiveServer
from tests.test_console_browser import (  # noqa: F401
    DEMO,
    SVC,
    browser,
    demo_engine,
    fill,
    submit,
)
from verifier.http.api import create_app


def _another_site(html: str):
    """A page served from `localhost`: another site than the console's 127.0.0.1."""

    class Page(loopback.Handler):
        def do_GET(self) -> None:  # noqa: N802
            self.answer(html.encode(), {"Content-Type": "text/html"})

    return loopback.serving(Page)


def _login(driver, url: str) -> None:
    driver.get(url + "/console/login")
    fill(driver, {"token": "demo-staff-token"})
    submit(driver, "form.login button[type=submit]")
    assert "/console/login" not in driver.current_url


def _landed_on_login(driver) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 20).until(lambda d: "/console/login" in d.current_url)


def _still_signed_in(driver, url: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(url + "/console/rails")
    assert "/console/login" not in driver.current_url, "the operator was logged out"
    assert "demo-operator" in driver.find_element(By.CSS_SELECTOR, ".who").text


def test_a_link_from_another_site_leaves_the_session_alone(demo_engine, browser):  # noqa: F811
    from selenium.webdriver.common.by import By

    with LiveServer(create_app(demo_engine)) as srv:
        _login(browser, srv.url)
        page = f'<a id="go" href="{srv.url}/console/proofs">see my payment</a>'
        with _another_site(page) as site:
            browser.get(site.replace("127.0.0.1", "localhost") + "/")
            browser.find_element(By.ID, "go").click()
            _landed_on_login(browser)  # no cookie on a cross-site navigation: expected
        _still_signed_in(browser, srv.url)


def test_a_form_from_another_site_does_not_log_the_operator_out(demo_engine, browser):  # noqa: F811
    with LiveServer(create_app(demo_engine)) as srv:
        _login(browser, srv.url)
        page = (
            f'<form id="f" method="post" action="{srv.url}/console/logout"></form>'
            "<script>document.getElementById('f').submit()</script>"
        )
        with _another_site(page) as site:
            browser.get(site.replace("127.0.0.1", "localhost") + "/")
            _landed_on_login(browser)
        _still_signed_in(browser, srv.url)


def _staff_client(engine) -> tuple[TestClient, str]:
    c = TestClient(create_app(engine), follow_redirects=False)
    r = c.post(
        "/v1/payment-sessions",
        headers=SVC,
        json={
            "owner_id": "demo-owner",
            "rail_id": "solana_usdc",
            "access_product_id": "pro-monthly",
            "amount": DEMO["amount"],
            "reference": DEMO["reference"],
            "memo": DEMO["memo"],
        },
    )
    assert r.status_code == 201, r.text
    r = c.post(
        "/v1/proofs", headers=SVC, json={"session_id": r.json()["id"], "proof": DEMO["signature"]}
    )
    assert r.status_code == 201, r.text
    proof_id = r.json()["id"]
    form = c.get("/console/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token
    r = c.post("/console/login", data={"token": "demo-staff-token", "csrf_token": token[1]})
    assert r.status_code == 303
    return c, proof_id


APPLIED = "Applied: the receipt was created"


def test_a_crafted_link_cannot_say_something_was_done(demo_engine):  # noqa: F811
    c, proof_id = _staff_client(demo_engine)
    with c:
        for done in ("applied", "applied.0123456789abcdef0123456789abcdef", "credited"):
            page = c.get(f"/console/proofs/{proof_id}", params={"done": done})
            assert page.status_code == 200
            assert 'id="receipt">none' in page.text
            assert APPLIED not in page.text and "Credited:" not in page.text


def test_the_actions_own_redirect_says_what_it_did(demo_engine):  # noqa: F811
    c, proof_id = _staff_client(demo_engine)
    with c:
        page = c.get(f"/console/proofs/{proof_id}")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert csrf
        r = c.post(
            f"/console/proofs/{proof_id}/apply",
            data={
                "csrf_token": csrf[1],
                "confirm": "yes",
                "incident_id": "INC-1",
                "operator_reason": "paid",
            },
        )
        assert r.status_code == 303, r.text
        done = c.get(r.headers["location"])
        assert APPLIED in done.text
        # The same mark is this session's: another login's page does not say it.
        other = TestClient(create_app(demo_engine), follow_redirects=False)
        form = other.get("/console/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert token
        other.post("/console/login", data={"token": "demo-staff-token", "csrf_token": token[1]})
        assert APPLIED not in other.get(r.headers["location"]).text
