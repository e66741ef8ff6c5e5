"""How long and how often a live transport asks a network, and the deadline a caller may add.

`RpcPolicy` is what a deployment configures per network (RAILPROOF_RPC_TIMEOUT_S,
RAILPROOF_RPC_ATTEMPTS, RAILPROOF_RPC_TOTAL_S, each also per network); every live transport
turns it into its own retry parameters (`set_policy`).

A deadline (a `time.monotonic()` instant) bounds one call further: a submission verifies
within a short budget and a live transport honours it — each request's timeout is clipped to
the time left and no retry starts past it. A transport that does so declares
`honours_deadline = True` and takes `call(method, params, deadline=None)`.
"""

from __future__ import annotations

import time

from pydantic import BaseModel, ConfigDict, Field
from tenacity import RetryCallState
from tenacity.stop import stop_base

# The longest a bound may be: an hour already holds a submission (or a worker's sweep) for
# far too long, and a far larger one overflows the socket's own timeout.
MAX_RPC_S = 3600.0


class RpcPolicy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    timeout_s: float = Field(default=8.0, gt=0, le=MAX_RPC_S)  # one HTTP request
    attempts: int = Field(default=3, ge=1, le=100)  # tries per URL
    total_s: float = Field(default=20.0, gt=0, le=MAX_RPC_S)  # one call: every try on every URL


def call_end(total_s: float, deadline: float | None) -> float:
    """When one call must be over: its own total time, or the caller's deadline if sooner."""
    end = time.monotonic() + total_s
    return end if deadline is None else min(end, deadline)


def time_left(end: float) -> float:
    return end - time.monotonic()


class stop_at(stop_base):  # lower case, like tenacity's own stop conditions
    """A tenacity stop condition: no retry whose backoff would begin it past `end`
    (tenacity computes the upcoming sleep before it asks the stop condition)."""

    def __init__(self, end: float) -> None:
        self.end = end

    def __call__(self, retry_state: RetryCallState) -> bool:
        return time.monotonic() + (retry_state.upcoming_sleep or 0.0) >= self.end
