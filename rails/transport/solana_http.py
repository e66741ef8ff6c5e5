"""Live Solana JSON-RPC transport: one pooled keep-alive HTTP client per URL, called from the
caller's own thread, with bounded tenacity retries and URL failover.

The transport returns the JSON-RPC `result` member untouched, exactly what a cassette holds,
so the adapter parses live and recorded answers with the same code.

One round trip per verification. `SolanaAdapter.verify` asks `getTransaction`, then — when
every check passed — `getSignatureStatuses` for the same signature. A `getTransaction` call
goes out as one JSON-RPC batch with that status request; the status answer is kept for the
calling thread and answers the adapter's status call that follows without another round trip.
The adapter sees the same two calls, params and results as on a cassette, so live and recorded
chains decide with the same code. A kept answer serves only the next call on the same thread,
for the same signature, within PREFETCH_TTL_S; any other call drops it. (Why a batch rather
than `getTransaction` at `finalized` with a `confirmed` fallback: docs/bench.md, "Live RPC
path".)

The chain libraries: solana 0.41 ships no synchronous client, so requests are built with
solders' request types (the batch) or solana-py's `JsonRpcRequest` (any other call), and
answers are read with solana-py's `JsonRpcResponseEnvelope`, which keeps `result` as the node's
JSON (solders' typed responses would re-shape it, and a cassette holds it as the node sent it).
They travel over one urllib3 keep-alive pool per URL, shared by every thread and used from the
caller's own: no event loop, no hop to another thread. (httpx2, solana-py's own HTTP stack,
costs twice urllib3's CPU per request, measured in docs/bench.md.)

What happens to one call, per configured URL in order, all within the policy's total time
(and the caller's deadline, when it gives one), each URL within its share of the time left
(the time left / the URLs left, so a URL that hangs leaves every other its turn):

    timeout, connection error, HTTP 429, HTTP 5xx  → retried (exponential backoff with full
                                                     jitter, bounded attempts AND bounded time),
                                                     then the next URL
    any other HTTP status (401, 403, 404 …)        → the next URL at once (a misconfigured URL)
    JSON-RPC error object                          → RpcErrorResponse (the node answered)
    a body that is not a JSON-RPC response         → MalformedResponse
    every URL failed                               → RpcUnavailable

    a batch refused (answered by one object, or    → the call is re-sent alone at once; a URL
      by an HTTP client error)                       that then answers gets no more batches
    one half of a batch is an error object         → that call raises RpcErrorResponse, as it
                                                     would have alone (pending, never failed)

A verdict is never retried: only the read of one answer is. Each request's timeout is the
policy's, clipped to the time left, so a node that accepts and never answers costs no more
than the call's budget.
"""

from __future__ import annotations

import itertools
import threading
import time
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import urllib3
from pydantic import TypeAdapter, ValidationError
from solana.rpc.jsonrpc import JsonRpcRequest, JsonRpcResponseEnvelope
from solders.commitment_config import CommitmentLevel
from solders.rpc.config import RpcSignatureStatusConfig, RpcTransactionConfig
from solders.rpc.requests import GetSignatureStatuses, GetTransaction
from solders.signature import Signature
from solders.transaction_status import UiTransactionEncoding
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from rails.errors import MalformedResponse, RpcErrorResponse, RpcUnavailable, TransportError
from rails.transport import heads
from rails.transport.bodies import AnswerTooSlow, read_bounded, urllib3_chunks
from rails.transport.failover import FailureObserver, notify, provider_of, scrubbed, url_share
from rails.transport.rpc_policy import RpcPolicy, call_end, stop_at, time_left

