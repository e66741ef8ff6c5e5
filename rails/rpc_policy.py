"""Moved to `rails.transport.rpc_policy`; this path stays because the verifier
package imports it."""

from rails.transport.rpc_policy import (
    RpcPolicy,
    call_end,
    stop_at,
    time_left,
)

__all__ = [
    "RpcPolicy",
    "call_end",
    "stop_at",
    "time_left",
]
