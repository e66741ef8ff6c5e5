"""Without a session the console answers 303 to its login page and expires its cookie names
at the host's root and at the page asked for. The page's path goes into a Set-Cookie `Path`
attribute: whatever the path holds, the answer stays a redirect and its cookies carry no
attribute the path spelled."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from verifier.http.api import create_app
from verifier.http.console.auth import COOKIE_PATH


@pytest.fixture
def console_client(engine):
    with TestClient(create_app(engine), raise_server_exceptions=False, follow_redirects=False) as c:
        yield c


def _paths(r) -> list[str]:
    return [
        a.strip()[5:]
        for line in r.headers.get_list("set-cookie")
        for a in line.split(";")
        if a.strip().lower().startswith("path=")
    ]


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/console/proofs/%E2%80%AE"),  # U+202E: not Latin-1
        ("GET", "/console/reconciliation/runs/%FF"),  # invalid UTF-8, read as U+FFFD
        ("POST", "/console/rails/%E2%80%AE/pause"),
        ("POST", "/console/approvals/%F0%9F%98%80/approve"),
        ("GET", "/console/proofs/a,b"),  # ',' would start another cookie for some readers
    ],
)
def test_console_without_a_session_redirects_whatever_the_path_holds(console_client, method, path):
    r = console_client.request(method, path)
    assert r.status_code == 303, (r.status_code, r.text)
    assert r.headers["location"].startswith("/console/login")
    for p in _paths(r):
        assert p.isascii() and p.isprintable() and not set(p) & set(" ;,"), p


def test_console_path_cannot_add_attributes_to_the_cookies_it_clears(console_client):
    r = console_client.get("/console/proofs/x%3B%20Domain%3Dexample.com%3B%20Max-Age%3D99")
    assert r.status_code == 303
    for line in r.headers.get_list("set-cookie"):
        attrs = [a.strip().split("=", 1)[0].lower() for a in line.split(";")[1:]]
        assert "domain" not in attrs, line
        assert attrs.count("max-age") <= 1, line
    assert set(_paths(r)) <= {
        "/",
        COOKIE_PATH,
        "/console/proofs/x%3B%20Domain%3Dexample.com%3B%20Max-Age%3D99",
    }


def test_planted_names_are_expired_at_the_page_as_the_browser_sent_it(console_client):
    # A browser matches cookie paths against the percent-encoded path it requests.
    r = console_client.get("/console/proofs/a%20b")
    assert r.status_code == 303
    assert set(_paths(r)) == {"/", "/console/proofs/a%20b"}
    r = console_client.get("/console/proofs/p-1")
    assert set(_paths(r)) == {"/", "/console/proofs/p-1"}
