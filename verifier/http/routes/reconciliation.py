"""Staff routes of reconciliation runs: start one (dry-run unless `apply` with `confirm`),
list them, read one with its findings, resolve a finding repaired outside railproof. Every
run and every resolution carries its incident id and reason."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Path, Query
from pydantic import Field, StrictBool

from verifier.http.deps import EngineDep, StaffDep, staff_operator
from verifier.http.errors import error_responses
from verifier.http.guards import MAX_INCIDENT_ID, MAX_OPERATOR_REASON
from verifier.http.models import Model, OperatorIn, TimeIn
from verifier.http.routes import staff_router, with_context
from verifier.services import reconciliation

router = staff_router("reconciliation")
Scope = Literal["rail_proofs", "chain_inflows"]


class RunIn(Model):
    scope: Scope
    rail_id: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    since: TimeIn | None = None
    until: TimeIn | None = None
    limit: Annotated[int, Field(ge=1, le=reconciliation.MAX_LIMIT, strict=True)] = 1000
    apply: StrictBool = False
    confirm: StrictBool = False  # only JSON true confirms
    incident_id: Annotated[str, Field(max_length=MAX_INCIDENT_ID)] | None = None
    operator_reason: Annotated[str, Field(max_length=MAX_OPERATOR_REASON)] | None = None


class FindingOut(Model):
    id: int
    kind: str
    severity: str
    subjects: dict[str, Any]
    detail: str
    proposed_repair: str
    repair_status: str
    repair_result: dict[str, Any] | None = None
    # What the finding is about, the same in every run (null on findings older than it).
    subject_key: str | None = None


ResolutionName = Literal["refunded", "credited_by_hand", "attached_by_hand", "not_ours", "accepted"]


class ResolutionIn(OperatorIn):
    resolution: ResolutionName = Field(
        description="How a person settled it outside railproof; each finding kind takes some "
        "(`accepted` fits every kind)"
    )


class ResolvedFindingOut(FindingOut):
    # Findings of the same kind and subject in the other current runs, resolved with it.
    also_resolved: int


class RunOut(Model):
    id: str
    scope: str
    rail_id: str | None = None
    since: str | None = None
    until: str | None = None
    limit: int | None = None
    dry_run: bool
    incident_id: str
    operator_reason: str
    staff: str
    started_at: str
    finished_at: str | None = None
    status: str
    detail: str
    summary: dict[str, Any]


class RunWithFindingsOut(RunOut):
    findings: list[FindingOut]


@router.post(
    "/reconciliation-runs",
    status_code=201,
    response_model=RunWithFindingsOut,
    responses=error_responses(404, 409),
)
def create_run(body: RunIn, engine: EngineDep, actor: StaffDep) -> dict[str, Any]:
    op = staff_operator(actor, body.incident_id, body.operator_reason)
    return reconciliation.run(
        engine,
        reconciliation.RunRequest(
            scope=body.scope,
            rail_id=body.rail_id,
            since=body.since,
            until=body.until,
            limit=body.limit,
            apply=body.apply,
            confirm=body.confirm,
            incident_id=op.incident_id,
            operator_reason=op.reason,
        ),
        actor,
    )


@router.get("/reconciliation-runs", response_model=list[RunOut])
def list_runs(
    engine: EngineDep,
    _: StaffDep,
    scope: Scope | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> list[dict[str, Any]]:
    return reconciliation.list_runs(engine, scope, limit)


@router.get(
    "/reconciliation-runs/{run_id}",
    response_model=RunWithFindingsOut,
    responses=error_responses(404),
)
def read_run(run_id: str, engine: EngineDep, _: StaffDep) -> dict[str, Any]:
    return reconciliation.get_run(engine, run_id)


@router.post(
    "/reconciliation-findings/{finding_id}/resolution",
    response_model=ResolvedFindingOut,
    responses=error_responses(404, 409),
)
def resolve_finding(
    body: ResolutionIn,
    engine: EngineDep,
    actor: StaffDep,
    finding_id: Annotated[int, Path(ge=1, le=2**31 - 1)],
) -> dict[str, Any]:
    """Record that a finding was repaired outside railproof (a refund, a credit or an attach
    by hand, a decision): it and every later run's finding of the same kind and subject are
    `resolved`, not drift. Needs the incident id and reason; audited."""
    op = with_context(staff_operator(actor, body.incident_id, body.operator_reason))
    return reconciliation.resolve_finding(engine, finding_id, body.resolution, op)
