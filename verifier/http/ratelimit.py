"""Per-token rate limits on the endpoints that write: proof submission and session creation.

A token bucket per (token principal, endpoint): `rate` tokens a second refill it up to
`burst`; a request takes one token or is refused with 429 `rate_limited` and a `Retry-After`
header saying, in whole seconds, when one token will be back. Buckets live in the process:
with several API processes each enforces its own limit, so the effective limit is
processes × rate — a guard against one client flooding the verifier (and, through it, the
RPC nodes), not a billing quota.

Only authenticated callers are limited (the bucket key is the principal the token resolves
to); an unknown token is refused with 401 before any bucket is touched, so guessing tokens
cannot fill the table.

Configuration: RAILPROOF_RATE_LIMIT_PER_SECOND (default 20; 0 turns limiting off) and
RAILPROOF_RATE_LIMIT_BURST (default 40), Settings fields.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from verifier.core.errors import EngineError
from verifier.http.errors import ApiErrorCode

DEFAULT_RATE = 20.0
DEFAULT_BURST = 40
MAX_BUCKETS = 100_000  # principals are configured tokens, so this is never reached in practice


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


class RateLimiter:
    """Thread-safe token buckets; `clock` is injectable so tests need not sleep."""

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
                    self._buckets.clear()  # forget everyone rather than grow without bound
                b = self._buckets[key] = _Bucket(float(self.burst), now)
            else:
                b.tokens = min(float(self.burst), b.tokens + (now - b.at) * self.rate)
                b.at = now
            if b.tokens >= 1.0:
                b.tokens -= 1.0
                return 0.0
            return (1.0 - b.tokens) / self.rate

    def check(self, principal: str, endpoint: str) -> None:
        """Raise RateLimited (429, Retry-After) when the caller's bucket is empty."""
        wait = self.take(principal, endpoint)
        if wait > 0:
            raise RateLimited(endpoint, max(1, math.ceil(wait)))

    @classmethod
    def from_settings(cls, settings: Any) -> RateLimiter:
        return cls(rate=settings.rate_limit_per_second, burst=settings.rate_limit_burst)
