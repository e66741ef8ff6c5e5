"""Webhooks: endpoints per service token, and the staff dead-letter queue.

Service (bearer service token):
  POST   /v1/webhook-endpoints        {url, event_types} → 201, the signing secret shown once
                                      (and again to a retry with the same Idempotency-Key
                                      while it is the endpoint's secret)
  GET    /v1/webhook-endpoints        this token's active endpoints (never the secret)
  POST   /v1/webhook-endpoints/{id}/rotate-secret   a new signing secret, shown once (and
                                      again to a retry with the same Idempotency-Key
                                      while it is the endpoint's secret)
  DELETE /v1/webhook-endpoints/{id}   404 for another token's endpoint (owner isolation)
Staff (bearer staff token):
  GET  /v1/admin/webhook-events?status=&limit=    deliveries (event × endpoint)
  GET  /v1/admin/webhook-events/{id}              an event (or delivery id) with its deliveries
  POST /v1/admin/webhook-events/{id}/replay       {confirm: true, reason, incident_id?}
"""

# No `from __future__ import annotations`: FastAPI must resolve the route signatures'
# Annotated dependencies, which are local to make_router.

from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import Depends, Query, Request
from fastapi.responses import JSONResponse

from verifier.core.errors import BadInput
from verifier.http.deps import (
    EngineDep,
    IdempotencyKey,
    service_principal,
    staff_member,
    staff_operator,
)
from verifier.http.errors import ApiErrorCode, error_responses
from verifier.http.models import (
    DeliveryOut,
    EndpointCreatedOut,
    EndpointDeletedOut,
    EndpointIn,
    EndpointOut,
    EventOut,
    ReplayIn,
    ReplayOut,
)
from verifier.http.routes import Router, replayable, reply, with_context
from verifier.services import idempotency, webhook_endpoints, webhooks

ERRORS = error_responses(401, 422, 500, 503)
CREATE = "POST /v1/webhook-endpoints"
ROTATE = "POST /v1/webhook-endpoints/{endpoint_id}/rotate-secret"
# One bucket for a token's endpoint writes (create, rotate-secret, delete).
WRITES = "webhook endpoint writes"


def _limited(request: Request, principal: str) -> None:
    # SECURITY: each write appends to the one audit chain every tenant's payments append to,
    # under its lock, and keeps rows for good: a token looping rotate-secret or create and
    # delete must not grow them without bound, nor queue other tenants' writes behind it.
    request.app.state.rate_limiter.check(principal, WRITES)


