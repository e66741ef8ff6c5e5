"""Request and response models of the HTTP API: the OpenAPI document is the contract clients
are generated from, so every body in and out has a model here.

Out models mirror exactly the dicts services/views.py (and the other services) produce:
amounts as strings of base units, times as ISO-8601 UTC strings. Routes validate the
service's dict into its model and answer the keys the service set (see routes.Router), so a
service that adds, drops or retypes a key fails loudly in the tests instead of drifting from
the documented contract.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    WithJsonSchema,
)

from verifier.core.config import MAX_DURATION_S
from verifier.http.guards import MAX_INCIDENT_ID, MAX_OPERATOR_REASON, encodable_object
from verifier.services import idempotency, proofs, sessions
from verifier.services.events import EventType

MAX_AMOUNT = proofs.MAX_AMOUNT


class Model(BaseModel):
    # Shared by every body in and out: an unknown key is a client's typo on the way in, and
    # a service's undocumented key on the way out; both are refused, never passed along.
    model_config = ConfigDict(extra="forbid")

    @classmethod
    def checked(cls, data: Any) -> dict[str, Any]:
        """`data` validated by this model, as JSON: the keys it had, nothing added. For the
        routes that build their own response (status 200 or 201, stored idempotent answers)."""
        return cls.model_validate(data).model_dump(mode="json", exclude_unset=True)

    # The fields this body gained after release 0.1.0 (each with a default that keeps the
    # request's meaning then): what that release hashed for a key's claim lacks them.
    ADDED_AFTER_0_1_0: ClassVar[frozenset[str]] = frozenset()

    def idempotent_request(self) -> idempotency.Request:
        """What an Idempotency-Key is bound to: this body's meaning, its fields at their
        defaults left out, so an optional field added later, or sent as its default (an
        explicit `"payer": null`), leaves the request what it was. A default is what the
        service does without the field; a field set to anything else is kept, so two bodies
        that mean different requests never hash alike.

        Claims stored before hashed the full dump: of this model (the versions up to this
        one), or, when the fields added since are at their defaults, of 0.1.0's model (the
        same fields, less those). Both are taken for the same request, and no other: a full
        dump names every field's value."""
        meaning = self.model_dump(mode="json", exclude_defaults=True)
        full = self.model_dump(mode="json")
        earlier = [full]
        if not self.ADDED_AFTER_0_1_0 & meaning.keys():
            earlier.append({k: v for k, v in full.items() if k not in self.ADDED_AFTER_0_1_0})
        return idempotency.Request.of(meaning, *earlier)


# -- field types ----------------------------------------------------------------------------


def parse_amount(v: Any) -> int:
    # Amounts are integers of base units: an int, or a string of digits. Never a float.
    if isinstance(v, bool) or isinstance(v, float):
        raise ValueError("must be an integer of base units (no decimals), e.g. 1500000")
    if isinstance(v, int):
        n = v
    elif isinstance(v, str) and v.isascii() and v.isdigit():
        # Leading zeros are taken; past the largest amount's length it is refused unread
        # (int() of thousands of digits is refused with an interpreter's message).
        digits = v.lstrip("0") or "0"
        if len(digits) > len(str(MAX_AMOUNT)):
            raise ValueError(f"must be at most {MAX_AMOUNT} base units")
        n = int(digits)
    else:
        raise ValueError("must be an integer of base units or a string of digits")
    if n <= 0:
        raise ValueError("must be a positive integer of base units")
    if n > MAX_AMOUNT:
        raise ValueError(f"must be at most {MAX_AMOUNT} base units")
    return n


_AMOUNT_DOC = "base units of the rail's asset (USDC: 1500000 is 1.50), never a decimal"
Amount = Annotated[
    int,
    BeforeValidator(parse_amount),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 1, "maximum": MAX_AMOUNT},
                {"type": "string", "pattern": "^[0-9]+$"},
            ],
            "description": f"An integer, or a string of digits: {_AMOUNT_DOC}.",
        }
    ),
]
AmountText = Annotated[
    str, Field(pattern=r"^[0-9]+$", description=f"A string of digits: {_AMOUNT_DOC}.")
]
Time = Annotated[str, Field(json_schema_extra={"format": "date-time"}, description="ISO-8601, UTC")]


def _iso_time(value: Any) -> Any:
    # Text only: pydantic takes a number (or a string of digits) for a Unix time, and one
    # above 2e10 for milliseconds (253402300799, the year 9999 in seconds, read as 1978).
    if not isinstance(value, str):
        raise ValueError("an ISO-8601 time as text (2024-01-01T00:00:00Z), not a number")
    try:
        at = datetime.fromisoformat(value.upper())  # RFC 3339 allows "t" and "z"
    except ValueError:
        raise ValueError("an ISO-8601 time (2024-01-01T00:00:00Z)") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)  # no offset: UTC, as everywhere


