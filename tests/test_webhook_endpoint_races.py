"""A burst of `POST /v1/webhook-endpoints` from one token, at once, through two API servers with
engines (and connection pools) of their own, as two API processes are: the same URL is stored
once, and the token never holds more than the limit of active endpoints. Another token's
endpoints neither count against it nor are touched. On SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.bursts import codes, post_at_once
from tests.conftest import OTHER_SERVICE_TOKEN, SERVICE_TOKEN, auth, make_settings
from tests.fake_rail import catalog_with_fake
from tests.live_server import LiveServer
from verifier.core.engine import Engine
from verifier.http.api import create_app
from verifier.services.webhook_endpoints import MAX_ENDPOINTS_PER_TOKEN

BURST = 30


@pytest.fixture
def servers(db_url) -> Iterator[tuple[Engine, list[str]]]:
    engines = [Engine(make_settings(db_url), catalog=catalog_with_fake()) for _ in range(2)]
    try:
        with LiveServer(create_app(engines[0])) as one, LiveServer(create_app(engines[1])) as two:
            yield engines[0], [one.url, two.url]
    finally:
        for e in engines:
            e.db.dispose()


def _burst(urls: list[str], bodies: list[dict[str, object]], token: str) -> list[httpx.Response]:
    return post_at_once(urls, [("/v1/webhook-endpoints", token, b) for b in bodies])


def _listed(url: str, token: str) -> list[dict[str, object]]:
    r = httpx.get(f"{url}/v1/webhook-endpoints", headers=auth(token), timeout=30)
    assert r.status_code == 200, r.text
    return list(r.json())


def test_the_same_url_at_once_is_stored_once(servers):
    _, urls = servers
    body = {"url": "http://127.0.0.1:9/race", "event_types": ["proof.verified"]}
    answers = _burst(urls, [body] * BURST, SERVICE_TOKEN)
    assert codes(answers) == {201: 1, (409, "webhook_endpoint_exists"): BURST - 1}
    stored = _listed(urls[1], SERVICE_TOKEN)
    assert [e["url"] for e in stored] == [body["url"]]
    (created,) = [r.json() for r in answers if r.status_code == 201]
    assert stored[0]["id"] == created["id"]


def test_many_urls_at_once_never_pass_the_limit(servers):
    _, urls = servers
    # Bob's endpoints, made first, count for Bob only.
    bob = [
        {"url": f"http://127.0.0.1:9/bob-{i}", "event_types": ["proof.verified"]} for i in range(3)
    ]
    assert codes(_burst(urls, bob, OTHER_SERVICE_TOKEN)) == {201: 3}
    n = MAX_ENDPOINTS_PER_TOKEN + 14
    bodies = [
        {"url": f"http://127.0.0.1:9/hook-{i}", "event_types": ["proof.verified"]} for i in range(n)
    ]
    answers = _burst(urls, bodies, SERVICE_TOKEN)
    assert codes(answers) == {
        201: MAX_ENDPOINTS_PER_TOKEN,
        (409, "webhook_endpoint_limit"): n - MAX_ENDPOINTS_PER_TOKEN,
    }
    mine = _listed(urls[0], SERVICE_TOKEN)
    assert len(mine) == MAX_ENDPOINTS_PER_TOKEN
    assert {e["id"] for e in mine} == {r.json()["id"] for r in answers if r.status_code == 201}
    assert len(_listed(urls[1], OTHER_SERVICE_TOKEN)) == 3
