"""The API's error codes and how the HTTP layer documents its error answers.

Every error answer is `{"error": {"code", "message", "field"?, ...}}` (models.ErrorOut). Its
`code` is one of two families: a verification failure code (verifier.core.checking
FailureCode: session_not_found, rail_paused, proof_owner_conflict, ...), or one of the API
codes below, which say what the request itself got wrong. Both are stable strings clients
may branch on.

EngineError (verifier.core.errors)
 ├── Unauthorized    401: no bearer token, or one this API does not know for the route
 └── RateLimited     429 (verifier.http.ratelimit), with Retry-After
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from verifier.core.errors import EngineError


class ApiErrorCode(StrEnum):
    # the request's shape (422, 413)
    invalid_request = "invalid_request"
    body_too_large = "body_too_large"
    body_too_deep = "body_too_deep"
    invalid_idempotency_key = "invalid_idempotency_key"
    invalid_amount = "invalid_amount"
    invalid_expiry = "invalid_expiry"
    invalid_memo = "invalid_memo"
    invalid_proof_type = "invalid_proof_type"
    invalid_reference = "invalid_reference"
    reference_in_use = "reference_in_use"
    payer_in_use = "payer_in_use"
    recipient_required = "recipient_required"
    invalid_status = "invalid_status"
    invalid_treasury = "invalid_treasury"
    invalid_url = "invalid_url"
    invalid_event_type = "invalid_event_type"
    invalid_recipient = "invalid_recipient"
    invalid_payer = "invalid_payer"
    invalid_scope = "invalid_scope"
    invalid_apply = "invalid_apply"
    invalid_limit = "invalid_limit"
    invalid_time = "invalid_time"
    invalid_window = "invalid_window"
    invalid_resolution = "invalid_resolution"
    rail_id_required = "rail_id_required"
    treasury_required = "treasury_required"
    configuration_error = "configuration_error"
    evidence_required = "evidence_required"
    evidence_too_large = "evidence_too_large"
    evidence_hash_mismatch = "evidence_hash_mismatch"
    evidence_malformed = "evidence_malformed"
    confirmation_required = "confirmation_required"
    operator_context_required = "operator_context_required"
    # who is asking (401, 403, 429)
    unauthorized = "unauthorized"
    two_person_rule = "two_person_rule"
    rate_limited = "rate_limited"
    # what is asked for (404, 405)
    not_found = "not_found"
    method_not_allowed = "method_not_allowed"
    owner_not_found = "owner_not_found"
    proof_not_found = "proof_not_found"
    approval_not_found = "approval_not_found"
    entitlement_not_found = "entitlement_not_found"
    webhook_endpoint_not_found = "webhook_endpoint_not_found"
    webhook_event_not_found = "webhook_event_not_found"
    assurance_issue_not_found = "assurance_issue_not_found"
    reconciliation_run_not_found = "reconciliation_run_not_found"
    reconciliation_finding_not_found = "reconciliation_finding_not_found"
    release_gate_unknown = "release_gate_unknown"
    # the state it is in (409)
    idempotency_conflict = "idempotency_conflict"
    idempotency_in_progress = "idempotency_in_progress"
    idempotency_answer_stale = "idempotency_answer_stale"
    apply_blocked = "apply_blocked"
    approval_decided = "approval_decided"
    approval_expired = "approval_expired"
    requester_not_staff = "requester_not_staff"
    entitlement_not_active = "entitlement_not_active"
    proof_not_in_review = "proof_not_in_review"
    review_not_ambiguous = "review_not_ambiguous"
    review_not_verified = "review_not_verified"
    session_already_paid = "session_already_paid"
    proof_has_receipt = "proof_has_receipt"
    webhook_endpoint_exists = "webhook_endpoint_exists"
    webhook_endpoint_limit = "webhook_endpoint_limit"
    not_dead_letter = "not_dead_letter"
    event_superseded = "event_superseded"
    endpoint_inactive = "endpoint_inactive"
    issue_not_repairable = "issue_not_repairable"
    issue_resolved = "issue_resolved"
    finding_resolved = "finding_resolved"
    finding_not_resolvable = "finding_not_resolvable"
    transfer_credited = "transfer_credited"
    release_gates_incomplete = "release_gates_incomplete"
    # the server (5xx)
    database_busy = "database_busy"
    database_unavailable = "database_unavailable"
    internal_error = "internal_error"
    http_error = "http_error"


class Unauthorized(EngineError):
    status = 401  # the app's handler adds WWW-Authenticate: Bearer


_WHEN = {
    401: "No bearer token, or one this route does not accept (`unauthorized`).",
    403: "The caller may not do this (`two_person_rule`).",
    404: "No such resource, or not one of the caller's owners: both answer the same.",
    409: "The resource's state refuses the request (idempotency, replay, apply gate, ...).",
    413: "The body is larger than the limit (`body_too_large`).",
    422: "A field is missing or malformed; `field` names it.",
    429: "Too many requests for this token (`rate_limited`); see Retry-After.",
    500: "An unexpected failure (`internal_error`); the request may have been applied in "
    "part: read the resource, or retry with the same Idempotency-Key.",
    503: "The database is busy (`database_busy`): nothing changed, except a proof submission "
    "that names its stored pending proof (`proof_id`); or it could not be reached "
    "(`database_unavailable`): the request may have been applied in part. Retry after "
    "Retry-After (with the same Idempotency-Key).",
}


_HEADERS = {
    401: {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}},
    429: {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}},
    503: {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}},
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries: each status answered with the shared error model."""
    # Imported here: this module is a leaf the guards and the rate limiter import, and the
    # models import the guards.
    from verifier.http.models import ErrorOut

    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        out[status] = {"model": ErrorOut, "description": _WHEN[status]}
        if status in _HEADERS:
            out[status]["headers"] = _HEADERS[status]
    return out
