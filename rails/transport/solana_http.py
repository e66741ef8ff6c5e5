"""Live Solana JSON-RPC transport: solana-py's AsyncClient (solana 0.41 ships no synchronous
client) driven from synchronous code, with bounded tenacity retries and URL failover.

The transport returns the JSON-RPC `result` member untouched, exactly what a cassette holds,
so the adapter parses live and recorded answers with the same code.

What happens to one call, per configured URL in order, all within the policy's total time
(and the caller's deadline, when it gives one):

    timeout, connection error, HTTP 429, HTTP 5xx  → retried (exponential backoff with full
                                                     jitter, bounded attempts AND bounded time),
                                                     then the next URL
    any other HTTP status (401, 403, 404 …)        → the next URL at once (a misconfigured URL)
    JSON-RPC error object                          → RpcErrorResponse (the node answered)
    a body that is not a JSON-RPC response         → MalformedResponse
    every URL failed                               → RpcUnavailable

A verdict is never retried: only the read of one answer is. Each request's timeout is the
policy's, clipped to the time left, so a node that accepts and never answers costs no more
than the call's budget.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx2
from pydantic import ValidationError
from solana.exceptions import SolanaRpcException
from solana.rpc.async_api import AsyncClient
from solana.rpc.jsonrpc import JsonRpcRequest, SolanaJsonRpcError
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from rails.errors import MalformedResponse, RpcErrorResponse, RpcUnavailable
from rails.transport.rpc_policy import RpcPolicy, call_end, stop_at, time_left


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds for one call: at most `attempts` tries per URL and `total_seconds` of trying
    across every URL; no request outlives either."""

    attempts: int = 4
    timeout: float = 8.0  # per HTTP request
    total_seconds: float = 20.0
    backoff_initial: float = 0.25
    backoff_max: float = 2.0

    @classmethod
    def of(cls, policy: RpcPolicy) -> RetryPolicy:
        return cls(attempts=policy.attempts, timeout=policy.timeout_s, total_seconds=policy.total_s)


class _Transient(Exception):
    """Worth another try on the same URL."""


class _UrlUnusable(Exception):
    """Not worth another try on this URL, but another URL may answer."""


def redact_url(url: str) -> str:
    """scheme://host[:port] only: RPC providers put API keys in paths and query strings."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"


class _LoopThread:
    """One private event loop on a daemon thread. The AsyncClients (and their connection
    pools) live on it, so callers from any thread share them without binding a pool to a
    short-lived loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="solana-rpc-loop", daemon=True
        )
        self.thread.start()

    def run(self, coro: Any, timeout: float) -> Any:
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except TimeoutError:
            fut.cancel()
            raise

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()


class SolanaRpcTransport:
    source = "live"
    honours_deadline = True

    def __init__(self, urls: list[str], network: str, policy: RetryPolicy | None = None):
        if not urls:
            raise ValueError(f"no RPC URL configured for {network}")
        self.urls = list(urls)
        self.network = network
        self.policy = policy or RetryPolicy()
        self.attempts = 0  # HTTP requests sent, for metrics and tests
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._loop: _LoopThread | None = None
        self._clients: dict[str, AsyncClient] = {}

    # -- the Transport seam -----------------------------------------------------------------------

    def call(self, method: str, params: list[Any], deadline: float | None = None) -> Any:
        """`deadline` (time.monotonic()): the caller's own bound, on top of the policy's."""
        end = call_end(self.policy.total_seconds, deadline)
        failures: list[str] = []
        for url in self.urls:
            if time_left(end) <= 0:
                failures.append(f"{redact_url(url)}: not tried (time budget spent)")
                break
            try:
                return self._call_url(url, method, params, end)
            except (_Transient, _UrlUnusable) as e:
                failures.append(f"{redact_url(url)}: {e}")
        raise RpcUnavailable(f"{method}: every RPC URL failed ({'; '.join(failures)})")

    def set_policy(self, policy: RpcPolicy) -> None:
        """The deployment's bounds for this network (settings), set before the first call."""
        self.policy = RetryPolicy.of(policy)

    def close(self) -> None:
        with self._lock:
            loop, clients = self._loop, list(self._clients.values())
            self._loop, self._clients = None, {}
        if loop is not None:
            for client in clients:
                try:
                    loop.run(client.close(), timeout=5)
                except Exception:  # closing is best effort; the loop goes away next
                    pass
            loop.stop()

    def __enter__(self) -> SolanaRpcTransport:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- one URL, with retries ------------------------------------------------------------------

    def _call_url(self, url: str, method: str, params: list[Any], end: float) -> Any:
        p = self.policy
        retrying = Retrying(
            retry=retry_if_exception_type(_Transient),
            stop=stop_after_attempt(p.attempts) | stop_at(end),
            wait=wait_random_exponential(multiplier=p.backoff_initial, max=p.backoff_max),
            reraise=True,
        )
        try:
            return retrying(self._once, url, method, params, end)
        except RetryError as e:  # only when reraise cannot apply; keep the last cause
            raise _Transient(str(e.last_attempt.exception())) from e

    def _once(self, url: str, method: str, params: list[Any], end: float) -> Any:
        timeout = min(self.policy.timeout, time_left(end))
        if timeout <= 0:
            raise _Transient("time budget spent")
        with self._lock:
            self.attempts += 1
            request_id = next(self._ids)
        request = JsonRpcRequest(method=method, params=params, id=request_id)
        try:
            # The loop-side timeout is a backstop; the request's own wait_for fires first.
            return self._loop_thread().run(self._send(url, request, timeout), timeout=timeout + 2)
        except SolanaRpcException as e:
            raise _classify_http(e.__cause__) from e
        except SolanaJsonRpcError as e:
            raise RpcErrorResponse(
                method, {"code": e.code, "message": e.message, "data": e.data}
            ) from e
        except (ValidationError, ValueError) as e:
            raise MalformedResponse(
                f"{method}: the answer of {redact_url(url)} is not a JSON-RPC response"
            ) from e
        except TimeoutError as e:
            raise _Transient(f"no answer within {timeout:.3g}s") from e

    async def _send(self, url: str, request: JsonRpcRequest, timeout: float) -> Any:
        client = self._clients.get(url)
        if client is None:
            # Created on the loop that will use it; solana-py's own transport retry is off so
            # that the one retry policy above is the only one.
            client = AsyncClient(
                url, timeout=self.policy.timeout, http2=False, max_transport_retries=0
            )
            self._clients[url] = client
        # The client's timeout applies to each read; this bounds the whole request, clipped
        # to the time the call has left.
        return await asyncio.wait_for(client.send_rpc_request(request, Any), timeout)

    def _loop_thread(self) -> _LoopThread:
        with self._lock:
            if self._loop is None:
                self._loop = _LoopThread()
            return self._loop


def _classify_http(cause: BaseException | None) -> Exception:
    if isinstance(cause, httpx2.HTTPStatusError):
        code = cause.response.status_code
        if code == 429 or code >= 500:
            return _Transient(f"HTTP {code}")
        return _UrlUnusable(f"HTTP {code}")
    if isinstance(cause, httpx2.TimeoutException):
        return _Transient(f"timeout ({type(cause).__name__})")
    if isinstance(cause, httpx2.TransportError):
        return _Transient(f"connection failed ({type(cause).__name__})")
    return _UrlUnusable(f"HTTP client error ({type(cause).__name__})")