# A time a request gives: ISO-8601 text, read as UTC when it names no offset.
TimeIn = Annotated[datetime, BeforeValidator(_iso_time)]
Id = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@\-]+$")]
# A rail's or a stored row's id as a body names it: the characters ids are made of, so a
# control character (or anything else) is refused naming the field, not looked up.
ShortId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:@\-]+$")]
Text = Annotated[str, Field(min_length=1, max_length=128)]
Json = dict[str, Any]


# -- bodies in ------------------------------------------------------------------------------


class SessionIn(Model):
    ADDED_AFTER_0_1_0 = frozenset({"payer"})  # with transfer binding (revision 0005)

    owner_id: Id
    rail_id: ShortId
    access_product_id: Id
    amount: Amount
    recipient: Text | None = None
    reference: Text | None = Field(
        sessions.AUTO,
        description=(
            '"auto" (the default): railproof generates a reference only this payment carries; '
            "null: none (rails that bind by payer); else a client-chosen one"
        ),
    )
    payer: Text | None = None
    memo: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    # The schema admits what any deployment may allow; RAILPROOF_MAX_SESSION_TTL_SECONDS is
    # this one's bound (422 naming the field, from the service).
    expires_in_seconds: (
        Annotated[
            int,
            Field(
                gt=0,
                le=MAX_DURATION_S,
                strict=True,
                description="at most the deployment's RAILPROOF_MAX_SESSION_TTL_SECONDS",
            ),
        ]
        | None
    ) = None


class ProofIn(Model):
    session_id: ShortId
    proof: Annotated[
        Annotated[str, Field(min_length=1, max_length=proofs.MAX_PROOF_BYTES)] | Json,
        AfterValidator(encodable_object),
    ]
    # Any of the session's rail's proof types (GET /v1/admin/proof-contracts lists them): the
    # service checks it against the rail (422 invalid_proof_type), so a new rail family needs
    # no change here. Default: the rail's first proof type.
    proof_type: (
        Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*$")] | None
    ) = None


class OperatorIn(Model):
    incident_id: Annotated[str, Field(max_length=MAX_INCIDENT_ID)] | None = None
    operator_reason: Annotated[str, Field(max_length=MAX_OPERATOR_REASON)] | None = None


class DryRunIn(OperatorIn):
    path: Literal["apply", "receipt"] = "apply"  # which staff path to evaluate


class ConfirmIn(OperatorIn):
    # Strict: only JSON true confirms; "yes", 1 or "on" are refused, not read as true.
    confirm: StrictBool = False


class ProductionIn(OperatorIn):
    enable: StrictBool


class TreasuryIn(OperatorIn):
    treasury: Text


class RepairIn(ConfirmIn):
    issue_id: Annotated[str, Field(min_length=1, max_length=200)] = Field(
        description="An issue's `id` from GET /v1/admin/assurance"
    )


class ReviewIn(ConfirmIn):
    decision: Literal["credit", "release"] = Field(
        description="credit: the transfer was made for this proof's session (an "
        "ambiguous_transfer hold only; the chain must verify it again); release: it was not, "
        "and the proof gives the transfer up"
    )


class EndpointIn(Model):
    url: Annotated[str, Field(min_length=1, max_length=2048)]
    event_types: Annotated[list[str], Field(min_length=1, max_length=len(EventType))]


class ReplayIn(OperatorIn):
    confirm: StrictBool = False  # only JSON true confirms
    # The first name of `operator_reason` on this route, still accepted.
    reason: Annotated[str, Field(min_length=1, max_length=MAX_OPERATOR_REASON)] | None = None


# -- errors ---------------------------------------------------------------------------------


class ErrorDetail(Model):
    # Open: a refusal may carry what the caller needs to act on it (below), and more later.
    model_config = ConfigDict(extra="allow")
    code: str = Field(
        description="A stable snake_case code: an API error code "
        "(verifier.http.errors.ApiErrorCode) or a verification failure code"
    )
    message: str
    field: str | None = Field(None, description="The request field at fault, when there is one")
    report: DryRunOut | None = Field(None, description="apply_blocked: every check of the gate")
    proof_id: str | None = Field(None, description="A refused transfer's stored proof")
    retry_after: int | None = Field(None, description="rate_limited: seconds to wait")


class ErrorOut(Model):
    error: ErrorDetail


# -- bodies out: service ---------------------------------------------------------------------


class HealthOut(Model):
    status: str
    chain: str


class ReadyCheckOut(Model):
    name: str = Field(description="database, schema, or rpc:<rail_id> (live chain only)")
    ok: bool
    detail: str = Field(description="what was found; for a failing check, what to set or run")


