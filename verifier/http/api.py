"""The HTTP API's public names, where callers have always imported them from: the app
factory (verifier.http.app), request models (verifier.http.models) and the 401 error."""

from verifier.http.app import MAX_BODY_BYTES, create_app
from verifier.http.errors import Unauthorized
from verifier.http.models import (
    MAX_AMOUNT,
    ConfirmIn,
    DryRunIn,
    OperatorIn,
    ProductionIn,
    ProofIn,
    SessionIn,
    TreasuryIn,
    parse_amount,
)

__all__ = [
    "MAX_AMOUNT",
    "MAX_BODY_BYTES",
    "ConfirmIn",
    "DryRunIn",
    "OperatorIn",
    "ProductionIn",
    "ProofIn",
    "SessionIn",
    "TreasuryIn",
    "Unauthorized",
    "create_app",
    "parse_amount",
]
