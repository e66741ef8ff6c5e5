"""Moved to `rails.transport.cassette`; this path stays because the verifier
package imports it."""

from rails.transport.cassette import (
    Call,
    CassetteTransport,
    CountingTransport,
    discover,
    read_cassette,
)

__all__ = [
    "Call",
    "CassetteTransport",
    "CountingTransport",
    "discover",
    "read_cassette",
]