# How long a status answer fetched with its transaction may answer the status call that
# follows it. The adapter asks within microseconds; this only stops a kept answer from ever
# serving a later, unrelated question.
PREFETCH_TTL_S = 2.0
# The status request sent with a transaction: the adapter's own (rails.solana.STATUS_OPTIONS).
# Another shape of status call is simply sent on its own.
STATUS_OPTIONS = {"searchTransactionHistory": True}
_STATUS_CONFIG = RpcSignatureStatusConfig(search_transaction_history=True)
_HEADERS = {"Content-Type": "application/json"}
_ENCODINGS = {
    "jsonParsed": UiTransactionEncoding.JsonParsed,
    "json": UiTransactionEncoding.Json,
    "base64": UiTransactionEncoding.Base64,
    "base58": UiTransactionEncoding.Base58,
}
_COMMITMENTS = {
    "processed": CommitmentLevel.Processed,
    "confirmed": CommitmentLevel.Confirmed,
    "finalized": CommitmentLevel.Finalized,
}
# solders writes both of these (null when unset) and `commitment` only when set.
_TX_KEYS = frozenset({"encoding", "maxSupportedTransactionVersion"})
_TX_KEYS_ALL = _TX_KEYS | {"commitment"}
_BATCH_ANSWER = TypeAdapter(list[JsonRpcResponseEnvelope])
# Keep-alive connections kept per URL. Connections open only as threads ask at once; one past
# this is closed after its request (and urllib3 warns), so it is sized above the API's threads.
POOL_SIZE = 64


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds for one call: at most `attempts` tries per URL, each URL within its share of the
    time left, and `total_seconds` of trying across every URL; no request outlives either."""

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


class _BatchRefused(Exception):
    """The URL did not take a batch; the same call may still be sent alone."""


redact_url = provider_of  # what logs and errors name of a URL


@dataclass(frozen=True)
class _Kept:
    """A status answer fetched in the same batch as its transaction."""

    signature: str
    expires: float  # time.monotonic()
    answer: JsonRpcResponseEnvelope


@dataclass(frozen=True)
class _Pair:
    """A getTransaction call that solders' request types express exactly as asked."""

    signature: Signature
    text: str
    config: RpcTransactionConfig


@lru_cache(maxsize=64)
def _tx_config(encoding: str, version: int | None, commitment: str | None) -> RpcTransactionConfig:
    return RpcTransactionConfig(
        encoding=_ENCODINGS[encoding],
        max_supported_transaction_version=version,
        commitment=_COMMITMENTS[commitment] if commitment is not None else None,
    )


def _pairable(method: str, params: list[Any]) -> _Pair | None:
    """The getTransaction calls that can carry their status request along: those whose params
    solders serializes back to exactly what was asked (so the node sees the caller's params)."""
    if method != "getTransaction" or len(params) != 2:
        return None
    sig, opts = params
    if not isinstance(sig, str) or not isinstance(opts, dict):
        return None
    if not (_TX_KEYS <= opts.keys() <= _TX_KEYS_ALL):
        return None
    encoding = opts["encoding"]
    version = opts["maxSupportedTransactionVersion"]
    commitment = opts.get("commitment")
    if (
        encoding not in _ENCODINGS
        or not (version is None or (type(version) is int and version >= 0))
        or ("commitment" in opts and commitment not in _COMMITMENTS)
    ):
        return None
    try:
        signature = Signature.from_string(sig)
    except ValueError:
        return None  # the node will say so, alone
    return _Pair(signature, sig, _tx_config(encoding, version, commitment))


def _unwrap(answer: JsonRpcResponseEnvelope, method: str) -> Any:
    if answer.error is not None:
        e = answer.error
        raise RpcErrorResponse(method, {"code": e.code, "message": e.message, "data": e.data})
    return answer.result


