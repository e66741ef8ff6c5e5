"""Retries and URL failover for the live HTTP transports (EVM JSON-RPC, the Tron HTTP API).

One call, per configured URL in order, within the policy's total time and the caller's
deadline, each URL within its share of the time left (the time left / the URLs left, so a URL
that hangs leaves every other its turn): a `Transient` failure (timeout, connection error,
HTTP 429, 5xx) is retried with exponential backoff and jitter, a URL that is unusable but not
transient (401, 404) is skipped at once, and when every URL failed the call raises
`RpcUnavailable`. A verdict is never retried, only the read of one answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import SplitResult, parse_qsl, quote, unquote, unquote_plus, urlsplit

from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from rails.errors import RpcErrorResponse, RpcUnavailable, TransportError
from rails.transport.rpc_policy import RpcPolicy, call_end, stop_at, time_left

T = TypeVar("T")
# Told of each URL that failed a call: (provider — the URL's scheme://host[:port], never its
# path or query, where providers put API keys — and "transient" | "unusable").
FailureObserver = Callable[[str, str], None]


class Transient(Exception):
    """A failure worth retrying (timeout, connection error, 429, 5xx)."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3  # per URL
    per_url_seconds: float = 10.0  # wall-clock bound per URL, retries included
    total_seconds: float = 25.0  # wall-clock bound across every URL
    initial_wait: float = 0.2
    max_wait: float = 2.0
    jitter: float = 0.2
    timeout: float = 8.0  # one HTTP request

    @classmethod
    def of(cls, policy: RpcPolicy) -> RetryPolicy:
        return cls(
            attempts=policy.attempts,
            per_url_seconds=policy.total_s,
            total_seconds=policy.total_s,
            timeout=policy.timeout_s,
        )


def url_share(left: float, urls_left: int, timeout: float) -> float:
    """One URL's share of the `left` seconds of a call, `urls_left` URLs (this one included)
    still to ask: an equal part, or one request's timeout when that is more (a slow but
    healthy node answers its first try), yet never all that is left while another URL waits
    (one that hangs leaves the others a turn)."""
    floor = min(timeout, left if urls_left <= 1 else left / 2)
    return max(left / urls_left, floor)


def call_with_failover(
    urls: Sequence[str],
    attempt: Callable[[str, float], T],
    policy: RetryPolicy,
    what: str,
    deadline: float | None = None,
    on_failure: FailureObserver | None = None,
) -> T:
    """Call `attempt(url, timeout)` for each URL in order until one answers. `attempt` raises
    `Transient` for what is worth retrying (tenacity: bounded attempts and time, exponential
    backoff with jitter) and anything else to stop at once. Every URL down → RpcUnavailable.
    `timeout` is the policy's request timeout clipped to the time left before `deadline`
    (time.monotonic()) or the policy's total, whichever comes first, and to the URL's share of
    it (the time left / the URLs left); no try starts after it.
    `on_failure(provider, kind)` hears of each URL that failed (provider: scheme://host)."""
    if not urls:
        raise RpcUnavailable(f"{what}: no RPC URL configured")
    end = call_end(policy.total_seconds, deadline)
    failures: list[str] = []

    def bounded(url: str, url_end: float) -> T:
        timeout = min(policy.timeout, time_left(url_end))
        if timeout <= 0:
            raise Transient("time budget spent")
        return attempt(url, timeout)

    for i, url in enumerate(urls):
        left = time_left(end)
        if left <= 0:
            failures.append(f"{provider_of(url)}: not tried (time budget spent)")
            break
        share = url_share(left, len(urls) - i, policy.timeout)
        url_end = time.monotonic() + min(share, policy.per_url_seconds)
        retrying = Retrying(
            stop=stop_after_attempt(policy.attempts) | stop_at(url_end),
            wait=wait_exponential_jitter(
                multiplier=policy.initial_wait, max=policy.max_wait, jitter=policy.jitter
            ),
            retry=retry_if_exception_type(Transient),
            reraise=False,
        )
        try:
            return retrying(bounded, url, url_end)
        except RetryError as e:
            failures.append(f"{provider_of(url)}: {e.last_attempt.exception()}")
            notify(on_failure, url, "transient")
        except RpcUnavailable as e:  # a URL that is unusable but not transient (401, 404)
            failures.append(f"{provider_of(url)}: {e}")
            notify(on_failure, url, "unusable")
    # SECURITY: the message becomes a proof's detail, which its tenant reads: no URL's path,
    # query or credentials in it, whatever the driver's own error text quoted.
    raise RpcUnavailable(scrub(f"{what}: every RPC URL failed: " + "; ".join(failures), urls))


