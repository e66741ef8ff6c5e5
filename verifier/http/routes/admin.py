"""Staff routes (/v1/admin): read-only inspection and dry runs, and the gated actions, each
of which takes explicit confirmation (`confirm: true`, nothing else) and carries its
operator context (incident id, reason) into the audit trail."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Query
from fastapi.responses import JSONResponse

from verifier.core.errors import BadInput
from verifier.core.metrics import spec_document
from verifier.http.deps import EngineDep, StaffDep, staff_operator
from verifier.http.errors import ApiErrorCode, error_responses
from verifier.http.models import (
    ApplyOut,
    ApprovalOut,
    ApprovalRequestOut,
    AssuranceOut,
    AssuranceRepairOut,
    AttemptOut,
    AuditChainOut,
    AuditEventOut,
    ConfirmIn,
    DryRunIn,
    DryRunOut,
    EntitlementDetailOut,
    EntitlementOut,
    EvidenceOut,
    ObservabilitySpecOut,
    OperatorIn,
    PauseOut,
    ProductionIn,
    ProofContractOut,
    ProofOut,
    RailOut,
    ReadinessOut,
    ReceiptOut,
    RepairIn,
    ReviewIn,
    RevokeOut,
    StuckClaimOut,
    TreasuryIn,
)
from verifier.http.routes import staff_router, with_context
from verifier.services import audit, gate, idempotency, proofs, queries, rails_admin, reviews
from verifier.services.assurance import MAX_PERIOD_DAYS, assurance_report
from verifier.services.assurance import repair as assurance_repair

router = staff_router("staff")
NOT_FOUND = error_responses(404)
ACTION = error_responses(404, 409)  # gated actions: confirm, then the state
Limit = Annotated[int, Query(ge=1, le=1000)]
Filter = Annotated[str | None, Query(min_length=1, max_length=128)]
ProofStatus = Literal["verified", "failed", "pending", "requires_review"]


def operator(actor: str, body: OperatorIn) -> audit.Operator:
    return staff_operator(actor, body.incident_id, body.operator_reason)


def confirmed(actor: str, body: ConfirmIn) -> audit.Operator:
    if not body.confirm:
        raise BadInput(
            ApiErrorCode.confirmation_required,
            "confirm: must be true for this action",
            field="confirm",
        )
    return with_context(operator(actor, body))


# -- reads ----------------------------------------------------------------------------------


@router.get("/rails", response_model=list[RailOut])
def rails(_: StaffDep, engine: EngineDep) -> list[dict[str, Any]]:
    return rails_admin.list_rails(engine)


@router.get("/rails/readiness", response_model=list[ReadinessOut])
def readiness(_: StaffDep, engine: EngineDep) -> list[dict[str, Any]]:
    return rails_admin.rail_readiness(engine)


@router.get("/proof-contracts", response_model=list[ProofContractOut], responses=NOT_FOUND)
def contracts(_: StaffDep, engine: EngineDep, rail_id: str | None = None) -> list[dict[str, Any]]:
    return rails_admin.contracts(engine, rail_id)


@router.get("/proofs", response_model=list[ProofOut], responses=NOT_FOUND)
def list_proofs(
    _: StaffDep,
    engine: EngineDep,
    rail_id: str | None = None,
    status: ProofStatus | None = None,
    limit: Limit = 50,
) -> list[dict[str, Any]]:
    return proofs.list_proofs(engine, rail_id, status, limit)


@router.get("/proofs/{proof_id}", response_model=ProofOut, responses=NOT_FOUND)
def inspect_proof(proof_id: str, _: StaffDep, engine: EngineDep) -> dict[str, Any]:
    return proofs.get_proof(engine, proof_id, None)


@router.get("/proofs/{proof_id}/attempts", response_model=list[AttemptOut], responses=NOT_FOUND)
def attempts(proof_id: str, _: StaffDep, engine: EngineDep) -> list[dict[str, Any]]:
    return proofs.list_attempts(engine, proof_id)


@router.get(
    "/proofs/{proof_id}/settlement-evidence", response_model=list[EvidenceOut], responses=NOT_FOUND
)
def evidence(proof_id: str, _: StaffDep, engine: EngineDep) -> list[dict[str, Any]]:
    return proofs.list_evidence(engine, proof_id)


@router.get("/idempotency-claims/stuck", response_model=list[StuckClaimOut])
def stuck_claims(
    _: StaffDep,
    engine: EngineDep,
    # ≤ 10 years: a bigger age overflows datetime arithmetic.
    min_age_seconds: Annotated[int | None, Query(ge=0, le=315_360_000)] = None,
) -> list[dict[str, Any]]:
    return idempotency.stuck_claims(engine, min_age_seconds)


@router.get("/approvals", response_model=list[ApprovalOut])
def approvals(
    _: StaffDep,
    engine: EngineDep,
    status: Annotated[
        str | None, Query(description="pending | approved | rejected (and later states)")
    ] = None,
    limit: Limit = 100,
) -> list[dict[str, Any]]:
    return queries.list_approvals(engine, status, limit)


@router.get("/entitlements", response_model=list[EntitlementOut])
def entitlements(
    _: StaffDep,
    engine: EngineDep,
    owner_id: Annotated[str, Query(min_length=1, max_length=128)],
    limit: Limit = 100,
) -> list[dict[str, Any]]:
    return queries.list_entitlements(engine, owner_id, limit)


@router.get(
    "/entitlements/{entitlement_id}", response_model=EntitlementDetailOut, responses=NOT_FOUND
)
def inspect_entitlement(entitlement_id: str, _: StaffDep, engine: EngineDep) -> dict[str, Any]:
    return queries.get_entitlement(engine, entitlement_id)


@router.get("/receipts", response_model=list[ReceiptOut], responses=NOT_FOUND)
def receipts(
    _: StaffDep,
    engine: EngineDep,
    owner_id: Filter = None,
    rail_id: Filter = None,
    limit: Limit = 50,
) -> list[dict[str, Any]]:
    return queries.list_receipts(engine, owner_id, rail_id, limit)


@router.get("/audit", response_model=list[AuditEventOut])
def audit_events(
    _: StaffDep,
    engine: EngineDep,
    limit: Limit = 100,
    subject_id: str | None = None,
    incident_id: Filter = None,
) -> list[dict[str, Any]]:
    return queries.audit_events(engine, limit, subject_id, incident_id)


@router.get("/audit/verify", response_model=AuditChainOut)
def audit_verify(_: StaffDep, engine: EngineDep) -> dict[str, Any]:
    return queries.audit_chain(engine)


@router.get("/assurance", response_model=AssuranceOut)
def assurance(
    _: StaffDep,
    engine: EngineDep,
    period_days: Annotated[
        int | None,
        Query(ge=1, le=MAX_PERIOD_DAYS, description="only rows made in this many days back"),
    ] = None,
) -> dict[str, Any]:
    return assurance_report(engine, period_days)


@router.get("/observability/spec", response_model=ObservabilitySpecOut)
def observability_spec(_: StaffDep) -> dict[str, Any]:
    return spec_document()


# -- actions --------------------------------------------------------------------------------


@router.post(
    "/proofs/{proof_id}/dry-run-apply",
    response_model=DryRunOut,
    responses=NOT_FOUND,
)
def dry_run_apply(
    proof_id: str, actor: StaffDep, engine: EngineDep, body: DryRunIn | None = None
) -> dict[str, Any]:
    body = body or DryRunIn()
    via = gate.Via.staff_receipt if body.path == "receipt" else gate.Via.staff
    return gate.dry_run_apply(engine, proof_id, operator(actor, body), via)


@router.post("/proofs/{proof_id}/apply", response_model=ApplyOut, responses=ACTION)
def apply(proof_id: str, body: ConfirmIn, actor: StaffDep, engine: EngineDep) -> dict[str, Any]:
    return gate.apply(engine, proof_id, confirmed(actor, body), gate.Via.staff)


@router.post("/proofs/{proof_id}/receipt", response_model=ApplyOut, responses=ACTION)
def create_receipt(
    proof_id: str, body: ConfirmIn, actor: StaffDep, engine: EngineDep
) -> dict[str, Any]:
    return gate.apply(engine, proof_id, confirmed(actor, body), gate.Via.staff_receipt)


@router.post("/proofs/{proof_id}/review", response_model=ProofOut, responses=ACTION)
def resolve_review(
    proof_id: str, body: ReviewIn, actor: StaffDep, engine: EngineDep
) -> dict[str, Any]:
    """Decide a proof held for review (services.reviews): credit it to its own session, or
    release the transfer it holds."""
    return reviews.resolve_review(
        engine, proof_id, reviews.Decision(body.decision), confirmed(actor, body)
    )


@router.post("/rails/{rail_id}/pause", response_model=PauseOut, responses=NOT_FOUND)
def pause(rail_id: str, body: ConfirmIn, actor: StaffDep, engine: EngineDep) -> dict[str, Any]:
    return rails_admin.set_paused(engine, rail_id, True, confirmed(actor, body))


@router.post("/rails/{rail_id}/resume", response_model=PauseOut, responses=NOT_FOUND)
def resume(rail_id: str, body: ConfirmIn, actor: StaffDep, engine: EngineDep) -> dict[str, Any]:
    return rails_admin.set_paused(engine, rail_id, False, confirmed(actor, body))


def _requested(approval: dict[str, Any]) -> JSONResponse:
    return JSONResponse(
        ApprovalRequestOut.checked(
            {"approval_id": approval["approval_id"], "status": approval["status"]}
        ),
        status_code=201,
    )


@router.post(
    "/rails/{rail_id}/production/request",
    status_code=201,
    response_model=ApprovalRequestOut,
    responses=ACTION,
)
def request_production(
    rail_id: str, body: ProductionIn, actor: StaffDep, engine: EngineDep
) -> JSONResponse:
    return _requested(
        rails_admin.request_change(
            engine,
            rail_id,
            "production",
            "true" if body.enable else "false",
            # SECURITY: blank incident id or reason is missing (a request leads to an approval).
            with_context(operator(actor, body)),
        )
    )


@router.post(
    "/rails/{rail_id}/treasury/request",
    status_code=201,
    response_model=ApprovalRequestOut,
    responses=ACTION,
)
def request_treasury(
    rail_id: str, body: TreasuryIn, actor: StaffDep, engine: EngineDep
) -> JSONResponse:
    return _requested(
        rails_admin.request_change(
            engine, rail_id, "treasury", body.treasury, with_context(operator(actor, body))
        )
    )


@router.post(
    "/approvals/{approval_id}/approve",
    response_model=ApprovalOut,
    responses={**ACTION, **error_responses(403)},
)
def approve(
    approval_id: str, body: ConfirmIn, actor: StaffDep, engine: EngineDep
) -> dict[str, Any]:
    return rails_admin.approve(engine, approval_id, confirmed(actor, body))


@router.post(
    "/approvals/{approval_id}/reject",
    response_model=ApprovalOut,
    responses={**ACTION, **error_responses(403)},
)
def reject(approval_id: str, body: ConfirmIn, actor: StaffDep, engine: EngineDep) -> dict[str, Any]:
    return rails_admin.reject(engine, approval_id, confirmed(actor, body))


@router.post("/assurance/repairs", response_model=AssuranceRepairOut, responses=ACTION)
def repair(body: RepairIn, actor: StaffDep, engine: EngineDep) -> dict[str, Any]:
    """Repair one standing assurance issue (by its `id`) with the staff action that fixes
    it; audited with the incident id and reason, which it requires."""
    return assurance_repair(engine, body.issue_id, True, confirmed(actor, body))


@router.post("/entitlements/{entitlement_id}/revoke", response_model=RevokeOut, responses=ACTION)
def revoke(
    entitlement_id: str, body: ConfirmIn, actor: StaffDep, engine: EngineDep
) -> dict[str, Any]:
    return gate.revoke(engine, entitlement_id, confirmed(actor, body))
