"""A burst of `POST /v1/webhook-endpoints` from one token, at once, through two API servers with
engines (and connection pools) of their own, as two API processes are: the same URL is stored
once, and the token never holds more than the limit of active endpoints. Another token's
endpoints neither count against it nor are touched. On SQLite and PostgreSQL.

And an endpoint's rotate or delete at the same time as an event emitted to it, or as a staff
replay of one of its dead letters (PostgreSQL, where these run at once): neither deadlocks,
and no delivery is left pending to a deleted endpoint.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from sqlalchemy import select, update

from tests.bursts import codes, post_at_once
from tests.conftest import CLOCK, OTHER_SERVICE_TOKEN, SERVICE_TOKEN, auth, make_settings
from tests.fake_rail import catalog_with_fake
from tests.live_server import LiveServer
from verifier.core.engine import Engine
from verifier.core.errors import Conflict
from verifier.http.api import create_app
from verifier.services import audit, rails_admin, webhook_endpoints, webhooks
from verifier.services.events import emit
from verifier.services.webhook_endpoints import MAX_ENDPOINTS_PER_TOKEN
from verifier.storage.repo import audit as audit_repo
from verifier.storage.repo import outbox as outbox_repo
from verifier.storage.webhook_models import DeliveryStatus, WebhookDelivery

PRINCIPAL = "svc:alice,alice-2"
OWNERS = ["alice", "alice-2"]
OP = audit.Operator("ops1", "INC-1", "maintenance")

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


def _postgres_only(db_url: str) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("PostgreSQL: SQLite runs one writer at a time")


def _in_thread(out: dict[str, object], key: str, fn: Callable[[], object]) -> threading.Thread:
    def run() -> None:
        try:
            out[key] = fn()
        except BaseException as e:  # noqa: BLE001 - the test reads it
            out[key] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("action", ["rotate", "delete"])
def test_endpoint_rotate_or_delete_during_an_emit_to_it_does_not_deadlock(
    engine, db_url, monkeypatch, action
):
    # An emitting transaction (a staff pause here) holds the audit chain's lock when its
    # delivery row's foreign key takes a share lock on the endpoint's row. Rotate and delete
    # locked that row first and took the chain's lock next: PostgreSQL found the cycle and
    # aborted one of the two (a 500 for the owner, or a failed pause).
    _postgres_only(db_url)
    ep = webhook_endpoints.create_endpoint(
        engine, PRINCIPAL, ["alice", "alice-2"], "http://127.0.0.1:9/h", ["rail.paused"]
    )
    holding = threading.Event()
    real = outbox_repo.insert_deliveries

    def slow_insert(s, rows, *a):
        # The emit holds the chain's lock here: time for the owner's call to go as far as
        # it can (before the fix: lock the endpoint's row, then queue for the chain's lock).
        if rows and not holding.is_set():
            holding.set()
            time.sleep(0.7)
        return real(s, rows, *a)

    monkeypatch.setattr(outbox_repo, "insert_deliveries", slow_insert)
    fn = (
        webhook_endpoints.rotate_secret if action == "rotate" else webhook_endpoints.delete_endpoint
    )
    out: dict[str, object] = {}
    threads = [
        _in_thread(out, "pause", lambda: rails_admin.set_paused(engine, "fake_live", True, OP))
    ]
    assert holding.wait(5)
    threads.append(_in_thread(out, "owner", lambda: fn(engine, PRINCIPAL, OWNERS, ep["id"])))
    for t in threads:
        t.join(15)
    assert not isinstance(out["pause"], BaseException), repr(out["pause"])
    assert not isinstance(out["owner"], BaseException), repr(out["owner"])
    assert out["pause"]["changed"] is True
    if action == "delete":
        # The emit committed first: its delivery was queued, and the delete cancelled it.
        assert out["owner"]["cancelled_deliveries"] == 1
        with engine.db.tx() as s:
            (d,) = s.scalars(select(WebhookDelivery)).all()
            assert d.status == DeliveryStatus.cancelled


@pytest.mark.parametrize("first", ["replay", "delete"])
def test_replay_and_delete_at_once_leave_no_pending_delivery_to_a_deleted_endpoint(
    engine, db_url, first
):
    # Replay read the endpoint as active without a lock, and delete cancelled only what was
    # pending in its view (the replayed row was a dead letter there): both committed, and the
    # delivery stayed pending for good (never claimed: its endpoint is inactive).
    _postgres_only(db_url)
    ep = webhook_endpoints.create_endpoint(
        engine, PRINCIPAL, ["alice", "alice-2"], "http://127.0.0.1:9/h", ["proof.verified"]
    )
    with engine.db.tx() as s:
        ev = emit(s, CLOCK, "proof.verified", "alice", "proof", "p1", {"id": "p1"})
    with engine.db.tx() as s:  # as after its last try
        s.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.event_id == ev)
            .values(status=DeliveryStatus.dead_letter, attempts=3, next_attempt_at=None)
        )
    held, release = threading.Event(), threading.Event()

    def other_appender() -> None:  # any state change holding the audit chain's lock a moment
        with engine.db.tx() as s:
            audit_repo.lock_chain(s)
            held.set()
            release.wait(10)

    calls = {
        "replay": lambda: webhooks.replay(engine, ev, audit.Operator("ops1", "INC-1", "fixed")),
        "delete": lambda: webhook_endpoints.delete_endpoint(engine, PRINCIPAL, OWNERS, ep["id"]),
    }
    out: dict[str, object] = {}
    threads = [_in_thread(out, "appender", other_appender)]
    assert held.wait(5)
    # Both queue behind the appender, `first` ahead: each has gone as far as it can.
    for key in (first, "delete" if first == "replay" else "replay"):
        threads.append(_in_thread(out, key, calls[key]))
        time.sleep(0.3)
    release.set()
    for t in threads:
        t.join(15)
    assert not isinstance(out["delete"], BaseException), repr(out["delete"])
    with engine.db.tx() as s:
        d = s.scalar(select(WebhookDelivery).where(WebhookDelivery.event_id == ev))
    # The endpoint is gone: its delivery must not be left pending (never sent, never ended).
    assert d.status != DeliveryStatus.pending, (d.status, out)
    if first == "delete":
        # The endpoint was gone by the time replay read it: refused, the dead letter kept.
        assert isinstance(out["replay"], Conflict), repr(out["replay"])
        assert out["delete"]["cancelled_deliveries"] == 0
        assert d.status == DeliveryStatus.dead_letter
    else:
        # Replayed first, then cancelled with the endpoint.
        assert isinstance(out["replay"], dict), repr(out["replay"])
        assert out["delete"]["cancelled_deliveries"] == 1
        assert d.status == DeliveryStatus.cancelled