class SolanaRpcTransport:
    source = "live"
    honours_deadline = True

    def __init__(
        self,
        urls: list[str],
        network: str,
        policy: RetryPolicy | None = None,
        *,
        batch_status: bool = True,
    ):
        """`batch_status=False` sends every call alone (two round trips per verification)."""
        if not urls:
            raise ValueError(f"no RPC URL configured for {network}")
        self.urls = list(urls)
        self.network = network
        self.policy = policy or RetryPolicy()
        self.batch_status = batch_status
        self.attempts = 0  # HTTP requests sent (round trips), for metrics and tests
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._endpoints: dict[str, _Endpoint] = {}
        self._unbatched: set[str] = set()  # URLs that refused a batch and answered alone
        self._local = threading.local()

    # -- the Transport seam -----------------------------------------------------------------------

    def call(self, method: str, params: list[Any], deadline: float | None = None) -> Any:
        """`deadline` (time.monotonic()): the caller's own bound, on top of the policy's."""
        try:
            return self._call(method, params, deadline)
        except TransportError as e:
            raise scrubbed(e, self.urls) from None

    def _call(self, method: str, params: list[Any], deadline: float | None) -> Any:
        kept: _Kept | None = getattr(self._local, "kept", None)
        if kept is not None:
            self._local.kept = None  # whatever this call is, a kept answer serves it or nobody
            if (
                method == "getSignatureStatuses"
                and len(params) == 2
                and params[0] == [kept.signature]
                and params[1] == STATUS_OPTIONS
                and time.monotonic() < kept.expires
            ):
                return _unwrap(kept.answer, method)
        end = call_end(self.policy.total_seconds, deadline)
        failures: list[str] = []
        for i, url in enumerate(self.urls):
            left = time_left(end)
            if left <= 0:
                failures.append(f"{redact_url(url)}: not tried (time budget spent)")
                break
            url_end = time.monotonic() + url_share(left, len(self.urls) - i, self.policy.timeout)
            try:
                return self._call_url(url, method, params, url_end)
            except (_Transient, _UrlUnusable) as e:
                failures.append(f"{redact_url(url)}: {e}")
                notify(
                    self.on_failure, url, "transient" if isinstance(e, _Transient) else "unusable"
                )
        raise RpcUnavailable(f"{method}: every RPC URL failed ({'; '.join(failures)})")

    on_failure: FailureObserver | None = None  # set by the deployment (provider metrics)

    def set_failure_observer(self, observer: FailureObserver) -> None:
        self.on_failure = observer

    def set_policy(self, policy: RpcPolicy) -> None:
        """The deployment's bounds for this network (settings), set before the first call."""
        self.policy = RetryPolicy.of(policy)

    def close(self) -> None:
        with self._lock:
            endpoints, self._endpoints = list(self._endpoints.values()), {}
        for endpoint in endpoints:
            endpoint.close()

    def __enter__(self) -> SolanaRpcTransport:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- one URL, with retries ------------------------------------------------------------------

    def _retrying(self, end: float) -> Retrying:
        p = self.policy
        return Retrying(
            retry=retry_if_exception_type(_Transient),
            stop=stop_after_attempt(p.attempts) | stop_at(end),
            wait=wait_random_exponential(multiplier=p.backoff_initial, max=p.backoff_max),
            reraise=True,
        )

    def _call_url(self, url: str, method: str, params: list[Any], end: float) -> Any:
        pair = _pairable(method, params) if self.batch_status else None
        try:
            if pair is not None and url not in self._unbatched:
                try:
                    return _unwrap(self._retrying(end)(self._pair_once, url, pair, end), method)
                except _BatchRefused:
                    answer = self._retrying(end)(self._single_once, url, method, params, end)
                    with self._lock:
                        self._unbatched.add(url)  # it answers alone: no more batches to it
                    return _unwrap(answer, method)
            return _unwrap(self._retrying(end)(self._single_once, url, method, params, end), method)
        except RetryError as e:  # only when reraise cannot apply; keep the last cause
            raise _Transient(str(e.last_attempt.exception())) from e

    def _single_once(
        self, url: str, method: str, params: list[Any], end: float
    ) -> JsonRpcResponseEnvelope:
        with self._lock:
            request_id = next(self._ids)
        body = JsonRpcRequest(method=method, params=params, id=request_id).to_json()
        content = self._post(url, body.encode(), end, batch=False)
        try:
            answer = JsonRpcResponseEnvelope.model_validate_json(content)
        except ValidationError as e:
            raise MalformedResponse(
                f"{method}: the answer of {redact_url(url)} is not a JSON-RPC response"
            ) from e
        # SECURITY: an answer under another id is another request's (a proxy mixing answers
        # up): its statuses would settle this call's signatures. Batches check theirs too.
        if answer.id != request_id:
            raise MalformedResponse(
                f"{method}: {redact_url(url)} answered id {answer.id!r:.40}, asked {request_id}"
            )
        return answer

    def _pair_once(self, url: str, pair: _Pair, end: float) -> JsonRpcResponseEnvelope:
        with self._lock:
            tx_id, status_id = next(self._ids), next(self._ids)
        tx = GetTransaction(pair.signature, pair.config, tx_id)
        status = GetSignatureStatuses([pair.signature], _STATUS_CONFIG, status_id)
        # A batch is the JSON array of the requests, each serialized by solders.
        # (solders.rpc.requests.batch_to_json writes the same bytes but takes ~65 µs a call in
        # solders 0.29, a tenth of a verification's CPU budget; to_json takes under 1 µs.)
        body = f"[{tx.to_json()},{status.to_json()}]".encode()
        content = self._post(url, body, end, batch=True)
        try:
            answers = _BATCH_ANSWER.validate_json(content)
        except ValidationError as e:
            if content.lstrip()[:1] == b"{":
                # One object for a batch: a node or proxy that does not take batches.
                raise _BatchRefused("answered a batch with one object") from e
            raise MalformedResponse(
                f"getTransaction: the answer of {redact_url(url)} is not a JSON-RPC response"
            ) from e
        by_id = {a.id: a for a in answers}
        # SECURITY: one answer per request asked. An id twice, or one not asked, is another
        # request's answer (a proxy mixing answers up); which of two wins is only position.
        if len(by_id) != len(answers) or not by_id.keys() <= {tx_id, status_id}:
            raise MalformedResponse(
                f"getTransaction: the batch answer of {redact_url(url)} repeats an id or "
                "answers one not asked"
            )
        tx_answer = by_id.get(tx_id)
        if tx_answer is None:
            raise MalformedResponse(
                f"getTransaction: the batch answer of {redact_url(url)} has no answer for it"
            )
        status_answer = by_id.get(status_id)
        # Kept only beside a transaction the node gave; a missing status goes out on its own.
        if status_answer is not None and tx_answer.error is None:
            self._local.kept = _Kept(pair.text, time.monotonic() + PREFETCH_TTL_S, status_answer)
        return tx_answer

    def _post(self, url: str, body: bytes, end: float, *, batch: bool) -> bytes:
        timeout = min(self.policy.timeout, time_left(end))
        if timeout <= 0:
            raise _Transient("time budget spent")
        with self._lock:
            self.attempts += 1
        try:
            response = self._endpoint(url).post(body, timeout)
            code = response.status
            if 200 <= code < 300:
                # SECURITY: within the call's time and a size: a node trickling its answer
                # or sending a compression bomb holds nothing (rails.transport.bodies).
                try:
                    answer = read_bounded(
                        urllib3_chunks(response),
                        min(end, time.monotonic() + timeout),
                        provider_of(url),
                    )
                except BaseException as e:
                    response.close()  # cut off mid-answer: the connection serves no other
                    if isinstance(e, AnswerTooSlow):
                        raise _Transient(str(e)) from e
                    raise
                response.release_conn()
                return answer
            response.close()  # an error's body is not read (it may trickle too)
        except urllib3.exceptions.TimeoutError as e:  # connect or read
            raise _Transient(f"timeout ({type(e).__name__})") from e
        except (
            urllib3.exceptions.ProtocolError,  # dropped, reset, refused mid-request
            urllib3.exceptions.SSLError,
            urllib3.exceptions.ProxyError,
            OSError,
        ) as e:
            raise _Transient(f"connection failed ({type(e).__name__})") from e
        except urllib3.exceptions.HTTPError as e:
            raise _UrlUnusable(f"HTTP client error ({type(e).__name__})") from e
        if code == 429 or code >= 500:
            raise _Transient(f"HTTP {code}")
        if batch and 400 <= code < 500:
            raise _BatchRefused(f"HTTP {code}")
        raise _UrlUnusable(f"HTTP {code}")

    def _endpoint(self, url: str) -> _Endpoint:
        endpoint = self._endpoints.get(url)
        if endpoint is None:
            with self._lock:
                endpoint = self._endpoints.get(url)
                if endpoint is None:
                    try:
                        endpoint = self._endpoints[url] = _Endpoint(url)
                    except ValueError:  # urllib's message quotes what it took for the port
                        raise _UrlUnusable("not a URL that can be read") from None
        return endpoint


