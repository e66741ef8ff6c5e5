"""Per-token rate limits on the endpoints that write: proof submission and session creation.

A bucket per (token principal, endpoint): a request takes one token or is refused with 429
`rate_limited` and a `Retry-After` header saying, in whole seconds, when one is back — a
guard against one client flooding the verifier (and, through it, the RPC nodes), not a
billing quota.

Where the buckets live:

- in the process (the default): a token bucket, `rate` tokens a second up to `burst`. With
  several API processes each enforces its own limit, so the effective limit is
  processes × rate.
- in Redis, when RAILPROOF_REDIS_URL is set: every API process shares one limit per token
  and endpoint, kept by the `limits` library as a moving window of `burst / rate` seconds
  (rounded up to whole seconds, at least one) holding `rate` requests a second of it
  (`shared_window`: the defaults give 40 per 2 s, the same average and burst as the bucket;
  a burst under the rate gives the rate per second, so the average is kept, not the
  burst). Keys start with RAILPROOF_REDIS_KEY_PREFIX.

Redis unreachable: the request is decided by the process's own bucket (fail to local, never
open and never closed). Refusing every payment because a cache is down would turn a Redis
outage into a payments outage; waving everything through would remove the flood guard
exactly when something is already wrong. Each failure is counted
(`railproof_rate_limit_backend_errors_total`, alert RailproofRateLimitStoreDown) and logged
once per outage; Redis is tried again after `RETRY_SHARED_S`, so an outage costs each process
at most one short connect timeout per retry period, not one per request.

Only authenticated callers are limited (the bucket key is the principal the token resolves
to); an unknown token is refused with 401 before any bucket is touched, so guessing tokens
cannot fill the table.

Configuration: RAILPROOF_RATE_LIMIT_PER_SECOND (default 20; 0 turns limiting off),
RAILPROOF_RATE_LIMIT_BURST (default 40), RAILPROOF_REDIS_URL, RAILPROOF_REDIS_KEY_PREFIX.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from limits import RateLimitItemPerSecond
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from verifier.core.errors import EngineError
from verifier.core.metrics import Metrics
from verifier.http.errors import ApiErrorCode

log = logging.getLogger("railproof.ratelimit")

DEFAULT_RATE = 20.0
DEFAULT_BURST = 40
# The buckets a process keeps. The API's are per configured token, far fewer; the staff
# sign-in's are per client address, which the caller picks: a full table drops the buckets
# that matter least (`_make_room`), never a locked address's.
MAX_BUCKETS = 100_000
KEEP_ON_OVERFLOW = MAX_BUCKETS * 3 // 4  # room for many new buckets before the next pass
REDIS_TIMEOUT_S = 0.25  # a limit check must never hold a request for long
RETRY_SHARED_S = 5.0  # after a Redis failure, local buckets decide for this long


class RateLimited(EngineError):
    status = 429

    def __init__(self, endpoint: str, retry_after: int):
        super().__init__(
            ApiErrorCode.rate_limited,
            f"too many requests to {endpoint}; retry after {retry_after} s",
            extra={"retry_after": retry_after},
        )
        self.headers = {"Retry-After": str(retry_after)}


@dataclass
class _Bucket:
    tokens: float
    at: float


class Limiter(ABC):
    """What the routes call: `check(principal, endpoint)`, raising 429 when the bucket is
    empty. Subclasses say how long until a token is back (`take`)."""

    blocks = False  # True: a check waits on the network, so callers run it off the event loop

    @abstractmethod
    def take(self, principal: str, endpoint: str) -> float: ...

    @abstractmethod
    def waiting(self, principal: str, endpoint: str) -> float:
        """Seconds until a try would pass (0: it would now), taking nothing."""

    def check(self, principal: str, endpoint: str) -> None:
        """Raise RateLimited (429, Retry-After) when the caller's bucket is empty."""
        wait = self.take(principal, endpoint)
        if wait > 0:
            raise RateLimited(endpoint, max(1, math.ceil(wait)))


