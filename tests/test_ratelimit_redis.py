"""Rate limits shared in Redis (RAILPROOF_REDIS_URL): every API process takes from one bucket
per token and endpoint; a Redis that does not answer leaves each process limiting on its own
(never a 500, never unlimited), counted in railproof_rate_limit_backend_errors_total.

The shared-limit tests run against the Redis of RAILPROOF_TEST_REDIS_URL (`.ci/run` starts
one) with a key prefix of their own, so runs never share a bucket; they skip without it, and
fail instead under CI. The outage tests need no Redis."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import auth
from tests.helpers import FAKE_SESSION
from tests.live_server import closed_port
from tests.procs import Api, base_env, migrate
from verifier.http.ratelimit import (
    RateLimited,
    RateLimiter,
    SharedRateLimiter,
    limiter_from_settings,
    shared_window,
)

REDIS_URL = os.environ.get("RAILPROOF_TEST_REDIS_URL")
SESSION = dict(FAKE_SESSION)


@pytest.fixture
def redis_url() -> str:
    if not REDIS_URL:
        if os.environ.get("CI"):
            pytest.fail("RAILPROOF_TEST_REDIS_URL is unset under CI: Redis tests must run")
        pytest.skip(
            "Redis tests skipped: set RAILPROOF_TEST_REDIS_URL (e.g. redis://127.0.0.1:6379/0)"
        )
    return REDIS_URL


@pytest.fixture
def prefix(redis_url) -> Iterator[str]:
    """A key prefix only this test uses; its keys are deleted afterwards."""
    import redis

    p = "railproof-test-" + uuid.uuid4().hex
    yield p
    r = redis.Redis.from_url(redis_url)
    keys = list(r.scan_iter(match=f"{p}*"))
    if keys:
        r.delete(*keys)
    r.close()


def test_two_limiters_share_one_bucket_and_prefixes_separate_them(redis_url, prefix):
    a = SharedRateLimiter(redis_url, rate=0.01, burst=3, key_prefix=prefix)
    b = SharedRateLimiter(redis_url, rate=0.01, burst=3, key_prefix=prefix)
    a.check("svc:alice", "proofs")
    b.check("svc:alice", "proofs")
    a.check("svc:alice", "proofs")
    with pytest.raises(RateLimited) as e:
        b.check("svc:alice", "proofs")
    # Window 3 / 0.01 = 300 s: the oldest request leaves it in at most 300 s.
    retry = int(e.value.headers["Retry-After"])
    assert 1 <= retry <= 300
    # Other endpoint, other principal, other deployment (prefix): other buckets.
    a.check("svc:alice", "sessions")
    a.check("svc:bob", "proofs")
    other = SharedRateLimiter(redis_url, rate=0.01, burst=3, key_prefix=prefix + "-other")
    other.check("svc:alice", "proofs")


def test_the_shared_window_keeps_the_configured_average_rate():
    # (rate, burst) -> (requests, seconds): the average is the bucket's, not the burst's.
    assert shared_window(20, 40) == (40, 2)  # the defaults
    assert shared_window(20, 10) == (20, 1)  # a burst under the rate: the rate, each second
    assert shared_window(0.7, 1) == (1, 2)  # never above the rate by rounding the window down
    assert shared_window(10 / 60, 10) == (10, 60)  # staff sign-in tries: 10 a minute
    assert shared_window(3, 4) == (6, 2)
    for rate, burst in ((20, 10), (0.7, 1), (3, 4), (0.01, 3), (100, 1)):
        requests, seconds = shared_window(rate, burst)
        assert requests / seconds <= rate + 0.5 / seconds and seconds >= burst / rate


def test_a_steady_rate_under_the_limit_is_never_refused_when_shared(redis_url, prefix):
    # RAILPROOF_RATE_LIMIT_PER_SECOND=20 with a burst of 10: 16 a second, steadily, is within
    # the limit; each process's bucket lets it all through, and so must the shared one.
    local = RateLimiter(rate=20, burst=10)
    shared = SharedRateLimiter(redis_url, rate=20, burst=10, key_prefix=prefix)
    assert _paced(local, 32, 16) == 0
    assert _paced(shared, 32, 16) == 0


def _paced(limiter, n: int, per_second: float) -> int:
    refused, start = 0, time.monotonic()
    for i in range(n):
        time.sleep(max(0.0, start + i / per_second - time.monotonic()))
        try:
            limiter.check("svc:alice", "proofs")
        except RateLimited:
            refused += 1
    return refused


def test_settings_choose_the_store(redis_url, prefix):
    from tests.conftest import make_settings

    local = limiter_from_settings(make_settings("sqlite://"))
    assert type(local) is RateLimiter
    shared = limiter_from_settings(
        make_settings("sqlite://", redis_url=redis_url, redis_key_prefix=prefix)
    )
    assert isinstance(shared, SharedRateLimiter)
    off = limiter_from_settings(
        make_settings("sqlite://", redis_url=redis_url, rate_limit_per_second=0)
    )
    assert not off.take("svc:alice", "proofs")  # 0 turns limiting off, with or without Redis


def _serve(tmp_path, name: str, **settings: str) -> tuple[Api, dict[str, str]]:
    env = base_env(
        database_url=f"sqlite:///{tmp_path}/limits.db",
        chain="cassette",
        clock="2026-01-01T00:00:00Z",
        service_tokens=json.dumps({"svc-token": ["alice"]}),
        treasury_solana_usdc="C1bL1CaQ6PjLKZyYRn11ZtydLqEfGUxdcvUS3frx8ocg",
        rate_limit_per_second="0.01",
        rate_limit_burst="3",
        **settings,
    )
    return Api(env, tmp_path, name=name), env


def _open_session(api: Api) -> httpx.Response:
    with httpx.Client(timeout=10) as c:
        return c.post(
            api.url + "/v1/payment-sessions",
            headers={"Authorization": "Bearer svc-token"},
            json={
                "owner_id": "alice",
                "rail_id": "solana_usdc",
                "access_product_id": "pro",
                "amount": 1000,
            },
        )


def test_two_api_processes_share_one_limit(tmp_path, redis_url, prefix):
    env = base_env(database_url=f"sqlite:///{tmp_path}/limits.db")
    migrate(env)
    one, _ = _serve(tmp_path, "api-1", redis_url=redis_url, redis_key_prefix=prefix)
    two, _ = _serve(tmp_path, "api-2", redis_url=redis_url, redis_key_prefix=prefix)
    try:
        one.wait_ready()
        two.wait_ready()
        answers = [_open_session(api).status_code for api in (one, two, one)]
        assert answers == [201, 201, 201]
        # The burst of 3 is spent across both processes: each refuses the fourth.
        for api in (two, one):
            r = _open_session(api)
            assert r.status_code == 429, r.text
            assert r.json()["error"]["code"] == "rate_limited"
            assert 1 <= int(r.headers["Retry-After"]) <= 300
    finally:
        one.stop()
        two.stop()


def test_without_redis_each_process_limits_on_its_own(tmp_path):
    """The contrast: the same two processes without RAILPROOF_REDIS_URL allow 3 each."""
    env = base_env(database_url=f"sqlite:///{tmp_path}/limits.db")
    migrate(env)
    one, _ = _serve(tmp_path, "api-1")
    two, _ = _serve(tmp_path, "api-2")
    try:
        one.wait_ready()
        two.wait_ready()
        assert [_open_session(one).status_code for _ in range(3)] == [201] * 3
        assert [_open_session(two).status_code for _ in range(3)] == [201] * 3
        assert _open_session(one).status_code == 429
    finally:
        one.stop()
        two.stop()


# -- Redis does not answer -------------------------------------------------------------------


def test_unreachable_redis_falls_back_to_the_local_bucket(client):
    """Never a 500, never unlimited: the process's own bucket decides, and the failure is
    counted for the alert."""
    from prometheus_client.parser import text_string_to_metric_families

    engine = client.app.state.engine
    client.app.state.rate_limiter = SharedRateLimiter(
        f"redis://127.0.0.1:{closed_port()}/0",
        rate=0.01,
        burst=2,
        key_prefix="unreachable",
        metrics=engine.metrics,
    )
    answers = [client.post("/v1/payment-sessions", headers=auth(), json=SESSION) for _ in range(3)]
    assert [r.status_code for r in answers] == [201, 201, 429], [r.text for r in answers]
    assert answers[2].json()["error"]["code"] == "rate_limited"
    assert int(answers[2].headers["Retry-After"]) >= 1
    text = client.get("/metrics").text
    errors = sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "railproof_rate_limit_backend_errors_total"
    )
    # One failure opens the retry period; later checks in it go straight to the local bucket.
    assert errors == 1


def test_redis_is_tried_again_after_the_retry_period(redis_url, prefix):
    now = [0.0]
    rl = SharedRateLimiter(redis_url, rate=0.01, burst=1, key_prefix=prefix, clock=lambda: now[0])
    good_storage = rl.storage
    rl.strategy.storage = SharedRateLimiter(
        f"redis://127.0.0.1:{closed_port()}/0", key_prefix="down"
    ).storage
    assert rl.take("svc:alice", "proofs") == 0  # local bucket (burst 1)
    assert rl.take("svc:alice", "proofs") > 0  # local bucket empty
    rl.strategy.storage = good_storage  # Redis is back...
    assert rl.take("svc:bob", "proofs") == 0  # ...but the retry period still holds: local
    now[0] += 60
    assert rl.take("svc:bob", "proofs") == 0  # Redis again: its bucket for bob was untouched
    assert rl.take("svc:bob", "proofs") > 0  # and now holds bob's request