class _Endpoint:
    """One RPC URL: a keep-alive connection pool shared by every thread (urllib3, whose sockets
    set TCP_NODELAY, so a request's body never waits for the ACK of its head). The proxy named
    by HTTP(S)_PROXY is used unless NO_PROXY exempts the host, as the ecosystem's clients do."""

    def __init__(self, url: str):
        parts = urlsplit(url)
        self.headers = dict(_HEADERS)
        if parts.username is not None:  # user:password@host, as HTTP clients take it
            auth = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self.headers.update(urllib3.util.make_headers(basic_auth=auth))
        host = parts.hostname or ""
        netloc = host if parts.port is None else f"{host}:{parts.port}"
        # The URL without its credentials (they travel in the header).
        self.url = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        proxy = urllib.request.getproxies_environment().get(parts.scheme)
        if proxy and not urllib.request.proxy_bypass(host):
            self.manager: urllib3.PoolManager = urllib3.ProxyManager(proxy, maxsize=POOL_SIZE)
        else:
            self.manager = urllib3.PoolManager(maxsize=POOL_SIZE)
        # SECURITY: the answer's head within the request's timeout, as a whole (a node
        # trickling its status line or headers holds nothing): rails.transport.heads.
        self.manager.pool_classes_by_scheme = heads.POOL_CLASSES
        self.pool = (
            None
            if isinstance(self.manager, urllib3.ProxyManager)
            else self.manager.connection_from_url(self.url)
        )
        self.path = urlunsplit(("", "", parts.path or "/", parts.query, ""))

    def post(self, body: bytes, timeout: float) -> urllib3.BaseHTTPResponse:
        # retries=False: the one retry policy is the transport's own (tenacity).
        bounds = heads.request_timeout(timeout)
        if self.pool is not None:
            return self.pool.urlopen(
                "POST", self.path, body=body, headers=self.headers,
                retries=False, redirect=False, timeout=bounds, preload_content=False,
            )  # fmt: skip
        return self.manager.urlopen(
            "POST", self.url, body=body, headers=self.headers,
            retries=False, redirect=False, timeout=bounds, preload_content=False,
        )  # fmt: skip

    def close(self) -> None:
        self.manager.clear()
