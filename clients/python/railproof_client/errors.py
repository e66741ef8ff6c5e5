"""Everything the client raises:

    RailproofError
     ├── ApiError                 the API answered {"error": {code, message, field?}}
     │    ├── InvalidRequestError   400, 413, 422 — `field` names the field at fault
     │    ├── AuthenticationError   401, 403
     │    ├── NotFoundError         404 (also: not one of this token's owners)
     │    ├── ConflictError         409 (idempotency, a refused transfer, ...)
     │    ├── RateLimitedError      429
     │    └── ServerError           5xx
     ├── ConnectionFailed         no answer (connect, read or write failed, timed out, bad URL)
     ├── UnexpectedResponse       an answer that is not the documented body
     └── WebhookVerificationError a delivery whose signature, timestamp or body does not hold

Retryable failures (409 `idempotency_in_progress`, 429, 5xx, ConnectionFailed) are raised only
after the client's bounded retries are spent.
"""

from __future__ import annotations

from typing import Any

from railproof_client.models import ErrorDetail


class RailproofError(Exception):
    pass


class ApiError(RailproofError):
    def __init__(self, status_code: int, error: ErrorDetail, retry_after: float | None = None):
        super().__init__(f"{status_code} {error.code}: {error.message}")
        self.status_code = status_code
        self.error = error
        # Seconds the server asked to wait (Retry-After header, else the body's retry_after).
        self.retry_after = retry_after

    @property
    def code(self) -> str:
        return self.error.code

    @property
    def message(self) -> str:
        return self.error.message

    @property
    def field(self) -> str | None:
        return self.error.field

    @property
    def details(self) -> dict[str, Any]:
        return self.error.model_dump(exclude_none=True)

    @property
    def retryable(self) -> bool:
        """Whether asking again, with the same Idempotency-Key, may succeed."""
        if self.status_code == 409:
            return self.code == "idempotency_in_progress"
        return self.status_code == 429 or self.status_code >= 500


class InvalidRequestError(ApiError):
    pass


class AuthenticationError(ApiError):
    pass


class NotFoundError(ApiError):
    pass


class ConflictError(ApiError):
    pass


class RateLimitedError(ApiError):
    pass


class ServerError(ApiError):
    pass


class ConnectionFailed(RailproofError):
    def __init__(self, message: str, retryable: bool):
        super().__init__(message)
        # False for a request that cannot work by repeating it (a malformed URL, say).
        self.retryable = retryable


class UnexpectedResponse(RailproofError):
    def __init__(self, message: str, status_code: int | None = None):
        super().__init__(message)
        self.status_code = status_code


class WebhookVerificationError(RailproofError):
    pass


_BY_STATUS: dict[int, type[ApiError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFoundError,
    409: ConflictError,
    413: InvalidRequestError,
    422: InvalidRequestError,
    429: RateLimitedError,
}


def api_error(status_code: int, error: ErrorDetail, retry_after: float | None) -> ApiError:
    cls = _BY_STATUS.get(status_code, ServerError if status_code >= 500 else ApiError)
    return cls(status_code, error, retry_after)
