"""A typed client for railproof's service API, and webhook verification.

from railproof_client import RailproofClient

with RailproofClient("http://127.0.0.1:8000", token="…") as rp:
    session = rp.open_session(owner_id="o", rail_id="solana_usdc",
                              access_product_id="pro", amount=1_500_000)
"""

from railproof_client.client import (
    OPERATIONS,
    AsyncRailproofClient,
    RailproofClient,
    new_idempotency_key,
)
from railproof_client.errors import (
    ApiError,
    AuthenticationError,
    ConflictError,
    ConnectionFailed,
    InvalidRequestError,
    NotFoundError,
    RailproofError,
    RateLimitedError,
    ServerError,
    UnexpectedResponse,
    WebhookVerificationError,
)
from railproof_client.models import (
    Entitlement,
    ErrorDetail,
    Health,
    OpenSessionRequest,
    Proof,
    Readiness,
    ReadinessCheck,
    Session,
    Settlement,
    SubmitProofRequest,
    WebhookEvent,
)
from railproof_client.webhooks import WebhookVerifier, verify_webhook

__all__ = [
    "OPERATIONS",
    "ApiError",
    "AsyncRailproofClient",
    "AuthenticationError",
    "ConflictError",
    "ConnectionFailed",
    "Entitlement",
    "ErrorDetail",
    "Health",
    "InvalidRequestError",
    "NotFoundError",
    "OpenSessionRequest",
    "Proof",
    "RailproofClient",
    "RailproofError",
    "RateLimitedError",
    "Readiness",
    "ReadinessCheck",
    "ServerError",
    "Session",
    "Settlement",
    "SubmitProofRequest",
    "UnexpectedResponse",
    "WebhookEvent",
    "WebhookVerificationError",
    "WebhookVerifier",
    "new_idempotency_key",
    "verify_webhook",
]
