"""Public routes (no token): liveness, readiness and Prometheus metrics (which need the
metrics token when RAILPROOF_METRICS_TOKEN is set).

/healthz is liveness only: the process answers. /readyz is readiness: the database answers,
its schema is at the head migration, and with a live chain every live rail has an RPC URL
(checked in the configuration, never by calling it); 503 with the same body otherwise."""

from __future__ import annotations

import hmac

from fastapi import Request, Response
from fastapi.responses import JSONResponse

from verifier.http.deps import EngineDep, authorization
from verifier.http.errors import ApiErrorCode, Unauthorized, error_responses
from verifier.http.models import HealthOut, ReadyOut
from verifier.http.routes import Router
from verifier.services.assurance import refresh_gauges
from verifier.services.observability import (
    count_readiness,
    refresh_queue_gauges,
    refresh_setup_gauge,
)
from verifier.services.queries import readiness_checks

# No token; malformed headers (422) and failures can still happen.
router = Router(tags=["health"], responses=error_responses(422, 500))
PROMETHEUS = "text/plain; version=0.0.4"


@router.get("/healthz")
async def healthz(engine: EngineDep) -> HealthOut:
    # On the event loop, not a pool thread: the process is alive while every pool thread waits
    # (on the chain, on the database), and a liveness probe must say so rather than queue.
    return HealthOut(status="ok", chain=engine.settings.chain)


@router.get(
    "/readyz",
    response_model=ReadyOut,
    responses={
        503: {
            "model": ReadyOut,
            "description": "Not ready: the checks that failed say why (same body as 200).",
        }
    },
)
def readyz(engine: EngineDep) -> JSONResponse:
    checks = readiness_checks(engine)
    count_readiness(engine, checks)
    ready = all(c["ok"] for c in checks)
    body = ReadyOut.checked({"status": "ready" if ready else "not_ready", "checks": checks})
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text exposition",
            "content": {PROMETHEUS: {"schema": {"type": "string"}}},
        },
        **error_responses(401, 503),
    },
)
def metrics(request: Request, engine: EngineDep) -> Response:
    want = engine.settings.metrics_token
    # SECURITY: the counters tell apart what the API answers alike (an owner-isolation denial
    # is counted only for an id that exists): behind RAILPROOF_METRICS_TOKEN when set. Two
    # Authorization lines are refused, as on every route, never read as the first.
    if want is not None and not hmac.compare_digest(
        (authorization(request) or "").encode(), f"Bearer {want.get_secret_value()}".encode()
    ):
        raise Unauthorized(
            ApiErrorCode.unauthorized,
            "Authorization: GET /metrics needs the metrics token (RAILPROOF_METRICS_TOKEN)",
            field="Authorization",
        )
    refresh_gauges(engine)
    refresh_queue_gauges(engine)
    refresh_setup_gauge(engine)
    return Response(engine.metrics.render(), media_type=PROMETHEUS)
