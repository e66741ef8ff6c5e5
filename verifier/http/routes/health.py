"""Public routes (no token): liveness, readiness and Prometheus metrics.

/healthz is liveness only: the process answers. /readyz is readiness: the database answers,
its schema is at the head migration, and with a live chain every live rail has an RPC URL
(checked in the configuration, never by calling it); 503 with the same body otherwise."""

from __future__ import annotations

from fastapi import Response
from fastapi.responses import JSONResponse

from verifier.http.deps import EngineDep
from verifier.http.errors import error_responses
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
        **error_responses(503),
    },
)
def metrics(engine: EngineDep) -> Response:
    refresh_gauges(engine)
    refresh_queue_gauges(engine)
    refresh_setup_gauge(engine)
    return Response(engine.metrics.render(), media_type=PROMETHEUS)
