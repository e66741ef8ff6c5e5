"""Which transport answers for a network: the cassette directory (replay) or live RPC URLs.
Everything above this line is the same code either way."""

from __future__ import annotations

import threading
from pathlib import Path

from rails import adapter_class
from rails.base import Transport
from rails.cassette import Call, CassetteTransport, discover, read_cassette
from rails.errors import RpcUnavailable
from verifier.config import Settings


class _NoRpc:
    source = "live"

    def __init__(self, network: str):
        self.network = network

    def call(self, method, params):
        env = "RAILPROOF_RPC_" + self.network.upper().replace("-", "_")
        raise RpcUnavailable(f"no RPC URL configured for {self.network} (set {env})")


class Chains:
    def __init__(self, settings: Settings, catalog=None):
        self.settings = settings
        self.catalog = catalog
        self._lock = threading.Lock()
        self._by_network: dict[str, Transport] = {}
        self._cassette_calls: dict[str, list[Call]] | None = None

    def _load_cassettes(self) -> dict[str, list[Call]]:
        if self._cassette_calls is None:
            calls: dict[str, list[Call]] = {}
            directory = Path(self.settings.cassette_dir)
            for p in discover(directory) if directory.is_dir() else []:
                doc = read_cassette(p)
                calls.setdefault(doc["network"], []).extend(Call(c) for c in doc["calls"])
            self._cassette_calls = calls
        return self._cassette_calls

    def transport(self, family: str, network: str) -> Transport:
        with self._lock:
            t = self._by_network.get(network)
            if t is None:
                t = self._make(family, network)
                self._by_network[network] = t
            return t

    def _make(self, family: str, network: str) -> Transport:
        if self.settings.chain == "cassette":
            return CassetteTransport(self._load_cassettes().get(network, []), network)
        urls = self.settings.rpc_urls(network)
        if not urls:
            return _NoRpc(network)
        return adapter_class(family, self.catalog).live_transport(urls, network)

    def set_transport(self, network: str, transport: Transport) -> None:
        """Tests and local chains plug a transport in for a network."""
        with self._lock:
            self._by_network[network] = transport
