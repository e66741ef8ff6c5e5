"""The service API of railproof, as a backend uses it: open a payment session, submit the
payer's proof, read both back, read an owner's entitlements, and ask whether the server is
alive and ready.

Every POST carries an Idempotency-Key: one per logical call (made here unless the caller
passes its own), reused on every retry of that call, so a retry after a lost answer gets the
stored answer instead of a second session. Retries are bounded and only for answers that may
change by asking again: 409 `idempotency_in_progress`, 429 and 5xx (waiting what Retry-After
says, else exponential backoff with jitter), and connections that failed or timed out. A
Retry-After longer than `max_wait` is raised at once, as is any other error: an `ApiError`
carrying the API's code, message and field.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, Self, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from railproof_client.errors import (
    ApiError,
    ConnectionFailed,
    UnexpectedResponse,
    api_error,
)
from railproof_client.models import (
    Entitlement,
    ErrorDetail,
    Health,
    OpenSessionRequest,
    Proof,
    Readiness,
    Session,
    SubmitProofRequest,
)

log = logging.getLogger("railproof_client")
T = TypeVar("T")

VERSION = "0.1.0"
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MAX_ATTEMPTS = 4
DEFAULT_MAX_WAIT_S = 30.0
MAX_IDEMPOTENCY_KEY = 256  # the server's bound
# Failures after which the request may not have reached the server, or its answer was lost:
# safe to send again because the Idempotency-Key makes a repeated POST answer the first one.
# A body that cannot be decoded (a proxy's corrupt gzip) is as good as lost on the way: a retry
# with the same Idempotency-Key gets the stored answer.
_TRANSIENT_TRANSPORT = (
    httpx.NetworkError,
    httpx.TimeoutException,
    httpx.RemoteProtocolError,
    httpx.DecodingError,
)
_ENTITLEMENTS: TypeAdapter[list[Entitlement]] = TypeAdapter(list[Entitlement])


def new_idempotency_key() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class _Call(Generic[T]):
    """One logical call: the same request (and Idempotency-Key) on every attempt."""

    method: str
    path: str
    parse: Callable[[Any], T]
    body: dict[str, Any] | None = None
    params: dict[str, str] | None = None
    idempotency_key: str | None = None
    # Error statuses whose body is the answer itself (GET /readyz's 503 report).
    answers: frozenset[int] = field(default_factory=frozenset)

    def headers(self) -> dict[str, str]:
        return {"Idempotency-Key": self.idempotency_key} if self.idempotency_key else {}


def _post(path: str, parse: Callable[[Any], T], body: BaseModel, key: str | None) -> _Call[T]:
    # The server's rule, said before sending: httpx would fail on a non-ASCII header value
    # with a UnicodeEncodeError naming no field.
    if key and not (
        len(key) <= MAX_IDEMPOTENCY_KEY and key.isascii() and key.isprintable() and "," not in key
    ):
        raise ValueError(
            f"idempotency_key: 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters, no comma"
        )
    return _Call(
        "POST",
        path,
        parse,
        body=body.model_dump(mode="json"),
        idempotency_key=key or new_idempotency_key(),
    )


def _open_session(req: OpenSessionRequest, key: str | None) -> _Call[Session]:
    return _post("/v1/payment-sessions", Session.model_validate, req, key)


def _get_session(session_id: str) -> _Call[Session]:
    path = f"/v1/payment-sessions/{_segment(session_id, 'session_id')}"
    return _Call("GET", path, Session.model_validate)


def _submit_proof(req: SubmitProofRequest, key: str | None) -> _Call[Proof]:
    return _post("/v1/proofs", Proof.model_validate, req, key)


def _get_proof(proof_id: str) -> _Call[Proof]:
    return _Call("GET", f"/v1/proofs/{_segment(proof_id, 'proof_id')}", Proof.model_validate)


def _list_entitlements(
    owner_id: str, limit: int | None, after: str | None
) -> _Call[list[Entitlement]]:
    params = {"owner_id": _text(owner_id, "owner_id")}
    if limit is not None:
        params["limit"] = str(limit)
    if after is not None:
        params["after"] = _text(after, "after")
    return _Call("GET", "/v1/entitlements", _ENTITLEMENTS.validate_python, params=params)


def _health() -> _Call[Health]:
    return _Call("GET", "/healthz", Health.model_validate)


def _readiness() -> _Call[Readiness]:
    return _Call("GET", "/readyz", Readiness.model_validate, answers=frozenset({503}))


def _text(value: str, name: str) -> str:
    """`value`, refused (naming it) when it cannot be sent: a lone surrogate has no UTF-8."""
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ValueError(f"{name}: not valid text (a lone surrogate)") from None
    return value


def _segment(value: str, name: str) -> str:
    # An id is one path segment: "../x" or "a/b" must not reach another route. An id made of
    # dots alone is a dot segment to URL resolution (removed with the one before it): its
    # dots go percent-encoded, which no resolution removes.
    quoted = quote(_text(value, name), safe="")
    return quoted.replace(".", "%2E") if quoted in (".", "..") else quoted


def _retry_after(response: httpx.Response, error: ErrorDetail) -> float | None:
    raw = response.headers.get("Retry-After")
    if raw:
        raw = raw.strip()
        if raw.isdigit():
            return float(raw)
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            when = None
        if when is not None:
            return max(0.0, (when - datetime.now(UTC)).total_seconds())
    return float(error.retry_after) if error.retry_after is not None else None


def _error(response: httpx.Response) -> ApiError:
    try:
        error = ErrorDetail.model_validate(response.json()["error"])
    except (ValueError, KeyError, TypeError, ValidationError):
        # Not the API's error body (a proxy's page, say): keep the status and the start of it.
        message = response.text[:200] or response.reason_phrase
        error = ErrorDetail(code="http_error", message=message)
    return api_error(response.status_code, error, _retry_after(response, error))


def _result(call: _Call[T], response: httpx.Response) -> T:
    if not (response.is_success or response.status_code in call.answers):
        raise _error(response)
    try:
        return call.parse(response.json())
    except (ValueError, ValidationError) as e:
        raise UnexpectedResponse(
            f"{call.method} {call.path}: the {response.status_code} answer is not its model: {e}",
            response.status_code,
        ) from e


def _connection_failed(
    call: _Call[Any], e: httpx.TransportError | httpx.DecodingError
) -> ConnectionFailed:
    """The failure as this client reports it. httpx quotes what it refused to send (a
    LocalProtocolError names the header value: the bearer token) and a URL it could not use, so
    only a network failure's own words (the OS's) are kept, and only it stays the cause."""
    network = isinstance(e, httpx.NetworkError | httpx.TimeoutException | httpx.DecodingError)
    said = f": {e}" if network else " (the request could not be sent as built)"
    failed = ConnectionFailed(
        f"{call.method} {call.path}: {type(e).__name__}{said}",
        retryable=isinstance(e, _TRANSIENT_TRANSPORT),
    )
    failed.__cause__ = e if network else None
    return failed


class _Base:
    def __init__(self, max_attempts: int, max_wait: float):
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.max_attempts = max_attempts
        self.max_wait = max_wait
        self._backoff = wait_exponential(multiplier=0.5, max=max_wait) + wait_random(0, 0.5)

    def _should_retry(self, exc: BaseException) -> bool:
        if not (isinstance(exc, ApiError | ConnectionFailed) and exc.retryable):
            return False
        # A server asking for a longer pause than this client waits gets none of its retries.
        return not (isinstance(exc, ApiError) and (exc.retry_after or 0) > self.max_wait)

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, ApiError) and exc.retry_after is not None:
            return exc.retry_after
        return min(self._backoff(state), self.max_wait)

    def _retry_options(self) -> dict[str, Any]:
        return {
            "stop": stop_after_attempt(self.max_attempts),
            "wait": self._wait,
            "retry": retry_if_exception(self._should_retry),
            "reraise": True,  # the last attempt's own error, not tenacity's RetryError
            "before_sleep": _log_retry,
        }


def _public(url: httpx.URL) -> str:
    """The base URL as a repr may show it: no user information, no query (a password or a
    gateway's key rides there)."""
    return str(url.copy_with(username=None, password=None, query=None))


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    wait = state.next_action.sleep if state.next_action else 0.0
    log.warning("attempt %d failed (%s); retry in %.1fs", state.attempt_number, exc, wait)


def _headers(token: str) -> dict[str, str]:
    # A token read from a file keeps its newline, which no header may carry: said here, once,
    # without the token (httpx's own refusal quotes the header whole).
    if not (isinstance(token, str) and token and token.isascii() and token.isprintable()):
        raise ValueError(
            "token: must be printable ASCII, without line breaks (a token read from a file "
            "keeps its trailing newline: strip it)"
        )
    if token != token.strip():
        raise ValueError("token: has spaces around it (strip it)")
    return {
        "Authorization": f"Bearer {token}",
        "Accept": "application/json",
        "User-Agent": f"railproof-client/{VERSION}",
    }


class RailproofClient(_Base):
    """Synchronous client. `transport` replaces the network (tests: httpx.MockTransport);
    `sleep` is how retries wait."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        max_wait: float = DEFAULT_MAX_WAIT_S,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        super().__init__(max_attempts, max_wait)
        self._http = httpx.Client(
            base_url=base_url, headers=_headers(token), timeout=timeout, transport=transport
        )
        self._sleep = sleep

    def __repr__(self) -> str:  # never the token
        return f"RailproofClient({_public(self._http.base_url)!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open_session(
        self,
        *,
        owner_id: str,
        rail_id: str,
        access_product_id: str,
        amount: int,
        reference: str | None = "auto",
        memo: str | None = None,
        payer: str | None = None,
        recipient: str | None = None,
        expires_in_seconds: int | None = None,
        idempotency_key: str | None = None,
    ) -> Session:
        """POST /v1/payment-sessions. `amount` in base units (1.50 USDC is 1500000)."""
        req = OpenSessionRequest(
            owner_id=owner_id,
            rail_id=rail_id,
            access_product_id=access_product_id,
            amount=amount,
            reference=reference,
            memo=memo,
            payer=payer,
            recipient=recipient,
            expires_in_seconds=expires_in_seconds,
        )
        return self._run(_open_session(req, idempotency_key))

    def get_session(self, session_id: str) -> Session:
        return self._run(_get_session(session_id))

    def submit_proof(
        self,
        *,
        session_id: str,
        proof: str | dict[str, Any],
        proof_type: str | None = None,
        idempotency_key: str | None = None,
    ) -> Proof:
        """POST /v1/proofs. A proof that fails verification is an answer (status "failed",
        `failure_code`); a transfer the API refuses to take is a ConflictError."""
        req = SubmitProofRequest(session_id=session_id, proof=proof, proof_type=proof_type)
        return self._run(_submit_proof(req, idempotency_key))

    def get_proof(self, proof_id: str) -> Proof:
        return self._run(_get_proof(proof_id))

    def list_entitlements(
        self, owner_id: str, limit: int | None = None, after: str | None = None
    ) -> list[Entitlement]:
        """A page (at most `limit`, 1,000 by default), oldest first; pass the last one's id
        as `after` for the next."""
        return self._run(_list_entitlements(owner_id, limit, after))

    def health(self) -> Health:
        return self._run(_health())

    def readiness(self) -> Readiness:
        """GET /readyz: the report, ready or not (a 503 is returned, not raised)."""
        return self._run(_readiness())

    def _run(self, call: _Call[T]) -> T:
        retrying = Retrying(sleep=self._sleep, **self._retry_options())
        result: T = retrying(self._send, call)
        return result

    def _send(self, call: _Call[T]) -> T:
        try:
            response = self._http.request(
                call.method, call.path, json=call.body, params=call.params, headers=call.headers()
            )
        except (httpx.TransportError, httpx.DecodingError) as e:
            failed = _connection_failed(call, e)
        else:
            return _result(call, response)
        raise failed  # outside the except: httpx's error is no implicit context either


class AsyncRailproofClient(_Base):
    """The same calls for asyncio."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        max_wait: float = DEFAULT_MAX_WAIT_S,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ):
        super().__init__(max_attempts, max_wait)
        self._http = httpx.AsyncClient(
            base_url=base_url, headers=_headers(token), timeout=timeout, transport=transport
        )
        self._sleep = sleep

    def __repr__(self) -> str:  # never the token
        return f"AsyncRailproofClient({_public(self._http.base_url)!r})"

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def open_session(
        self,
        *,
        owner_id: str,
        rail_id: str,
        access_product_id: str,
        amount: int,
        reference: str | None = "auto",
        memo: str | None = None,
        payer: str | None = None,
        recipient: str | None = None,
        expires_in_seconds: int | None = None,
        idempotency_key: str | None = None,
    ) -> Session:
        req = OpenSessionRequest(
            owner_id=owner_id,
            rail_id=rail_id,
            access_product_id=access_product_id,
            amount=amount,
            reference=reference,
            memo=memo,
            payer=payer,
            recipient=recipient,
            expires_in_seconds=expires_in_seconds,
        )
        return await self._run(_open_session(req, idempotency_key))

    async def get_session(self, session_id: str) -> Session:
        return await self._run(_get_session(session_id))

    async def submit_proof(
        self,
        *,
        session_id: str,
        proof: str | dict[str, Any],
        proof_type: str | None = None,
        idempotency_key: str | None = None,
    ) -> Proof:
        req = SubmitProofRequest(session_id=session_id, proof=proof, proof_type=proof_type)
        return await self._run(_submit_proof(req, idempotency_key))

    async def get_proof(self, proof_id: str) -> Proof:
        return await self._run(_get_proof(proof_id))

    async def list_entitlements(
        self, owner_id: str, limit: int | None = None, after: str | None = None
    ) -> list[Entitlement]:
        return await self._run(_list_entitlements(owner_id, limit, after))

    async def health(self) -> Health:
        return await self._run(_health())

    async def readiness(self) -> Readiness:
        return await self._run(_readiness())

    async def _run(self, call: _Call[T]) -> T:
        retrying = AsyncRetrying(sleep=self._sleep, **self._retry_options())
        result: T = await retrying(self._send, call)
        return result

    async def _send(self, call: _Call[T]) -> T:
        try:
            response = await self._http.request(
                call.method, call.path, json=call.body, params=call.params, headers=call.headers()
            )
        except (httpx.TransportError, httpx.DecodingError) as e:
            failed = _connection_failed(call, e)
        else:
            return _result(call, response)
        raise failed  # outside the except: httpx's error is no implicit context either


# The operations this client covers, as (method, path) of the OpenAPI document, with the
# model of the body each one sends and the model of its answer.
OPERATIONS: Mapping[tuple[str, str], tuple[type[BaseModel] | None, type[BaseModel]]] = {
    ("post", "/v1/payment-sessions"): (OpenSessionRequest, Session),
    ("get", "/v1/payment-sessions/{session_id}"): (None, Session),
    ("post", "/v1/proofs"): (SubmitProofRequest, Proof),
    ("get", "/v1/proofs/{proof_id}"): (None, Proof),
    ("get", "/v1/entitlements"): (None, Entitlement),
    ("get", "/healthz"): (None, Health),
    ("get", "/readyz"): (None, Readiness),
}
