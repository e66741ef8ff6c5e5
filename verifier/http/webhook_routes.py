"""HTTP routes for webhooks: endpoints per service token, and the staff dead-letter queue.

Service (bearer service token):
  POST   /v1/webhook-endpoints        {url, event_types} → 201, the signing secret shown once
  GET    /v1/webhook-endpoints        this token's active endpoints (never the secret)
  DELETE /v1/webhook-endpoints/{id}   404 for another token's endpoint (owner isolation)
Staff (bearer staff token):
  GET  /v1/admin/webhook-events?status=&limit=    deliveries (event × endpoint)
  GET  /v1/admin/webhook-events/{id}              an event (or delivery id) with its deliveries
  POST /v1/admin/webhook-events/{id}/replay       {confirm: true, reason, incident_id?}

Errors are verifier.errors classes; the app's handlers render them.
"""

# No `from __future__ import annotations` here: FastAPI must resolve the route signatures'
# Annotated dependencies, which are local to webhook_router.

import secrets
from typing import Annotated, Any, Callable, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool
from sqlalchemy import select, update

from verifier.services import audit, webhooks
from verifier.core.engine import Engine
from verifier.core.errors import BadInput, Conflict, NotFound
from verifier.storage.webhook_models import (
    DeliveryStatus,
    EventType,
    WebhookDelivery,
    WebhookEndpoint,
)
from verifier.core.timeutil import iso

MAX_ENDPOINTS_PER_TOKEN = 16  # bounds the fan-out one token can cause per event


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EndpointIn(_Body):
    url: Annotated[str, Field(min_length=1, max_length=2048)]
    event_types: Annotated[list[str], Field(min_length=1, max_length=len(EventType))]


class ReplayIn(_Body):
    confirm: StrictBool = False  # only JSON true confirms
    reason: Annotated[str, Field(min_length=1, max_length=1000)] | None = None
    incident_id: Annotated[str, Field(max_length=128)] | None = None


def endpoint_view(ep: WebhookEndpoint) -> dict[str, Any]:
    # SECURITY: no secret here; only create_endpoint adds it, once.
    return {"id": ep.id, "url": ep.url, "event_types": list(ep.event_types),
            "owners": list(ep.owners), "active": ep.active, "created_at": iso(ep.created_at)}


def _event_types(given: list[str]) -> list[str]:
    known = {e.value for e in EventType}
    unknown = [t for t in given if t not in known]
    if unknown:
        # ascii(): the refused values are echoed escaped, whatever text they hold.
        raise BadInput("invalid_event_type", f"event_types: unknown "
                       f"{', '.join(ascii(t) for t in unknown[:5])}; "
                       f"known: {', '.join(sorted(known))}", field="event_types")
    return sorted(set(given), key=[e.value for e in EventType].index)


def create_endpoint(engine: Engine, principal: str, owners: list[str], url: str,
                    event_types: list[str]) -> dict[str, Any]:
    problem = webhooks.url_problem(url)
    if problem:
        raise BadInput("invalid_url", f"url: {problem}", field="url")
    types = _event_types(event_types)
    now = engine.now()
    with engine.db.tx() as s:
        mine = s.scalars(select(WebhookEndpoint).where(WebhookEndpoint.principal == principal,
                                                       WebhookEndpoint.active.is_(True))).all()
        if any(ep.url == url for ep in mine):
            # A retried create must not double every delivery; delete to rotate the secret.
            raise Conflict("webhook_endpoint_exists", "url: this token already has an active "
                           "endpoint for this URL", field="url")
        if len(mine) >= MAX_ENDPOINTS_PER_TOKEN:
            raise Conflict("webhook_endpoint_limit", f"at most {MAX_ENDPOINTS_PER_TOKEN} "
                           "active endpoints per token")
        ep = WebhookEndpoint(principal=principal, owners=sorted(owners), url=url,
                             event_types=types, secret="whsec_" + secrets.token_urlsafe(32),
                             active=True, created_at=now)
        s.add(ep)
        s.flush()
        audit.append(s, now, audit.Operator(principal), "webhook_endpoint.created",
                     "webhook_endpoint", ep.id,
                     {"url": webhooks.redact_url(url), "event_types": types})
        return {**endpoint_view(ep), "secret": ep.secret}