def scrub(text: str, urls: Sequence[str]) -> str:
    """`text` without the parts of `urls` that may hold a key (the path, the query, user
    information), each URL named by its provider; drivers quote the URL they failed on."""
    for url in urls:
        parts = urlsplit(url)
        text = text.replace(url, provider_of(url))
        tail = parts.path + (f"?{parts.query}" if parts.query else "")
        for secret in (tail, parts.query, parts.path, parts.netloc.rpartition("@")[0]):
            if len(secret) > 1:  # never "/" alone
                text = text.replace(secret, "[redacted]")
        # SECURITY: a node may quote the key alone ("invalid api key K"): each path segment,
        # query value and password long enough to be one, as written and decoded.
        for secret in _key_like(parts):
            text = text.replace(secret, "[redacted]")
    return text


# Shorter parts of an RPC URL ("v2", "rpc", "mainnet") are names, not keys.
_KEY_MIN_CHARS = 8


def _key_like(parts: SplitResult) -> list[str]:
    pieces = [
        *parts.path.split("/"),
        *(v for _, v in parse_qsl(parts.query)),  # decoded ("+" a space, "%2b" a "+")
        *(p.partition("=")[2] for p in parts.query.split("&")),  # as written
    ]
    if parts.password:
        pieces.append(parts.password)
    out: set[str] = set()
    for piece in pieces:
        for form in (piece, unquote(piece), unquote_plus(piece), quote(piece, safe="")):
            if len(form) >= _KEY_MIN_CHARS:
                out.add(form)
    # The longest first, so a key is never left half-replaced by a shorter form of it.
    return sorted(out, key=len, reverse=True)


def scrubbed(error: TransportError, urls: Sequence[str]) -> TransportError:
    """`error`, its message and a node's error object scrubbed of `urls`' secrets. Every error a
    transport raises goes through here: a node quoting its own URL (in an HTML error page, a
    JSON-RPC error's message) must not put the key into a proof's detail, which tenants read."""
    error.args = tuple(scrub(a, urls) if isinstance(a, str) else a for a in error.args)
    if isinstance(error, RpcErrorResponse):
        error.error = _scrub_value(error.error, urls)
    return error


def _scrub_value(value: object, urls: Sequence[str]) -> object:
    if isinstance(value, str):
        return scrub(value, urls)
    if isinstance(value, dict):
        return {k: _scrub_value(v, urls) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub_value(v, urls) for v in value]
    return value


def provider_of(url: str) -> str:
    """scheme://host[:port] only: RPC providers put API keys in paths and query strings."""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        # SECURITY: a password with an unescaped '#', '/' or '?' ends the host early and is
        # read as the port: no part of such a URL is named.
        return f"{parts.scheme}://[unreadable URL]"
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"


def notify(observer: FailureObserver | None, url: str, kind: str) -> None:
    if observer is not None:
        observer(provider_of(url), kind)


def classify_http_status(status: int, url: str) -> None:
    """Raise for an HTTP status that is not a usable answer."""
    if status == 429 or status >= 500:
        raise Transient(f"HTTP {status}")
    if status >= 400:
        raise RpcUnavailable(f"{provider_of(url)}: HTTP {status}")
