"""Recording a live chain into a cassette (`railproof record`).

`RecordingTransport` wraps any transport, passes every call through and keeps what came back
(the raw `result`, or the JSON-RPC error object); `.write()` saves them in the cassette format
that `rails.transport.cassette` replays, so a recorded answer is parsed by the same code as a
live one.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson

from rails.errors import RpcErrorResponse
from rails.transport.failover import provider_of


class RecordingTransport:
    def __init__(self, inner: Any):
        self.inner = inner
        self.source = inner.source
        self.calls: list[dict[str, Any]] = []

    def call(self, method: str, params: list[Any]) -> Any:
        try:
            result = self.inner.call(method, params)
        except RpcErrorResponse as e:
            self.calls.append({"method": method, "params": copy.deepcopy(params), "error": e.error})
            raise
        # Transient failures (no answer at all) are not recorded: there is nothing to replay.
        self.calls.append(
            {"method": method, "params": copy.deepcopy(params), "result": copy.deepcopy(result)}
        )
        return result

    def cassette(self, network: str, source: str) -> dict[str, Any]:
        return {"cassette": 1, "network": network, "source": source, "calls": list(self.calls)}

    def write(self, path: str | Path, network: str, source: str) -> Path:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(
            orjson.dumps(self.cassette(network, source), option=orjson.OPT_INDENT_2) + b"\n"
        )
        return out


def live_transport_for(network: str, urls: list[str]) -> Any:
    """The live transport of the family that owns `network` in the catalog."""
    from rails import adapter_class
    from registry.catalog import load_catalog

    net = load_catalog().networks.get(network)
    if net is None:
        raise KeyError(f"network {network!r} is not in the catalog")
    return adapter_class(net.family).live_transport(urls, network)


def record(
    network: str,
    urls: list[str],
    requests: list[tuple[str, list[Any]]],
    out_path: str | Path,
    transport: Any | None = None,
) -> Path:
    """Ask a live node each (method, params) and write the answers as one cassette.

    A JSON-RPC error is recorded as the call's `error`; an unreachable node aborts the
    recording (RpcUnavailable propagates) rather than writing a partial cassette.
    """
    inner = transport if transport is not None else live_transport_for(network, urls)
    rec = RecordingTransport(inner)
    try:
        for method, params in requests:
            try:
                rec.call(method, list(params))
            except RpcErrorResponse:
                continue  # kept in the cassette as an error call
    finally:
        close = getattr(inner, "close", None)
        if transport is None and callable(close):
            close()
    hosts = ", ".join(provider_of(u) for u in urls)  # never a key-bearing path
    return rec.write(out_path, network, f"recorded by railproof record from {hosts}")