class ReadyOut(Model):
    """GET /readyz, with 200 (every check passed) and with 503 (the failing ones say why)."""

    status: Literal["ready", "not_ready"]
    checks: list[ReadyCheckOut]


class SessionOut(Model):
    id: str
    status: str
    owner_id: str
    rail_id: str
    access_product_id: str
    amount: AmountText
    network: str
    asset: str
    recipient: str
    reference: str | None
    payer: str | None
    memo: str | None
    created_at: Time
    expires_at: Time
    paid_at: Time | None
    payment_requirements: Json | None = Field(
        description="What the payer must do; its shape is the rail family's"
    )
    rail_paused: bool | None = Field(
        None,
        description="On reads: the rail's kill switch is on (new sessions, proofs and apply "
        "are refused until staff resume it)",
    )


class SettlementOut(Model):
    # slot (Solana) or block_number and confirmations (EVM) appear only where they apply;
    # tx_hash where the proof names no transaction (an x402 payment's settlement).
    finality: str
    is_final: bool
    reorged: bool
    observed_at: Time
    slot: int | None = None
    block_number: int | None = None
    confirmations: int | None = None
    tx_hash: str | None = None


class ProofOut(Model):
    id: str
    fingerprint: str
    rail_id: str
    proof_type: str
    reference: str
    session_id: str
    owner_id: str
    status: str = Field(description="verified | failed | pending | requires_review")
    failure_code: str | None
    detail: str | None
    attempts: int
    settlement: SettlementOut | None
    receipt_id: str | None
    created_at: Time
    updated_at: Time
    rail_paused: bool | None = Field(
        None,
        description="On reads: the rail's kill switch is on (new sessions, proofs and apply "
        "are refused until staff resume it)",
    )


class EntitlementOut(Model):
    id: str
    owner_id: str
    access_product_id: str
    status: str = Field(description="pending | active | revoked")
    receipt_id: str | None
    session_id: str | None
    reorg_flagged: bool
    updated_at: Time


class EndpointOut(Model):
    id: str
    url: str
    event_types: list[str]
    owners: list[str]
    active: bool
    created_at: Time


class EndpointCreatedOut(EndpointOut):
    secret: str = Field(description="The signing secret: shown in this answer only")


class EndpointDeletedOut(EndpointOut):
    cancelled_deliveries: int


# -- bodies out: staff -----------------------------------------------------------------------


class RailOut(Model):
    rail_id: str
    family: str
    stage: str
    network: str
    asset: str
    asset_symbol: str
    decimals: int
    proof_types: list[str]
    production_enabled: bool
    paused: bool
    treasury: str | None


class ReadinessOut(Model):
    rail_id: str
    stage: str
    network: str
    production_enabled: bool
    paused: bool
    live_verifier_configured: bool
    apply_allowlisted: bool
    receipt_creation_allowed: bool
    ready: bool
    blockers: list[str]
    rpc_policy: Json
    release_gates: dict[str, Literal["passed", "failed", "missing", "expired"]] = Field(
        description="Each release gate's standing: production enablement needs all passed"
    )


class ProofContractOut(Model):
    rail_id: str
    stage: str
    family: str
    network: str
    asset_symbol: str
    decimals: int
    accepted_proof_types: list[str]
    required_fields: dict[str, list[str]]
    finality_requirement: str
    live_verification: bool
    receipt_mapping: str
    activation: str


class AttemptOut(Model):
    id: int
    proof_id: str
    status: str
    failure_code: str | None
    detail: str | None
    observed: Json | None = Field(description="What the chain said, redacted")
    rpc_calls: int
    latency_ms: int
    source: str
    worker: str | None
    created_at: Time


class EvidenceOut(Model):
    id: int
    proof_id: str
    attempt_id: int | None
    finality: str
    is_final: bool
    reorged: bool
    slot: int | None
    block_number: int | None
    block_hash: str | None
    confirmations: int | None
    tx_hash: str | None = None
    detail: str | None
    source: str | None
    observed_at: Time


class StuckClaimOut(Model):
    principal: str
    endpoint: str
    key: str
    request_hash: str
    status: str
    created_at: Time


class ApprovalOut(Model):
    approval_id: str
    rail_id: str
    kind: str
    value: str
    status: str
    requested_by: str
    approved_by: str | None
    incident_id: str | None
    reason: str | None
    created_at: Time
    decided_at: Time | None


class ApprovalRequestOut(Model):
    approval_id: str
    status: str


class ReceiptOut(Model):
    id: str
    proof_id: str
    session_id: str
    owner_id: str
    access_product_id: str
    rail_id: str
    amount: AmountText
    created_by: str
    created_at: Time


class EntitlementDetailOut(EntitlementOut):
    created_at: Time
    receipt: ReceiptOut | None = Field(description="The receipt that activated it, if any")


