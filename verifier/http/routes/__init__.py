"""One router per resource. Routes are thin: parse the request, call one service function,
answer its dict validated by the route's Out model (verifier.http.models)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from verifier.core import inline
from verifier.core.engine import Engine
from verifier.http.deps import REPLAYED, REPLAYED_HEADER
from verifier.http.errors import error_responses
from verifier.services import audit, idempotency


class Router(APIRouter):
    """An APIRouter whose routes answer exactly the keys the service produced, validated by
    the response model: an optional key the service left out (a Solana settlement has no
    block_number) stays out instead of coming back as null."""

    def add_api_route(self, path: str, endpoint: Any, **kwargs: Any) -> None:
        kwargs["response_model_exclude_unset"] = True
        super().add_api_route(path, endpoint, **kwargs)


def service_router(*tags: str) -> Router:
    # Errors every service route can answer: auth, malformed input, failures.
    return Router(tags=list(tags), responses=error_responses(401, 422, 500, 503))


def staff_router(*tags: str) -> Router:
    return Router(
        prefix="/v1/admin", tags=list(tags), responses=error_responses(401, 422, 429, 500, 503)
    )


def reply(status_body: tuple[int, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    """An answer whose status the service decided (201 created, 200 the same again). One
    stored under an Idempotency-Key and given again says so (Idempotent-Replayed: true): it
    is the first answer as it was, so a client can tell it from the resource's state now."""
    status, body = status_body
    if isinstance(status_body, idempotency.Answer) and status_body.replayed:
        headers = {**(headers or {}), REPLAYED: "true"}
    return JSONResponse(body, status_code=status, headers=headers)


def replayable(
    responses: dict[int | str, dict[str, Any]], *statuses: int
) -> dict[int | str, dict[str, Any]]:
    """`responses` with Idempotent-Replayed declared on `statuses`: those an Idempotency-Key
    stores (the route's successes, and a 409 raised after its side effects)."""
    out = {status: dict(entry) for status, entry in responses.items()}
    for status in statuses:
        entry = out.setdefault(status, {})
        entry["headers"] = {**entry.get("headers", {}), **REPLAYED_HEADER}
    return out


T = TypeVar("T")


async def run_service(engine: Engine, call: Callable[[], T]) -> T:
    """A submission-path route's service call: on the event loop's thread on SQLite, on a pool
    thread in one of the engine's work slots on PostgreSQL (core.inline). The route itself is
    `async def`."""
    return await inline.run(call, engine.work_on_loop, engine.work_slots)


def with_context(op: audit.Operator) -> audit.Operator:
    """Every staff action that changes state names its incident and reason (the audit row
    holds both); blank is missing, invisible characters counting as blank."""
    audit.require_context(op, "for every staff action that changes state")
    return op


_ROUTE_OPTIONS = (
    "response_model",
    "status_code",
    "tags",
    "dependencies",
    "summary",
    "description",
    "response_description",
    "responses",
    "deprecated",
    "name",
    "methods",
    "operation_id",
    "response_model_include",
    "response_model_exclude",
    "response_model_by_alias",
    "response_model_exclude_unset",
    "response_model_exclude_defaults",
    "response_model_exclude_none",
    "include_in_schema",
    "response_class",
    "callbacks",
    "openapi_extra",
)


def mount(target: APIRouter, router: APIRouter) -> None:
    """Register the router's routes on `target` itself (the app's router, or one built like
    it). This FastAPI includes a router as one opaque route, so `app.routes` would no longer
    list the API's operations, and the tests that hold every operation to its scope, its
    security and its response model walk that list. Each route keeps its router's prefix,
    tags, responses and dependencies, after the target's own (clean_path_params)."""
    for route in router.routes:
        if not isinstance(route, APIRoute):
            raise TypeError(f"{route!r}: only API routes are mounted")
        target.add_api_route(
            route.path, route.endpoint, **{k: getattr(route, k) for k in _ROUTE_OPTIONS}
        )
