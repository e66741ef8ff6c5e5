"""Guessing staff tokens at the console's login is bounded per client address: past
RAILPROOF_CONSOLE_LOGINS_PER_MINUTE tries, every login from that address is refused with 429
and Retry-After (a right token too: otherwise the refusal would tell a right guess) until the
tries age out. Each try counts before its token is read, so guesses sent at once are bounded
as well. Other addresses log in meanwhile. With RAILPROOF_REDIS_URL the tries are counted for
every API process at once."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.conftest import STAFF_TOKEN, auth, make_settings
from tests.test_console import _CSRF, Clock, login
from tests.test_ratelimit_redis import prefix, redis_url  # noqa: F401 - fixtures
from verifier.http.api import create_app
from verifier.http.console import console_router
from verifier.http.console.auth import SESSION_COOKIE
from verifier.http.ratelimit import RateLimiter, SharedRateLimiter, login_limiter_from_settings

PER_MINUTE = 10


def _client(app, address: str = "203.0.113.7") -> TestClient:
    return TestClient(
        app, raise_server_exceptions=False, follow_redirects=False, client=(address, 5000)
    )


def test_failed_logins_past_the_bound_refuse_every_login_from_that_address(engine):
    clock = Clock()
    limiter = RateLimiter(rate=PER_MINUTE / 60.0, burst=PER_MINUTE, clock=clock)
    app = create_app(engine, console=console_router(engine, login_limiter=limiter))
    with _client(app) as guesser, _client(app, "198.51.100.2") as colleague:
        for i in range(PER_MINUTE):
            assert login(guesser, f"guess-{i}").status_code == 401
        r = login(guesser, "guess-next")
        assert r.status_code == 429 and "Too many logins" in r.text
        assert int(r.headers["Retry-After"]) >= 1
        # The right token is refused as well, and says nothing of being right.
        r = login(guesser, STAFF_TOKEN)
        assert r.status_code == 429 and SESSION_COOKIE not in {c.name for c in guesser.cookies.jar}
        # Another address is not held up.
        assert login(colleague, STAFF_TOKEN).status_code == 303
        # A failure ages out: one more try, after its share of the minute.
        clock.t += 60.0 / PER_MINUTE + 0.1
        assert login(guesser, STAFF_TOKEN).status_code == 303


def test_guesses_sent_at_once_are_bounded(engine):
    # Every try takes from the bucket before its token is read: sixty guesses in flight
    # together get ten answers, and fifty refusals.
    limiter = RateLimiter(rate=PER_MINUTE / 60.0, burst=PER_MINUTE)
    app = create_app(engine, console=console_router(engine, login_limiter=limiter))
    codes = _concurrent_guesses(app, 60)
    assert sorted(set(codes)) == [401, 429] and codes.count(401) == PER_MINUTE, codes


def _concurrent_guesses(app, n: int) -> list[int]:
    async def main() -> list[int]:
        transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            form = await c.get("/console/login")
            csrf = _CSRF.search(form.text)[1]
            answers = await asyncio.gather(
                *(
                    c.post("/console/login", data={"token": f"guess-{i}", "csrf_token": csrf})
                    for i in range(n)
                )
            )
            return [r.status_code for r in answers]

    return asyncio.run(main())


def test_zero_turns_the_bound_off(engine, db_url):
    settings = make_settings(db_url, console_logins_per_minute=0)
    limiter = login_limiter_from_settings(settings)
    assert not limiter.enabled
    app = create_app(engine, console=console_router(engine, login_limiter=limiter))
    with _client(app) as guesser:
        for i in range(PER_MINUTE + 5):
            assert login(guesser, f"guess-{i}").status_code == 401


def test_failures_are_counted_for_every_api_process_through_redis(
    engine,
    db_url,
    redis_url,  # noqa: F811
    prefix,  # noqa: F811
):
    settings = make_settings(db_url, redis_url=redis_url, redis_key_prefix=prefix)
    # Two processes' limiters: each built from the settings, sharing the failures in Redis.
    first, second = login_limiter_from_settings(settings), login_limiter_from_settings(settings)
    assert isinstance(first, SharedRateLimiter) and isinstance(second, SharedRateLimiter)
    one = create_app(engine, console=console_router(engine, login_limiter=first))
    two = create_app(engine, console=console_router(engine, login_limiter=second))
    with _client(one) as a, _client(two) as b:
        for i in range(PER_MINUTE):
            assert login(a if i % 2 else b, f"guess-{i}").status_code == 401
        assert login(a, STAFF_TOKEN).status_code == 429
        assert login(b, STAFF_TOKEN).status_code == 429


STRONG = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"  # rand -hex 32


def test_only_a_token_that_reads_as_random_may_be_exempt_from_the_lockout(db_url):
    from verifier.core.config import reads_as_random

    assert reads_as_random(STRONG) and reads_as_random(STRONG.upper())
    assert reads_as_random("q3JtV9xR2mZ8bLw0YfN4pHc6KdTg1sEaUoXiWvQyB7M")  # 32 bytes, base64url
    for weak in (
        "a3f1" * 16,  # a pattern
        "0123456789abcdef" * 4,  # a pattern with every hex digit
        "railproof-staff-operations-2026!",  # a passphrase
        "railproof-staff-token-for-Production-2026-ops-team",  # base64url's characters
        "CorrectHorseBatteryStapleRailproofStaff2026",  # words, both cases, digits
        "0123456789" * 7,  # digits only
        STRONG[:63],  # too short
        STAFF_TOKEN,
    ):
        assert not reads_as_random(weak), weak
    # Listed, a staff member's tokens must all read as random, or the service does not start.
    tokens = {STAFF_TOKEN: "ops1", STRONG: "ops3"}
    ok = make_settings(db_url, staff_tokens=tokens, staff_lockout_exempt=["ops3"])
    assert ok.lockout_exempt(STRONG) and not ok.lockout_exempt(STAFF_TOKEN)
    for exempt, words in ((["ops1"], "does not read as 256"), (["nobody"], "not a staff name")):
        with pytest.raises(ValueError) as e:
            make_settings(db_url, staff_tokens=tokens, staff_lockout_exempt=exempt)
        assert "RAILPROOF_STAFF_LOCKOUT_EXEMPT" in str(e.value) and words in str(e.value)


def test_a_locked_address_still_lets_an_exempt_staff_member_pause_a_rail(engine, monkeypatch):
    # Whoever shares the operators' address (a NAT, a bastion, a proxy not trusted for its
    # X-Forwarded-For) can use the address's tries up; the kill switch must stay reachable.
    tokens = {STAFF_TOKEN: "ops1", STRONG: "ops3", "b" * 64: "ops4"}
    monkeypatch.setattr(engine.settings, "staff_tokens", tokens)
    app = create_app(engine)  # one bucket for both doors, RAILPROOF_CONSOLE_LOGINS_PER_MINUTE
    pause = {"confirm": True, "incident_id": "INC-7", "operator_reason": "wallet mismatch"}
    with _client(app) as c:
        for i in range(PER_MINUTE):
            assert c.get("/v1/admin/rails", headers=auth(f"guess-{i}")).status_code == 401
        # Not exempt: refused like every try, the strong token of one not listed included.
        monkeypatch.setattr(engine.settings, "staff_lockout_exempt", [])
        assert c.get("/v1/admin/rails", headers=auth(STRONG)).status_code == 429
        monkeypatch.setattr(engine.settings, "staff_lockout_exempt", ["ops3"])
        assert c.get("/v1/admin/rails", headers=auth("b" * 64)).status_code == 429
        r = c.post("/v1/admin/rails/fake_live/pause", headers=auth(STAFF_TOKEN), json=pause)
        assert r.status_code == 429
        with engine.db.tx() as s:
            assert not engine.rail_state_read(s, "fake_live").paused
        r = c.post("/v1/admin/rails/fake_live/pause", headers=auth(STRONG), json=pause)
        assert r.status_code == 200, r.text
        with engine.db.tx() as s:
            assert engine.rail_state_read(s, "fake_live").paused
        # The console's sign-in alike.
        assert login(c, STAFF_TOKEN).status_code == 429
        assert login(c, STRONG).status_code == 303
