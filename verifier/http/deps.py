"""Request dependencies, as `Annotated` types routes name in their signatures: the engine,
who is calling (a service token bound to its owners, or a staff member), the
Idempotency-Key header, and per-token rate limits.

Tokens are bearer tokens. `HTTPBearer` is there to declare the scheme in the OpenAPI
document (auto_error off): it reads the scheme case-insensitively and would answer 403 on
its own, while this API accepts exactly `Bearer <token>`, on one header line, and refuses
anything else with 401 `unauthorized` naming the Authorization header.
"""

from __future__ import annotations

import math
from typing import Annotated, NamedTuple

from fastapi import Depends, Header, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from verifier.core.engine import Engine
from verifier.core.errors import BadInput, EngineError, NotFound
from verifier.http.errors import ApiErrorCode, Unauthorized
from verifier.http.guards import (
    MAX_INCIDENT_ID,
    MAX_OPERATOR_REASON,
    control_field,
    header_text,
)
from verifier.http.ratelimit import (
    STAFF_SIGN_IN,
    Limiter,
    RateLimited,
    client_key,
)
from verifier.services import audit, queries
from verifier.services.principals import MAX_PRINCIPAL, principal_name  # noqa: F401

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="A service token (service routes) or a staff token "
    "(/v1/admin routes), as `Authorization: Bearer <token>`",
)


# The dependencies that do no I/O are `async def`: FastAPI runs a plain `def` dependency in
# the thread pool, a hop per dependency per request that costs more than the work itself
# (docs/bench.md, "The HTTP path"). Anything that may block stays `def`.


async def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


EngineDep = Annotated[Engine, Depends(get_engine)]


Scheme = Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]


def authorization(request: Request) -> str | None:
    """The request's Authorization header, or None without one. SECURITY: a singleton field:
    two lines are refused, not read as the first, which a proxy or gateway in front that
    checks another line would read as someone else's credentials than railproof does."""
    return _one_line(request, "Authorization", Unauthorized, ApiErrorCode.unauthorized)


def _one_line(
    request: Request, name: str, refusal: type[EngineError], code: ApiErrorCode
) -> str | None:
    """A singleton header's value (None without one); several lines are refused, naming it."""
    lines = request.headers.getlist(name)
    if len(lines) > 1:
        raise refusal(code, f"{name}: one header line, not several", field=name)
    return lines[0] if lines else None


def _token(request: Request) -> str:
    raw = authorization(request)
    if not raw or not raw.startswith("Bearer ") or not raw[7:]:
        raise Unauthorized(
            ApiErrorCode.unauthorized,
            "Authorization: a Bearer token is required",
            field="Authorization",
        )
    return raw[7:]


async def bearer_token(request: Request, _: Scheme) -> str:
    return _token(request)


Token = Annotated[str, Depends(bearer_token)]


class ServicePrincipal(NamedTuple):
    # A tuple, so a dependency answering (principal, owners) serves the same routes.
    name: str  # keys idempotency claims, rate-limit buckets and webhook endpoints
    owners: list[str]  # the owners this token may act for; any other answers 404


async def service_principal(request: Request, _: Scheme) -> ServicePrincipal:
    # Flat on purpose: FastAPI solves a dependency's whole subtree again wherever it is named
    # (the rate limit and the route both name this one), so each level costs every request.
    engine: Engine = request.app.state.engine
    owners = engine.settings.service_owners(_token(request))
    if owners is None:
        raise Unauthorized(
            ApiErrorCode.unauthorized, "Authorization: unknown service token", field="Authorization"
        )
    return ServicePrincipal(principal_name(owners), owners)


class StaffMember(str):
    """A staff member's name, carrying the X-Incident-Id and X-Operator-Reason its request
    sent (an action's body may give them instead: `staff_operator`)."""

    incident: str | None
    reason: str | None

    def __new__(cls, name: str, incident: str | None, reason: str | None) -> StaffMember:
        member = super().__new__(cls, name)
        member.incident, member.reason = incident, reason
        return member


def staff_operator(actor: str, incident: str | None, reason: str | None) -> audit.Operator:
    """Who did a staff action, and under which incident and reason: the body's, else the
    headers' (declared on every staff operation, so a client may send them either way)."""
    op = audit.Operator(
        actor,
        incident or getattr(actor, "incident", None),
        reason or getattr(actor, "reason", None),
    )
    audit.check_incident_id(op.incident_id)
    return op


def staff_member(
    request: Request,
    engine: EngineDep,
    token: Token,
    incident: Annotated[
        str | None, Header(alias="X-Incident-Id", max_length=MAX_INCIDENT_ID)
    ] = None,
    reason: Annotated[
        str | None, Header(alias="X-Operator-Reason", max_length=MAX_OPERATOR_REASON)
    ] = None,
) -> str:
    name = _staff_signed_in(request, engine, token)
    incident = _utf8(incident, "X-Incident-Id")
    reason = _utf8(reason, "X-Operator-Reason")
    audit.check_incident_id(incident, "X-Incident-Id")
    if request.method == "GET" and (incident or reason):
        queries.record_staff_read(engine, name, incident, reason, request.url.path)
    return StaffMember(name, incident, reason)


