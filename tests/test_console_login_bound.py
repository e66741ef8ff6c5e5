"""The bound on guessing staff tokens (README, "Operator console"): past
RAILPROOF_CONSOLE_LOGINS_PER_MINUTE tries from an address every login from it gets 429. The
staff API's bearer tokens are the same tokens, so its unknown ones count with the console's
tries, and past the bound it refuses a right token too. An IPv6 host is counted by its /64:
one host is routinely given all of it, and each of its 2^64 addresses would otherwise be a
first try."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.conftest import SERVICE_TOKEN, STAFF_TOKEN, auth
from tests.test_console import login
from tests.test_ratelimit_redis import prefix, redis_url  # noqa: F401 - fixtures
from verifier.http.api import create_app
from verifier.http.console import console_router
from verifier.http.ratelimit import (
    MAX_BUCKETS,
    STAFF_SIGN_IN,
    RateLimiter,
    SharedRateLimiter,
    client_key,
)

PER_MINUTE = 10  # RAILPROOF_CONSOLE_LOGINS_PER_MINUTE's default


def _client(app, address: str) -> TestClient:
    return TestClient(
        app, raise_server_exceptions=False, follow_redirects=False, client=(address, 5000)
    )


def test_the_login_bound_is_not_escaped_by_moving_within_an_ipv6_64(engine):
    limiter = RateLimiter(rate=PER_MINUTE / 60.0, burst=PER_MINUTE)
    app = create_app(engine, console=console_router(engine, login_limiter=limiter))
    codes = []
    for i in range(1, 2 * PER_MINUTE + 1):
        with _client(app, f"2001:db8:1:2::{i:x}") as guesser:
            codes.append(login(guesser, f"guess-{i}").status_code)
    assert codes[:PER_MINUTE] == [401] * PER_MINUTE and set(codes[PER_MINUTE:]) == {429}, codes
    # Another /64 is another host: its own tries.
    with _client(app, "2001:db8:1:3::1") as other:
        assert login(other, "guess").status_code == 401


def test_client_keys():
    assert (
        client_key("2001:db8:1:2:aaaa::1")
        == client_key("2001:DB8:1:2::ffff")
        == ("2001:db8:1:2::/64")
    )
    assert client_key("203.0.113.7") == client_key("::ffff:203.0.113.7") == "203.0.113.7"
    assert client_key(None) == "unknown" and client_key("testclient") == "testclient"


def test_staff_token_guesses_through_the_staff_api_are_bounded_with_the_consoles(engine):
    app = create_app(engine)  # the console and the API with one limiter from the settings
    with _client(app, "203.0.113.7") as staff:
        # A staff member's own requests, and a tenant's token on a staff route, are no guess.
        for _ in range(2 * PER_MINUTE):
            assert staff.get("/v1/admin/audit/verify", headers=auth(STAFF_TOKEN)).status_code == 200
            r = staff.get("/v1/admin/audit/verify", headers=auth(SERVICE_TOKEN))
            assert r.status_code == 401
    with _client(app, "203.0.113.8") as guesser:
        api = [
            guesser.get("/v1/admin/audit/verify", headers=auth(f"guess-{i}")).status_code
            for i in range(PER_MINUTE + 1)
        ]
        assert api == [401] * PER_MINUTE + [429], api
        r = guesser.get("/v1/admin/audit/verify", headers=auth(STAFF_TOKEN))
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert r.json()["error"]["code"] == "rate_limited"
        # One count for both doors: the console refuses this address too.
        assert login(guesser, STAFF_TOKEN).status_code == 429
    with _client(app, "203.0.113.9") as other:
        for i in range(PER_MINUTE):
            assert login(other, f"guess-{i}").status_code == 401
        r = other.get("/v1/admin/audit/verify", headers=auth(STAFF_TOKEN))
        assert r.status_code == 429
    with _client(app, "203.0.113.10") as fresh:
        assert fresh.get("/v1/admin/audit/verify", headers=auth(STAFF_TOKEN)).status_code == 200


def test_every_staff_operation_past_the_bound_answers_429_and_declares_it(engine):
    # Past the bound every staff route refuses a right token with 429 rate_limited, so each
    # staff operation declares 429 in the OpenAPI document: a client generated from it gets
    # the model, Retry-After and its retry for an answer the service sends.
    from tests.test_security import call, concrete, every_route

    app = create_app(engine)
    with _client(app, "203.0.113.11") as guesser:
        for i in range(PER_MINUTE + 1):
            guesser.get("/v1/admin/audit/verify", headers=auth(f"guess-{i}"))
        spec = guesser.get("/openapi.json").json()
        staff = [(m, p) for m, p in every_route(app) if p.startswith("/v1/admin")]
        assert len(staff) >= 20
        undeclared = []
        for method, path in staff:
            r = call(guesser, method, concrete(path), auth(STAFF_TOKEN))
            assert r.status_code == 429, (method, path, r.text)
            assert r.json()["error"]["code"] == "rate_limited"
            if "429" not in spec["paths"][path][method.lower()]["responses"]:
                undeclared.append(f"{method} {path}")
        assert not undeclared, undeclared


# Past the bound a refused try takes nothing, so a guesser may send them as fast as it likes:
# the bound holds only if a refusal says nothing about the token, its speed included. What a
# refusal asks of the limiter's store (a Redis round trip each) must not depend on the token.


class _StoreCalls:
    """The calls a SharedRateLimiter makes to Redis, one round trip each."""

    def __init__(self, limiter: SharedRateLimiter):
        self.calls: list[str] = []
        strategy = limiter.strategy
        for name in ("hit", "test", "get_window_stats"):
            real = getattr(strategy, name)

            def spy(*a, _real=real, _name=name, **kw):
                self.calls.append(_name)
                return _real(*a, **kw)

            setattr(strategy, name, spy)

    def during(self, fn) -> list:
        self.calls.clear()
        return [fn().status_code, *self.calls]


def test_a_locked_address_costs_the_same_redis_round_trips_whatever_the_token(
    engine,
    redis_url,  # noqa: F811
    prefix,  # noqa: F811
):
    app = create_app(engine)
    limiter = SharedRateLimiter(
        redis_url,
        rate=PER_MINUTE / 60.0,
        burst=PER_MINUTE,
        key_prefix=prefix,
        local=RateLimiter(rate=PER_MINUTE / 60.0, burst=PER_MINUTE),
    )
    app.state.login_limiter = limiter
    store = _StoreCalls(limiter)
    with _client(app, "203.0.113.40") as guesser:
        for i in range(PER_MINUTE):
            assert guesser.get("/v1/admin/rails", headers=auth(f"guess-{i}")).status_code == 401
        seen = {
            label: store.during(lambda t=token: guesser.get("/v1/admin/rails", headers=auth(t)))
            for label, token in (
                ("unknown", "guess-x"),
                ("staff", STAFF_TOKEN),
                ("tenant", SERVICE_TOKEN),
            )
        }
        assert seen["unknown"][0] == 429
        assert seen["unknown"] == seen["staff"] == seen["tenant"], seen


class _Recording(RateLimiter):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.calls: list[str] = []

    def take(self, principal, endpoint):
        self.calls.append("take")
        return super().take(principal, endpoint)

    def waiting(self, principal, endpoint):
        self.calls.append("waiting")
        return super().waiting(principal, endpoint)


def test_a_locked_address_asks_the_same_of_the_limiter_whatever_the_token(engine):
    # The same without Redis: the process's buckets, behind their lock.
    app = create_app(engine)
    limiter = _Recording(rate=PER_MINUTE / 60.0, burst=PER_MINUTE)
    app.state.login_limiter = limiter
    with _client(app, "203.0.113.41") as guesser:
        for i in range(PER_MINUTE):
            assert guesser.get("/v1/admin/rails", headers=auth(f"guess-{i}")).status_code == 401
        seen = {}
        for label, token in (("unknown", "guess-x"), ("staff", STAFF_TOKEN)):
            limiter.calls.clear()
            r = guesser.get("/v1/admin/rails", headers=auth(token))
            seen[label] = [r.status_code, *limiter.calls]
        assert seen["unknown"][0] == 429
        assert seen["unknown"] == seen["staff"], seen


class _FrozenClock:
    def __call__(self) -> float:
        return 1000.0  # nothing ages out while the test runs


def test_tries_from_many_ipv6_64s_do_not_unlock_a_locked_address(engine):
    # The sign-in buckets are per client address, which the caller picks: MAX_BUCKETS /64s
    # are less than two /48s. A full table must not forget the addresses it holds back.
    app = create_app(engine)
    limiter = RateLimiter(rate=PER_MINUTE / 60.0, burst=PER_MINUTE, clock=_FrozenClock())
    app.state.login_limiter = limiter
    with _client(app, "203.0.113.50") as guesser:
        for i in range(PER_MINUTE):
            assert guesser.get("/v1/admin/rails", headers=auth(f"guess-{i}")).status_code == 401
        assert guesser.get("/v1/admin/rails", headers=auth("guess-x")).status_code == 429
        # One try from each of MAX_BUCKETS /64s (made on the limiter: through HTTP they
        # would take minutes).
        for n in range(MAX_BUCKETS):
            limiter.take(client_key(f"2001:db8:{n >> 16:x}:{n & 0xFFFF:x}::1"), STAFF_SIGN_IN)
        r = guesser.get("/v1/admin/rails", headers=auth("guess-y"))
        assert r.status_code == 429, (r.status_code, r.text)