class AuditEventOut(Model):
    id: int
    at: Time
    actor: str
    action: str
    subject_type: str
    subject_id: str | None
    data: Json | None
    incident_id: str | None
    reason: str | None
    hash: str


class AuditChainOut(Model):
    ok: bool
    events: int
    first_broken_id: int | None
    message: str
    keyed: bool


class AssuranceTruncatedOut(Model):
    category: str
    listed: int = Field(description="How many of its issues `issues` lists")
    total: int = Field(description="How many it has in all")


class AssuranceSummaryOut(Model):
    status: str = Field(description="ok | warning | error | critical: the worst severity found")
    score: int
    alert_count: int = Field(description="Every finding, including those not listed")
    period_days: int | None = Field(description="The window checked; null: all stored data")
    since: Time | None = Field(description="Where the window starts")
    truncated: list[AssuranceTruncatedOut] = Field(
        description="Categories with more findings than the report lists (each also has an "
        "issue `<category>:more`); empty: the report is whole"
    )


class AssuranceIssueOut(Model):
    id: str = Field(description="Stable while the issue stands: what a repair names")
    category: str
    severity: Literal["critical", "error", "warning", "info"]
    subject: str
    repair: str = Field(description="What to do about it")
    repairable: bool = Field(description="POST /v1/admin/assurance/repairs can repair it")


class AssuranceRepairOut(Model):
    issue_id: str
    category: str
    subject: str
    action: str = Field(description="What the repair did")
    result: Json = Field(description="The answer of the staff action the repair ran")


class AssuranceOut(Model):
    summary: AssuranceSummaryOut
    issues: list[AssuranceIssueOut]


class AlertSpecOut(Model):
    name: str
    expr: str
    severity: str
    summary: str
    for_: str


class MetricSpecOut(Model):
    name: str
    kind: str
    help: str
    labels: list[str]
    alerts: list[AlertSpecOut]


class ObservabilitySpecOut(Model):
    metrics: list[MetricSpecOut]


class CheckOut(Model):
    name: str
    passed: bool
    detail: str


class BlockerOut(Model):
    code: str = Field(description="The name of the check that failed")
    detail: str


class DryRunOut(Model):
    proof_id: str
    rail_id: str
    would_apply: bool
    would_create_receipt: bool
    would_activate_entitlement: bool
    already_applied: bool
    checks: list[CheckOut]
    blockers: list[BlockerOut]


class ApplyOut(Model):
    applied: bool
    already_applied: bool
    receipt_id: str
    entitlement_id: str | None


class PauseOut(Model):
    rail_id: str
    paused: bool
    changed: bool


class RevokeOut(Model):
    id: str
    status: str
    receipt_id: str | None


class DeliveryOut(Model):
    delivery_id: str
    event_id: str
    type: str
    owner_id: str | None
    resource_type: str
    resource_id: str
    sequence: int
    endpoint_id: str
    url: str = Field(description="The endpoint's URL, redacted")
    endpoint_active: bool
    status: str
    attempts: int
    last_error: str | None
    last_status_code: int | None
    next_attempt_at: Time | None
    delivered_at: Time | None
    claimed_by: str | None
    claimed_until: Time | None
    created_at: Time
    updated_at: Time


class EventEnvelopeOut(Model):
    id: str
    type: str
    created_at: Time
    owner_id: str | None
    data: Json


class EventOut(Model):
    event: EventEnvelopeOut
    resource_type: str
    resource_id: str
    sequence: int
    deliveries: list[DeliveryOut]


class ReleaseGateEvidenceIn(OperatorIn):
    # Only JSON true confirms: the kill-switch drill pauses the rail for its duration.
    confirm: StrictBool = False
    # The evidence file's text (rehearsal evidence, deployed alert rules) and its sha256.
    evidence: Annotated[str, Field(min_length=1, max_length=60_000)] | None = None
    evidence_sha256: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")] | None = None
    note: Annotated[str, Field(max_length=1000)] | None = None


class ReleaseGateRecordOut(Model):
    evidence_id: str
    rail_id: str
    gate: str
    outcome: Literal["passed", "failed"]
    evidence_sha256: str | None
    detail: Json
    recorded_by: str
    incident_id: str
    operator_reason: str
    recorded_at: Time


class ReleaseGateOut(Model):
    gate: str
    kind: Literal["drill", "rehearsal", "check", "attestation"]
    description: str
    status: Literal["passed", "failed", "missing", "expired"]
    evidence: ReleaseGateRecordOut | None


class ReleaseGatesOut(Model):
    rail_id: str
    complete: bool
    gates: list[ReleaseGateOut]


class ReplayOut(Model):
    event_id: str
    replayed: list[str]
    status: str
    next_attempt_at: Time


ErrorDetail.model_rebuild()
