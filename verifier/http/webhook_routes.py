"""Kept for imports from before the routes moved: the webhook routes live in
verifier.http.routes.webhooks, the endpoint functions in verifier.services.webhook_endpoints."""

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter

from verifier.http.routes.webhooks import make_router


def webhook_router(
    engine: Any, service_dep: Callable[..., tuple[str, list[str]]], staff_dep: Callable[..., str]
) -> APIRouter:
    # `engine` is unused: routes take it from request.app.state.engine.
    return make_router(service_dep, staff_dep)