def list_endpoints(engine: Engine, principal: str) -> list[dict[str, Any]]:
    with engine.db.tx() as s:
        rows = s.scalars(select(WebhookEndpoint).where(WebhookEndpoint.principal == principal,
                                                       WebhookEndpoint.active.is_(True))
                         .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)).all()
        return [endpoint_view(ep) for ep in rows]


def delete_endpoint(engine: Engine, principal: str, endpoint_id: str) -> dict[str, Any]:
    if not webhooks.well_formed_id(endpoint_id, "whe"):
        raise NotFound("webhook_endpoint_not_found", f"no webhook endpoint {endpoint_id!r}")
    now = engine.now()
    with engine.db.tx() as s:
        ep = s.get(WebhookEndpoint, endpoint_id, with_for_update=engine.db.postgres)
        if ep is not None and ep.principal != principal:
            # SECURITY: another token's endpoint answers exactly like a missing one.
            engine.metrics.inc("owner_isolation_denials_total", reason="webhook_endpoint")
            ep = None
        if ep is None or not ep.active:
            raise NotFound("webhook_endpoint_not_found", f"no webhook endpoint {endpoint_id!r}")
        ep.active, ep.deactivated_at = False, now
        cancelled = s.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.endpoint_id == ep.id,
                   WebhookDelivery.status == DeliveryStatus.pending)
            .values(status=DeliveryStatus.cancelled, next_attempt_at=None, claimed_by=None,
                    claimed_until=None, last_error="endpoint deleted", updated_at=now)
        ).rowcount
        audit.append(s, now, audit.Operator(principal), "webhook_endpoint.deleted",
                     "webhook_endpoint", ep.id, {"cancelled_deliveries": cancelled})
        return {**endpoint_view(ep), "cancelled_deliveries": cancelled}


def webhook_router(engine: Engine, service_dep: Callable[..., tuple[str, list[str]]],
                   staff_dep: Callable[..., str]) -> APIRouter:
    router = APIRouter()
    Service = Annotated[tuple[str, list[str]], Depends(service_dep)]
    Staff = Annotated[str, Depends(staff_dep)]

    @router.post("/v1/webhook-endpoints", status_code=201)
    def create(body: EndpointIn, svc: Service) -> JSONResponse:
        principal, owners = svc
        # SECURITY: the only response that carries the secret; no cache may keep it.
        return JSONResponse(create_endpoint(engine, principal, owners, body.url,
                                            body.event_types), status_code=201,
                            headers={"Cache-Control": "no-store"})

    @router.get("/v1/webhook-endpoints")
    def read_all(svc: Service) -> list[dict[str, Any]]:
        return list_endpoints(engine, svc[0])

    @router.delete("/v1/webhook-endpoints/{endpoint_id}")
    def delete(endpoint_id: str, svc: Service) -> dict[str, Any]:
        return delete_endpoint(engine, svc[0], endpoint_id)

    @router.get("/v1/admin/webhook-events")
    def admin_list(_: Staff, status: Literal["pending", "delivered", "dead_letter",
                                             "cancelled"] | None = None,
                   limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict[str, Any]]:
        return webhooks.list_events(engine, status, limit)

    @router.get("/v1/admin/webhook-events/{event_id}")
    def admin_inspect(event_id: str, _: Staff) -> dict[str, Any]:
        return webhooks.inspect_event(engine, event_id)

    @router.post("/v1/admin/webhook-events/{event_id}/replay")
    def admin_replay(event_id: str, body: ReplayIn, actor: Staff) -> dict[str, Any]:
        if not body.confirm:
            raise BadInput("confirmation_required", "confirm: must be true for this action",
                           field="confirm")
        return webhooks.replay(engine, event_id, audit.Operator(actor, body.incident_id,
                                                                body.reason))

    return router