class RateLimiter(Limiter):
    """Thread-safe token buckets in the process; `clock` is injectable so tests need not
    sleep."""

    def __init__(
        self,
        rate: float = DEFAULT_RATE,
        burst: int = DEFAULT_BURST,
        clock: Callable[[], float] = time.monotonic,
    ):
        if burst < 1 and rate > 0:
            raise ValueError("rate limit burst must be at least 1")
        self.rate = float(rate)
        self.burst = int(burst)
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], _Bucket] = {}

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, principal: str, endpoint: str) -> float:
        """Take one token; returns 0 when allowed, else the seconds until one is back."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        key = (principal, endpoint)
        with self._lock:
            b = self._buckets.get(key)
            if b is None:
                if len(self._buckets) >= MAX_BUCKETS:
                    self._make_room(now)
                b = self._buckets[key] = _Bucket(float(self.burst), now)
            else:
                b.tokens = min(float(self.burst), b.tokens + (now - b.at) * self.rate)
                b.at = now
            if b.tokens >= 1.0:
                b.tokens -= 1.0
                return 0.0
            return (1.0 - b.tokens) / self.rate

    def _make_room(self, now: float) -> None:
        """Shrink a full table to KEEP_ON_OVERFLOW buckets (called holding the lock), once per
        that many new ones. SECURITY: forgetting every bucket would let tries from enough
        fresh addresses (an IPv6 /47 is 100,000 /64s) unlock every locked one at once.
        First go the buckets that refilled to the burst, as good as missing; then the
        fullest: the emptiest, the addresses the bound holds back, stay."""
        levels = [
            (min(float(self.burst), b.tokens + (now - b.at) * self.rate), key)
            for key, b in self._buckets.items()
        ]
        drop = [key for tokens, key in levels if tokens >= self.burst]
        if len(levels) - len(drop) > KEEP_ON_OVERFLOW:
            rest = sorted((lv for lv in levels if lv[0] < self.burst), key=lambda lv: lv[0])
            drop += [key for _, key in rest[KEEP_ON_OVERFLOW:]]
        for key in drop:
            del self._buckets[key]

    def waiting(self, principal: str, endpoint: str) -> float:
        if not self.enabled:
            return 0.0
        with self._lock:
            b = self._buckets.get((principal, endpoint))
            if b is None:
                return 0.0
            tokens = min(float(self.burst), b.tokens + (self._clock() - b.at) * self.rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    @classmethod
    def from_settings(cls, settings: Any) -> RateLimiter:
        return cls(rate=settings.rate_limit_per_second, burst=settings.rate_limit_burst)


class SharedRateLimiter(Limiter):
    """One limit per (principal, endpoint) for every API process, in Redis (`limits`'
    moving window). `local` decides while Redis does not answer."""

    blocks = True  # a check waits on the network: callers run it off the event loop

    def __init__(
        self,
        url: str,
        rate: float = DEFAULT_RATE,
        burst: int = DEFAULT_BURST,
        key_prefix: str = "railproof",
        local: RateLimiter | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.rate = float(rate)
        self.local = local or RateLimiter(rate, burst, clock)
        self.metrics = metrics
        self._clock = clock
        self._down_until = 0.0
        self._down = False
        # Storage errors come wrapped as limits.errors.StorageError; the timeouts bound a
        # check against a Redis that accepts connections and then hangs.
        self.storage = RedisStorage(
            url,
            key_prefix=f"{key_prefix}:ratelimit",
            wrap_exceptions=True,
            socket_timeout=REDIS_TIMEOUT_S,
            socket_connect_timeout=REDIS_TIMEOUT_S,
        )
        self.strategy = MovingWindowRateLimiter(self.storage)
        self.item = RateLimitItemPerSecond(*shared_window(self.rate, burst))

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, principal: str, endpoint: str) -> float:
        if not self.enabled:
            return 0.0
        if self._clock() < self._down_until:
            return self.local.take(principal, endpoint)
        try:
            if self.strategy.hit(self.item, principal, endpoint):
                wait = 0.0
            else:
                reset = self.strategy.get_window_stats(self.item, principal, endpoint).reset_time
                wait = max(reset - time.time(), 0.001)
        except Exception as e:  # any failure of the store: the local bucket decides
            return self._store_failed(e, principal, endpoint)
        if self._down:
            self._down = False
            log.warning("rate-limit store answers again: limits are shared")
        return wait

    def waiting(self, principal: str, endpoint: str) -> float:
        if not self.enabled:
            return 0.0
        if self._clock() < self._down_until:
            return self.local.waiting(principal, endpoint)
        try:
            if self.strategy.test(self.item, principal, endpoint):
                return 0.0
            reset = self.strategy.get_window_stats(self.item, principal, endpoint).reset_time
            return max(reset - time.time(), 0.001)
        except Exception as e:  # any failure of the store: the local bucket decides
            self._store_failed(e, principal, endpoint, take=False)
            return self.local.waiting(principal, endpoint)

    def _store_failed(
        self, e: Exception, principal: str, endpoint: str, take: bool = True
    ) -> float:
        self._down_until = self._clock() + RETRY_SHARED_S
        if self.metrics is not None:
            self.metrics.inc("rate_limit_backend_errors_total")
        if not self._down:
            self._down = True
            # The type only: a driver message can carry the URL and its password.
            log.warning(
                "rate-limit store unreachable (%s): each process limits on its own",
                type(e).__name__,
            )
        return self.local.take(principal, endpoint) if take else 0.0


def shared_window(rate: float, burst: int) -> tuple[int, int]:
    """The moving window (requests, whole seconds) that keeps the bucket's average `rate`:
    at least `burst / rate` seconds long, holding `rate` × its length (rounded to a whole
    request). A window of `burst` requests alone would cut the rate when the burst is under
    it (20/s with a burst of 10 was 10 a second), or raise it past `rate` when rounding
    shortened the window (0.7/s with a burst of 1 was 1 a second)."""
    if rate <= 0:
        return max(1, int(burst)), 1
    window = max(1, math.ceil(burst / rate - 1e-9))
    return max(1, round(rate * window)), window


# The bucket of staff-token tries, per client address: console sign-ins and staff API
# requests with an unknown token take from it (one count for both doors).
STAFF_SIGN_IN = "console_login"


def client_key(host: str | None) -> str:
    """Whom a sign-in limit counts: the client's address, an IPv6 one by its /64 (one host is
    routinely given a whole /64, and would otherwise have 2^64 fresh buckets)."""
    if not host:
        return "unknown"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def login_limiter_from_settings(settings: Any, metrics: Metrics | None = None) -> Limiter:
    """The console's logins per client address: RAILPROOF_CONSOLE_LOGINS_PER_MINUTE a
    minute, all of them at once at most; shared through Redis like the API's limits."""
    per_minute = settings.console_logins_per_minute
    local = RateLimiter(rate=per_minute / 60.0, burst=max(1, per_minute))
    if not settings.redis_url or not local.enabled:
        return local
    return SharedRateLimiter(
        settings.redis_url,
        rate=per_minute / 60.0,
        burst=per_minute,
        key_prefix=settings.redis_key_prefix,
        local=local,
        metrics=metrics,
    )


def limiter_from_settings(settings: Any, metrics: Metrics | None = None) -> Limiter:
    """Redis-shared limits when RAILPROOF_REDIS_URL is set, else the process's own."""
    local = RateLimiter.from_settings(settings)
    url = getattr(settings, "redis_url", None)
    if not url or not local.enabled:
        return local
    return SharedRateLimiter(
        url,
        rate=settings.rate_limit_per_second,
        burst=settings.rate_limit_burst,
        key_prefix=settings.redis_key_prefix,
        local=local,
        metrics=metrics,
    )