def _staff_signed_in(request: Request, engine: Engine, token: str) -> str:
    """The staff member `token` names. SECURITY: guessing staff tokens is bounded per client
    address as the console's sign-in is, and counted with it: past the bound every staff
    request from there is refused, a right token too, so neither door tells a right guess;
    but the token of a staff member listed in RAILPROOF_STAFF_LOCKOUT_EXEMPT (each checked
    at start to read as random: no guessing finds it) still passes, so that whoever
    shares the operators' address cannot keep the kill switch out of their reach. Only
    unknown tokens count (a tenant's or the scraper's token is no guess): a staff member's
    own requests never use the bound up. A refusal at a locked address asks the limiter
    nothing more, whatever the token: a store round trip only an unknown token cost would
    tell, by the answer's speed, a token on a list from a wrong guess, at any rate."""
    limiter: Limiter = request.app.state.login_limiter
    client = client_key(request.client.host if request.client else None)
    wait = limiter.waiting(client, STAFF_SIGN_IN)
    # Every list is read for every token, so the work done before answering is the same.
    name = engine.settings.staff_name(token)
    known = engine.settings.known_token(token)
    exempt = engine.settings.lockout_exempt(token)
    if wait <= 0 and not known:
        wait = limiter.take(client, STAFF_SIGN_IN)  # > 0 only when tries came at once
    if wait > 0 and not exempt:
        raise RateLimited("staff sign-in", max(1, math.ceil(wait)))
    if name is None:
        raise Unauthorized(
            ApiErrorCode.unauthorized, "Authorization: unknown staff token", field="Authorization"
        )
    return name


def _utf8(value: str | None, header: str) -> str | None:
    if value is None:
        return None
    text = header_text(value)
    if text is None:
        raise BadInput(ApiErrorCode.invalid_request, f"{header}: must be UTF-8 text", field=header)
    return text


ServiceDep = Annotated[ServicePrincipal, Depends(service_principal)]
StaffDep = Annotated[str, Depends(staff_member)]
KeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="Same key and body: the stored answer again, as first answered (marked "
        "Idempotent-Replayed: true); same key, other body: 409 idempotency_conflict. 1 to 256 "
        "printable ASCII characters, no comma; one header line.",
    ),
]


async def idempotency_key(request: Request, _: KeyHeader = None) -> str | None:
    """The request's Idempotency-Key. A singleton field: two lines (a client's default
    header and a per-call one, or a proxy's) are refused rather than joined into one key,
    which a retry carrying only one of them would not match (the work would run again)."""
    return _one_line(request, "Idempotency-Key", BadInput, ApiErrorCode.invalid_idempotency_key)


IdempotencyKey = Annotated[str | None, Depends(idempotency_key)]
# A response header: the answer is one stored under the request's Idempotency-Key before.
REPLAYED = "Idempotent-Replayed"
REPLAYED_HEADER = {
    REPLAYED: {
        "schema": {"type": "string", "enum": ["true"]},
        "description": "Present on an answer stored under this Idempotency-Key by an earlier "
        "request and given again as it was then; read the resource's state now with GET.",
    }
}


class RateLimit:
    """A route dependency: one token from the caller's bucket for `endpoint`, or 429. It
    needs the principal, so 401 comes before 429 (and the principal is resolved once)."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint

    async def __call__(self, request: Request, svc: ServiceDep) -> None:
        limiter = request.app.state.rate_limiter
        if limiter.blocks:  # a shared store answers over the network
            await run_in_threadpool(limiter.check, svc.name, self.endpoint)
        else:
            limiter.check(svc.name, self.endpoint)


def acting_for(
    engine: Engine, svc: ServicePrincipal, owner_id: str, reason: str, field: str | None = None
) -> None:
    """404 `owner_not_found` (an owner-isolation denial) unless the token acts for owner_id."""
    if owner_id not in svc.owners:
        engine.metrics.inc("owner_isolation_denials_total", reason=reason)
        raise NotFound(
            ApiErrorCode.owner_not_found,
            f"owner_id: {owner_id!r} is not an owner this token acts for",
            field=field,
        )


async def clean_path_params(request: Request) -> None:
    # Ids never hold control characters, and PostgreSQL text cannot hold NUL (%00). Run by
    # every route, before auth, once the route has matched (see guards.py).
    field = control_field(request.path_params)
    if field is not None:
        raise BadInput(
            ApiErrorCode.invalid_request,
            f"{field}: must not contain control characters",
            field=field,
        )
