"""The bound on guessing staff tokens (README, "Operator console"): past
RAILPROOF_CONSOLE_LOGINS_PER_MINUTE tries from an address every login from it gets 429. An
IPv6 host is counted by its /64: one host is routinely given all of it, and each of its
2^64 addresses would otherwise be a first try."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.test_console import login
from verifier.http.api import create_app
from verifier.http.console import console_router
from verifier.http.ratelimit import RateLimiter, client_key

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
