"""/docs (and /redoc) work without the internet: their HTML names only the app's own URLs,
and every script, stylesheet and icon it names is served by the app."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from tests.conftest import make_settings
from tests.fake_rail import catalog_with_fake
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