def make_router(
    service_dep: Callable[..., Any] = service_principal,  # a sync or async dependency
    staff_dep: Callable[..., str] = staff_member,
) -> Router:
    # The principals are parameters so a test can mount these routes with its own; the app
    # uses deps.py's.
    router = Router(tags=["webhooks"], responses=ERRORS)
    Service = Annotated[tuple[str, list[str]], Depends(service_dep)]
    Staff = Annotated[str, Depends(staff_dep)]

    @router.post(
        "/v1/webhook-endpoints",
        status_code=201,
        response_model=EndpointCreatedOut,
        responses=replayable(error_responses(409, 429), 201),
    )
    def create(
        request: Request, body: EndpointIn, svc: Service, engine: EngineDep, key: IdempotencyKey
    ) -> JSONResponse:
        principal, owners = svc
        _limited(request, principal)

        def work() -> dict[str, Any]:
            return webhook_endpoints.create_endpoint(
                engine, principal, owners, body.url, body.event_types
            )

        def made(view: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            return 201, EndpointCreatedOut.checked(view)

        # A lost 201 is the only answer with the secret: a retry with the key gets it again,
        # where a fresh create finds the URL taken. SECURITY: claims are keyed by the
        # principal, so another token's owners never get this secret from the key; the claim
        # keeps only its digest, and a replay carries the endpoint's secret as it is now, or
        # is refused (idempotency_answer_stale) once it was rotated away or the endpoint
        # deleted: a dead secret installed fails every delivery's signature check.
        answer = idempotency.run_idempotent(
            engine,
            principal,
            CREATE,
            key,
            body.idempotent_request,
            work,
            made,
            keep=webhook_endpoints.kept_answer,
            on_replay=lambda stored: webhook_endpoints.replayed_answer(engine, owners, stored),
        )
        # SECURITY: the only response that carries the secret; no cache may keep it.
        return reply(answer, headers={"Cache-Control": "no-store"})

    @router.get("/v1/webhook-endpoints", response_model=list[EndpointOut])
    def read_all(svc: Service, engine: EngineDep) -> list[dict[str, Any]]:
        return webhook_endpoints.list_endpoints(engine, svc[1])

    @router.post(
        "/v1/webhook-endpoints/{endpoint_id}/rotate-secret",
        response_model=EndpointCreatedOut,
        responses=replayable(error_responses(404, 409, 429), 200),
    )
    def rotate_secret(
        request: Request, endpoint_id: str, svc: Service, engine: EngineDep, key: IdempotencyKey
    ) -> JSONResponse:
        _limited(request, svc[0])

        def work() -> dict[str, Any]:
            return webhook_endpoints.rotate_secret(engine, svc[0], svc[1], endpoint_id)

        def made(view: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            return 200, EndpointCreatedOut.checked(view)

        # The request is its path: the same key for another endpoint is a conflict. Its secret
        # is kept and replayed as create's is.
        answer = idempotency.run_idempotent(
            engine,
            svc[0],
            ROTATE,
            key,
            idempotency.Request.of({"endpoint_id": endpoint_id}),
            work,
            made,
            keep=webhook_endpoints.kept_answer,
            on_replay=lambda stored: webhook_endpoints.replayed_answer(engine, svc[1], stored),
        )
        # SECURITY: carries the new secret; no cache may keep it.
        return reply(answer, headers={"Cache-Control": "no-store"})

    @router.delete(
        "/v1/webhook-endpoints/{endpoint_id}",
        response_model=EndpointDeletedOut,
        responses=error_responses(404, 429),
    )
    def delete(
        request: Request, endpoint_id: str, svc: Service, engine: EngineDep
    ) -> dict[str, Any]:
        _limited(request, svc[0])
        return webhook_endpoints.delete_endpoint(engine, svc[0], svc[1], endpoint_id)

    # The staff routes declare 429 as staff_router's do: past the staff sign-in bound every
    # staff request from an address is refused (deps._staff_signed_in).
    @router.get(
        "/v1/admin/webhook-events",
        response_model=list[DeliveryOut],
        responses=error_responses(429),
    )
    def admin_list(
        _: Staff,
        engine: EngineDep,
        status: Literal["pending", "delivered", "dead_letter", "cancelled"] | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[dict[str, Any]]:
        return webhooks.list_events(engine, status, limit)

    @router.get(
        "/v1/admin/webhook-events/{event_id}",
        response_model=EventOut,
        responses=error_responses(404, 429),
    )
    def admin_inspect(event_id: str, _: Staff, engine: EngineDep) -> dict[str, Any]:
        return webhooks.inspect_event(engine, event_id)

    @router.post(
        "/v1/admin/webhook-events/{event_id}/replay",
        response_model=ReplayOut,
        responses=error_responses(404, 409, 429),
    )
    def admin_replay(
        event_id: str, body: ReplayIn, actor: Staff, engine: EngineDep
    ) -> dict[str, Any]:
        if not body.confirm:
            raise BadInput(
                ApiErrorCode.confirmation_required,
                "confirm: must be true for this action",
                field="confirm",
            )
        op = staff_operator(actor, body.incident_id, body.operator_reason or body.reason)
        return webhooks.replay(engine, event_id, with_context(op))

    return router


router = make_router()
