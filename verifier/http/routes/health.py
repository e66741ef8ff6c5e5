"""Public routes: liveness and Prometheus metrics (no token)."""

from __future__ import annotations

from fastapi import Response

from verifier.http.deps import EngineDep
from verifier.http.errors import error_responses
from verifier.http.models import HealthOut
from verifier.http.routes import Router
from verifier.services.assurance import refresh_gauges

# No token; malformed headers (422) and failures can still happen.
router = Router(tags=["health"], responses=error_responses(422, 500))
PROMETHEUS = "text/plain; version=0.0.4"


@router.get("/healthz")
def healthz(engine: EngineDep) -> HealthOut:
    return HealthOut(status="ok", chain=engine.settings.chain)


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
    return Response(engine.metrics.render(), media_type=PROMETHEUS)
