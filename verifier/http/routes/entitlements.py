"""Entitlements of one owner of the token."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query

from verifier.http.deps import EngineDep, ServiceDep, acting_for
from verifier.http.errors import error_responses
from verifier.http.models import EntitlementOut
from verifier.http.routes import service_router
from verifier.services import queries

router = service_router("entitlements")
MAX_PAGE = 1000  # every list's bound: one owner's sessions each add an entitlement


@router.get("/v1/entitlements", response_model=list[EntitlementOut], responses=error_responses(404))
def entitlements(
    svc: ServiceDep,
    engine: EngineDep,
    owner_id: Annotated[str, Query(min_length=1)],
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="At most this many")] = MAX_PAGE,
    after: Annotated[
        str | None,
        Query(min_length=1, max_length=64, description="The previous page's last id"),
    ] = None,
) -> list[dict[str, Any]]:
    """The owner's entitlements, oldest first, a page at a time: a full page's last id as
    `after` gives the next."""
    acting_for(engine, svc, owner_id, "entitlements", field="owner_id")
    return queries.entitlements_of(engine, owner_id, limit, after)
