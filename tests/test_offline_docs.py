"""/docs (and /redoc) work without the internet: their HTML names only the app's own URLs,
and every script, stylesheet and icon it names is served by the app."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from tests.conftest import make_settings
from tests.fake_rail import catalog_with_fake
from tests.test_console_browser import browser  # noqa: F401
from verifier.core.engine import Engine
from verifier.http.api import create_app


@pytest.fixture(scope="module")
def client():
    # The pages need no database: building the app opens no connection.
    engine = Engine(make_settings("sqlite:///unused-for-docs.db"), catalog=catalog_with_fake())
    with TestClient(create_app(engine)) as c:
        yield c


def referenced(html: str) -> set[str]:
    """Every URL the page names: src/href attributes and the quoted URLs of its script."""
    urls = set(re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html))
    urls |= set(re.findall(r"""(?:url|spec-url)\s*[:=]\s*["']([^"']+)["']""", html))
    return urls


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_reference_only_local_urls_that_answer(client, page):
    r = client.get(page)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    html = r.text
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", html, flags=re.I), html
    urls = referenced(html)
    assert "/openapi.json" in urls
    assets = {u for u in urls if u.startswith("/docs/static/")}
    assert assets, urls
    for url in urls:
        assert url.startswith("/"), url
        got = client.get(url)
        assert got.status_code == 200, url
        assert got.content, url


def test_swagger_ui_loads_its_script_and_stylesheet_locally(client):
    html = client.get("/docs").text
    assert 'src="/docs/static/swagger-ui-bundle.js"' in html
    assert 'href="/docs/static/swagger-ui.css"' in html
    js = client.get("/docs/static/swagger-ui-bundle.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert "SwaggerUIBundle" in js.text
    # The bundled Swagger UI renders OpenAPI 3.1, which is what the app publishes.
    assert "openapi: 3.1.0" in js.text
    assert client.get("/openapi.json").json()["openapi"].startswith("3.1")
    css = client.get("/docs/static/swagger-ui.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")


def test_the_docs_pages_are_not_operations_of_the_api(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert not any(p.startswith(("/docs", "/redoc")) for p in paths)


@pytest.mark.parametrize("page", ["/docs", "/redoc", "/docs/static/swagger-ui-bundle.js"])
def test_the_docs_run_only_their_own_files_and_are_never_framed(client, page):
    """SECURITY: the pages run a large script bundle on the console's origin, where a script
    could read a console page (its CSRF token) with the operator's cookie: they may run only
    the files served here (Swagger UI's inline start-up script by its hash), fetch only from
    here, and no other site may frame them."""
    r = client.get(page)
    assert r.status_code == 200
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["x-content-type-options"] == "nosniff"
    if page.endswith(".js"):
        return
    csp = dict(
        (d.split(" ", 1) + [""])[:2] for d in r.headers["content-security-policy"].split("; ")
    )
    assert csp["default-src"] == "'none'" and csp["frame-ancestors"] == "'none'"
    assert csp["connect-src"] == "'self'" and csp["base-uri"] == "'none'"
    scripts = csp["script-src"].split()
    assert scripts[0] == "'self'" and "'unsafe-inline'" not in scripts
    assert "'unsafe-eval'" not in scripts
    inline = re.findall(r"<script>(.*?)</script>", r.text, flags=re.S)
    assert len(scripts) == 1 + len(inline)  # one hash per inline script, nothing else


def test_api_docs_off_serves_no_docs_pages(tmp_path):
    """RAILPROOF_API_DOCS=0: no /docs, /redoc or their assets (production); the OpenAPI
    document, a contract and no script, is still served."""
    settings = make_settings("sqlite:///unused-for-docs.db")
    settings.api_docs = False
    engine = Engine(settings, catalog=catalog_with_fake())
    with TestClient(create_app(engine)) as c:
        for page in ("/docs", "/redoc", "/docs/static/swagger-ui-bundle.js"):
            assert c.get(page).status_code == 404, page
        assert c.get("/openapi.json").status_code == 200


@pytest.mark.slow
def test_the_docs_render_in_a_browser_under_their_policy(browser):  # noqa: F811
    """The policy lets both pages draw the API from /openapi.json: no script, style or image
    of theirs is blocked (Chromium logs a refusal as a console error), only what they would
    fetch from elsewhere."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.live_server import LiveServer

    engine = Engine(make_settings("sqlite:///unused-for-docs.db"), catalog=catalog_with_fake())
    with LiveServer(create_app(engine)) as srv:
        for page, drawn in (
            ("/docs", ".swagger-ui .opblock"),
            ("/redoc", "[data-section-id^='operation/']"),
        ):
            browser.get(srv.url + page)
            WebDriverWait(browser, 20).until(
                lambda d, css=drawn: d.find_elements(By.CSS_SELECTOR, css)
            )
            refused = [
                e["message"]
                for e in browser.get_log("browser")
                if "Content Security Policy" in e["message"]
                # Blocked as it should be: ReDoc's "powered by" logo from its CDN.
                and not _elsewhere(e["message"], srv.url)
            ]
            assert refused == [], (page, refused)


def _elsewhere(message: str, here: str) -> bool:
    """Whether the refusal is of a resource on another site (inline code has no URL)."""
    urls = re.findall(r"'(https?://[^']+)' violates", message)
    return bool(urls) and not urls[0].startswith(here)
