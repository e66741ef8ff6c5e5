"""Moved to `rails.transport.solana_http`; this path stays because the verifier
package imports it."""

from rails.transport.solana_http import (
    RetryPolicy,
    SolanaRpcTransport,
    redact_url,
)

__all__ = [
    "RetryPolicy",
    "SolanaRpcTransport",
    "redact_url",
]
