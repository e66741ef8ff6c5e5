"""Moved to `rails.transport.rpc_policy`; this path stays because the verifier
package imports it."""

from rails.transport.rpc_policy import (
    MAX_RPC_S,
    RpcPolicy,
    call_end,
    stop_at,
    time_left,
)

__all__ = [
    "MAX_RPC_S",
    "RpcPolicy",
    "call_end",
    "stop_at",
    "time_left",
]
