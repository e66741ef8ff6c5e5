"""Moved to `rails.transport.recording`; this path stays because the verifier
package imports it."""

from rails.transport.recording import (
    RecordingTransport,
    live_transport_for,
    record,
)

__all__ = [
    "RecordingTransport",
    "live_transport_for",
    "record",
]
