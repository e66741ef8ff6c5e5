"""Rate limits on proof submission and session creation, per token principal: a token bucket
per (principal, endpoint), 429 `rate_limited` with `Retry-After`, nothing written."""

from __future__ import annotations

import threading

import pytest

from tests.conftest import OTHER_SERVICE_TOKEN, SERVICE_TOKEN, auth
from tests.helpers import FAKE_SESSION, counts
from verifier.core.config import Settings
from verifier.http.ratelimit import DEFAULT_BURST, DEFAULT_RATE, RateLimited, RateLimiter

SESSION = dict(FAKE_SESSION)


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_bucket_allows_the_burst_then_refills_at_the_rate():
    clock = FakeClock()
    rl = RateLimiter(rate=2, burst=3, clock=clock)
    assert [rl.take("p", "e") for _ in range(3)] == [0, 0, 0]
    wait = rl.take("p", "e")
    assert wait == pytest.approx(0.5)  # one token every 1/rate seconds
    clock.t += 0.5
    assert rl.take("p", "e") == 0
    assert rl.take("p", "e") > 0
    clock.t += 100  # a long pause refills to the burst, never beyond
    assert [rl.take("p", "e") for _ in range(4)].count(0) == 3


def test_buckets_are_per_principal_and_per_endpoint():
    rl = RateLimiter(rate=1, burst=1, clock=FakeClock())
    assert rl.take("a", "POST /v1/proofs") == 0
    assert rl.take("a", "POST /v1/proofs") > 0
    assert rl.take("a", "POST /v1/payment-sessions") == 0
    assert rl.take("b", "POST /v1/proofs") == 0


def test_a_full_table_forgets_the_fullest_buckets_never_the_emptiest(monkeypatch):
    from verifier.http import ratelimit

    monkeypatch.setattr(ratelimit, "MAX_BUCKETS", 10)
    monkeypatch.setattr(ratelimit, "KEEP_ON_OVERFLOW", 6)
    clock = FakeClock()
    rl = RateLimiter(rate=1, burst=3, clock=clock)
    rl.take("refilled", "e")
    clock.t += 10  # back to the burst: as good as missing
    assert [rl.take("locked", "e") for _ in range(3)] == [0, 0, 0]
    assert [rl.take("one left", "e") for _ in range(2)] == [0, 0]
    for i in range(7):
        rl.take(f"fresh-{i}", "e")  # two left each; the table is full
    assert rl.take("new", "e") == 0
    # Down to 6 before the new one: the refilled bucket went first, then three of the fullest.
    assert len(rl._buckets) == 7 and ("refilled", "e") not in rl._buckets
    assert rl.take("locked", "e") > 0
    assert rl.take("one left", "e") == 0 and rl.take("one left", "e") > 0


def test_retry_after_is_whole_seconds_at_least_one():
    rl = RateLimiter(rate=0.25, burst=1, clock=FakeClock())
    rl.check("p", "e")
    with pytest.raises(RateLimited) as e:
        rl.check("p", "e")
    assert e.value.status == 429 and e.value.headers == {"Retry-After": "4"}
    assert e.value.body()["error"]["code"] == "rate_limited"
    fast = RateLimiter(rate=1000, burst=1, clock=FakeClock())
    fast.check("p", "e")
    with pytest.raises(RateLimited) as e:
        fast.check("p", "e")
    assert e.value.headers["Retry-After"] == "1"


def test_bucket_is_thread_safe():
    rl = RateLimiter(rate=0.001, burst=25)  # no refill to speak of during the test
    allowed = []
    lock = threading.Lock()

    def hammer():
        for _ in range(20):
            if rl.take("p", "e") == 0:
                with lock:
                    allowed.append(1)

    threads = [threading.Thread(target=hammer) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(allowed) == 25


def test_zero_rate_turns_limiting_off():
    rl = RateLimiter(rate=0, burst=0)
    assert not rl.enabled
    for _ in range(1000):
        rl.check("p", "e")


def _settings(**values) -> Settings:
    return Settings(env={}, **values)


def test_configuration_defaults_and_overrides():
    d = RateLimiter.from_settings(Settings(env={}))
    assert (d.rate, d.burst) == (DEFAULT_RATE, DEFAULT_BURST) == (20.0, 40)
    c = RateLimiter.from_settings(_settings(rate_limit_per_second=5, rate_limit_burst=7))
    assert (c.rate, c.burst) == (5.0, 7)


def _limit(client, rate=1.0, burst=2) -> FakeClock:
    clock = FakeClock()
    client.app.state.rate_limiter = RateLimiter(rate=rate, burst=burst, clock=clock)
    return clock


def test_session_creation_is_limited_per_token_with_retry_after(client, engine):
    clock = _limit(client)
    for _ in range(2):
        assert client.post("/v1/payment-sessions", headers=auth(), json=SESSION).status_code == 201
    before = counts(engine)
    r = client.post("/v1/payment-sessions", headers=auth(), json=SESSION)
    assert r.status_code == 429
    assert r.headers["Retry-After"] == "1"
    assert r.json()["error"]["code"] == "rate_limited"
    assert counts(engine) == before  # a refused request writes nothing, not even a claim
    # Another token has its own bucket; reads are not limited.
    bob = {**SESSION, "owner_id": "bob"}
    assert (
        client.post("/v1/payment-sessions", headers=auth(OTHER_SERVICE_TOKEN), json=bob).status_code
        == 201
    )
    assert (
        client.get("/v1/entitlements", headers=auth(), params={"owner_id": "alice"}).status_code
        == 200
    )
    clock.t += 1.0
    assert client.post("/v1/payment-sessions", headers=auth(), json=SESSION).status_code == 201


def test_proof_submission_is_limited_separately(client, engine, chain):
    _limit(client, burst=3)
    sess = client.post("/v1/payment-sessions", headers=auth(), json=SESSION).json()
    chain.txs["fx0123abcd"] = {
        "status": "ok",
        "to": "fatreasury",
        "amount": 1500000,
        "asset": "fusd",
        "refs": [sess["reference"]],
    }
    body = {"session_id": sess["id"], "proof": "fx0123abcd"}
    codes = [client.post("/v1/proofs", headers=auth(), json=body).status_code for _ in range(5)]
    assert codes == [201, 200, 200, 429, 429]
    # Idempotent retries count too: a client retrying in a loop is exactly what this stops.
    r = client.post("/v1/proofs", headers={**auth(), "Idempotency-Key": "k1"}, json=body)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1


def test_auth_is_checked_before_the_limit(client):
    _limit(client, burst=1)
    for _ in range(3):
        r = client.post("/v1/proofs", headers=auth("unknown-token"), json={})
        assert r.status_code == 401
    # The unknown token took nothing from the real one's bucket.
    r = client.post(
        "/v1/proofs",
        headers=auth(SERVICE_TOKEN),
        json={"session_id": "nope", "proof": "fx12345678"},
    )
    assert r.status_code == 404
