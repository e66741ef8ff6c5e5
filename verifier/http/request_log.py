"""One structured log line per HTTP request, and the request id the rest of the request sees.

A pure ASGI middleware (no BaseHTTPMiddleware: bodies stream through untouched). Per request it
logs, on the `railproof.request` logger, one record whose `http_request` attribute holds:

    request_id   X-Request-Id when the caller sent a well-formed one, else a new uuid4 hex
    method       GET, POST, ...
    route        the route template (/v1/admin/proofs/{proof_id}) once routing matched,
                 or, when a guard answered first, would have; else `unmatched`
    status       the response status (500 when the app raised before answering)
    duration_ms  wall time from the first byte in to the last byte out
    principal    staff | service | none: which kind of token, never the token itself
    owner        the service token's owners, or the staff member's name, when known
    incident_id  X-Incident-Id when given

The request id is echoed in the X-Request-Id response header and held in `request_id_var`
for the duration of the request, so anything the request causes (log lines, audit events)
can carry it: `current_request_id()`.

With `metrics`, the same request counts into `railproof_http_requests_total` and
`railproof_http_request_duration_seconds` by route template, method and status. A path no
route matched is counted as route `unmatched` and an unusual method as `other`: label values
come from the code, never from what a caller typed, so a scan cannot grow the series.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.routing import Match

# Defined in core: the log formatter and audit events read it too.
from verifier.core.logs import request_id_var
from verifier.core.metrics import Metrics
from verifier.http.guards import MAX_INCIDENT_ID, header_text

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
# token -> (kind, owner) with kind "staff" or "service"; None for a token nobody holds.
PrincipalOf = Callable[[str], tuple[str, str | None] | None]

REQUEST_ID_HEADER = "X-Request-Id"

# A caller's id is kept only when it cannot forge a log line or smuggle data into one.
_GOOD_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"
CLIENT_GONE = 499  # the status logged and counted for a request its client closed unanswered

log = logging.getLogger("railproof.request")


def current_request_id() -> str | None:
    """The id of the request being served in this context, None outside a request."""
    return request_id_var.get()


def settings_principal(settings: Any) -> PrincipalOf:
    """Classify a bearer token with the API's own settings (staff_name, service_owners)."""

    def principal_of(token: str) -> tuple[str, str | None] | None:
        name = settings.staff_name(token)
        if name is not None:
            return "staff", name
        owners = settings.service_owners(token)
        if owners is not None:
            return "service", ",".join(sorted(owners))
        return None

    return principal_of


def _headers(scope: Scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in scope.get("headers") or []:
        name = k.decode("latin-1").lower()
        if name == "authorization" and name in out:
            # Two Authorization lines are refused (deps.authorization): the request is
            # nobody's, not the first line's principal.
            out[name] = ""
            continue
        out.setdefault(name, v.decode("latin-1"))
    return out


def _template_of(scope: Scope) -> str | None:
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return template if isinstance(template, str) and template else None


def _route_of(scope: Scope) -> str:
    # SECURITY: a path is the caller's text (a token pasted into a URL): what is logged is a
    # route's template (the one the path leads to, when a guard answered before routing), else
    # `unmatched`, as metrics count it.
    template = _template_of(scope)
    if template is None:
        for route in getattr(getattr(scope.get("app"), "router", None), "routes", ()):
            if route.matches(scope)[0] is not Match.NONE:
                template = _template_of({"route": route})
                break
    return template or UNMATCHED


class RequestLogMiddleware:
    """Wrap an ASGI app: `RequestLogMiddleware(app, principal=settings_principal(settings))`
    or `app.add_middleware(RequestLogMiddleware, principal=...)` (added last: outermost, so
    answers of the other middleware are logged too).

    `emit` receives each request's document instead of the logger (tests, other sinks);
    `metrics` counts and times each request (the engine's)."""

    def __init__(
        self,
        app: Any,
        principal: PrincipalOf | None = None,
        emit: Callable[[dict[str, Any]], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        metrics: Metrics | None = None,
    ):
        self.app = app
        self.principal = principal
        self.emit = emit or _log
        self.clock = clock
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = self.clock()
        headers = _headers(scope)
        given = headers.get("x-request-id", "").strip()
        rid = given if _GOOD_ID.fullmatch(given) else uuid.uuid4().hex
        status: list[int] = []
        counted: list[bool] = []

        def count(answered: int) -> None:
            if self.metrics is None or counted:
                return
            counted.append(True)
            try:
                _count(self.metrics, scope, answered, self.clock() - started)
            except Exception:  # a metric never breaks a request
                log.exception("request metric failed")

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
                raw = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"
                ]
                raw.append((b"x-request-id", rid.encode("latin-1")))
                message = {**message, "headers": raw}
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                # Counted before the last byte leaves: a client that has its answer sees the
                # request in the next scrape.
                count(status[0] if status else 500)
            await send(message)

        gone: list[bool] = []

        async def receive_watched() -> dict[str, Any]:
            message: dict[str, Any] = await receive()
            if message["type"] == "http.disconnect":
                gone.append(True)
            return message

        token = request_id_var.set(rid)
        try:
            await self.app(scope, receive_watched, send_with_id)
        finally:
            # No answer: the client hung up first (499, as proxies log it: a client that
            # closes mid-upload is no server error) or the app failed before answering.
            answered = status[0] if status else (CLIENT_GONE if gone else 500)
            try:
                self.emit(self._document(scope, headers, rid, answered, started))
            except Exception:  # a log sink never breaks a request
                log.exception("request log line failed")
            count(answered)  # no body was sent: the app failed before answering
            request_id_var.reset(token)

    def _document(
        self, scope: Scope, headers: Mapping[str, str], rid: str, status: int, started: float
    ) -> dict[str, Any]:
        kind, owner = self._principal(headers.get("authorization"))
        doc: dict[str, Any] = {
            "request_id": rid,
            "method": scope.get("method", ""),
            "route": _route_of(scope),
            "status": status,
            "duration_ms": round((self.clock() - started) * 1000, 3),
            "principal": kind,
        }
        if owner:
            doc["owner"] = owner
        raw = headers.get("x-incident-id", "")
        incident = (header_text(raw) or raw).strip()
        if incident:
            doc["incident_id"] = incident[:MAX_INCIDENT_ID]
        return doc

    def _principal(self, authorization: str | None) -> tuple[str, str | None]:
        if not authorization or not authorization.startswith("Bearer ") or self.principal is None:
            return "none", None
        try:
            found = self.principal(authorization[7:])
        except Exception:
            found = None
        return found if found is not None else ("none", None)


def _count(metrics: Metrics, scope: Scope, status: int, seconds: float) -> None:
    method = str(scope.get("method", ""))
    labels: dict[str, str] = {
        "route": _template_of(scope) or UNMATCHED,
        "method": method if method in _METHODS else "other",
        "status": str(status),
    }
    metrics.inc("http_requests_total", **labels)
    metrics.observe("http_request_duration_seconds", max(0.0, seconds), **labels)


def _log(doc: dict[str, Any]) -> None:
    log.info(
        "%s %s %s %.1fms",
        doc["method"],
        doc["route"],
        doc["status"],
        doc["duration_ms"],
        extra={"http_request": doc},
    )
