"""The API's request and response bodies, as the OpenAPI document (`GET /openapi.json`)
defines them. `OPENAPI_SCHEMAS` names each model's schema there; railproof's test suite
compares every field, its type and whether it is required against the document, so a change
on either side fails until both agree.

Responses ignore fields they do not know (a newer server may add some); requests refuse them.
Amounts are integers of the asset's base units (USDC: 1500000 is 1.50); the API returns them
as strings of digits so no JSON reader rounds them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Response(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OpenSessionRequest(_Request):
    owner_id: str
    rail_id: str
    access_product_id: str
    # Strict, as the API is: a bool or a float is refused here, not sent as 1 or rounded.
    amount: int = Field(strict=True, description="base units of the rail's asset, never a decimal")
    reference: str | None = Field(
        default="auto",
        description='"auto": the server makes one; None: none (rails binding by payer)',
    )
    memo: str | None = None
    payer: str | None = None
    recipient: str | None = None
    expires_in_seconds: int | None = Field(default=None, strict=True)


class SubmitProofRequest(_Request):
    session_id: str
    proof: str | dict[str, Any]
    proof_type: str | None = None


class Session(_Response):
    id: str
    status: str
    owner_id: str
    rail_id: str
    access_product_id: str
    amount: str
    network: str
    asset: str
    recipient: str
    reference: str | None
    payer: str | None
    memo: str | None
    created_at: datetime
    expires_at: datetime
    paid_at: datetime | None
    payment_requirements: dict[str, Any] | None = Field(
        description="what the payer must do; its shape is the rail family's"
    )
    rail_paused: bool | None = Field(
        default=None, description="on reads: the rail's kill switch is on (staff resume it)"
    )


class Settlement(_Response):
    finality: str
    is_final: bool
    reorged: bool
    observed_at: datetime
    slot: int | None = None
    block_number: int | None = None
    confirmations: int | None = None
    tx_hash: str | None = None  # the settling transaction where the proof names none (x402)


class Proof(_Response):
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
    settlement: Settlement | None
    receipt_id: str | None
    created_at: datetime
    updated_at: datetime
    rail_paused: bool | None = Field(
        default=None, description="on reads: the rail's kill switch is on (staff resume it)"
    )


class Entitlement(_Response):
    id: str
    owner_id: str
    access_product_id: str
    status: str = Field(description="pending | active | revoked")
    receipt_id: str | None
    session_id: str | None
    reorg_flagged: bool
    updated_at: datetime


class Health(_Response):
    status: str
    chain: str


class ReadinessCheck(_Response):
    name: str
    ok: bool
    detail: str


class Readiness(_Response):
    status: Literal["ready", "not_ready"]
    checks: list[ReadinessCheck]


class ErrorDetail(_Response):
    """The `error` object of every error answer. Extra members some codes carry stay
    readable through `model_extra`."""

    model_config = ConfigDict(extra="allow", frozen=True)

    code: str
    message: str
    field: str | None = None
    proof_id: str | None = None
    retry_after: int | None = None
    report: dict[str, Any] | None = None


class WebhookEvent(_Response):
    """One delivered event: `data` is the resource as the API returns it."""

    id: str
    type: str
    created_at: datetime
    owner_id: str | None
    data: dict[str, Any]


# Client model → the name of its schema in the OpenAPI document.
OPENAPI_SCHEMAS: dict[type[BaseModel], str] = {
    OpenSessionRequest: "SessionIn",
    SubmitProofRequest: "ProofIn",
    Session: "SessionOut",
    Settlement: "SettlementOut",
    Proof: "ProofOut",
    Entitlement: "EntitlementOut",
    Health: "HealthOut",
    ReadinessCheck: "ReadyCheckOut",
    Readiness: "ReadyOut",
    ErrorDetail: "ErrorDetail",
    WebhookEvent: "EventEnvelopeOut",
}
