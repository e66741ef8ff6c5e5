"""Release gates of a rail (/v1/admin/rails/{rail_id}/release-gates): what each gate stands
on, and recording new evidence (the kill-switch drill runs here; files come with their sha256;
attestations name the staff member). Every record carries incident id and reason."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query

from verifier.http.deps import EngineDep, StaffDep, staff_operator
from verifier.http.errors import error_responses
from verifier.http.models import (
    ReleaseGateEvidenceIn,
    ReleaseGateRecordOut,
    ReleaseGatesOut,
)
from verifier.http.routes import staff_router, with_context
from verifier.services import release_gates

router = staff_router("release gates")
NOT_FOUND = error_responses(404)


@router.get("/rails/{rail_id}/release-gates", response_model=ReleaseGatesOut, responses=NOT_FOUND)
def list_gates(rail_id: str, _: StaffDep, engine: EngineDep) -> dict[str, Any]:
    return release_gates.gate_status(engine, rail_id)


@router.get(
    "/rails/{rail_id}/release-gates/evidence",
    response_model=list[ReleaseGateRecordOut],
    responses=NOT_FOUND,
)
def evidence_history(
    rail_id: str,
    _: StaffDep,
    engine: EngineDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> list[dict[str, Any]]:
    return release_gates.history(engine, rail_id, limit)


@router.post(
    "/rails/{rail_id}/release-gates/{gate}/evidence",
    response_model=ReleaseGateRecordOut,
    status_code=201,
    responses=NOT_FOUND,
)
def record_evidence(
    rail_id: str, gate: str, body: ReleaseGateEvidenceIn, actor: StaffDep, engine: EngineDep
) -> dict[str, Any]:
    # SECURITY: blank incident id or reason is missing, as on every other staff write.
    op = with_context(staff_operator(actor, body.incident_id, body.operator_reason))
    given = release_gates.EvidenceIn(body.evidence, body.evidence_sha256, body.note)
    return release_gates.record(engine, rail_id, gate, op, given, confirm=body.confirm)
