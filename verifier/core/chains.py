"""Which transport answers for a network: the cassette directory (replay) or live RPC URLs.
Everything above this line is the same code either way.

Two shapes of live access:

- `transport(family, network)`: one transport over every configured URL, tried in order
  (retries per URL, then failover) — the first URL that answers is believed;
- `independent(family, network)`: one transport per distinct URL, each with its own retries
  and no failover, for the RPC quorum (RAILPROOF_RPC_QUORUM > 1): `verify` then asks every
  node and believes only what a quorum of them agree on (verifier.checking.decide_quorum).

Cassette replay is one recorded chain, so the quorum does not apply to it.

Live transports get the network's RPC policy from settings (Settings.rpc_policy: timeout,
attempts, total time). `verify(..., budget_s=)` bounds one whole verification further (the
submission path, verifier.checking.verify_within); `finality` is the worker's refresh, through
the quorum when there is one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

from rails import adapter_class
from rails.base import Adapter, Settlement, Terms, Transport
from rails.cassette import Call, CassetteTransport, discover, read_cassette
from rails.errors import RpcUnavailable
from verifier.core.checking import (
    Checked,
    run_finality_quorum,
    run_verify,
    run_verify_quorum,
    verify_within,
)
from verifier.core.config import Settings

# (family, urls, network) → a live transport; the default is the family adapter's own.
LiveFactory = Callable[[str, list[str], str], Transport]


class _NoRpc:
    source = "live"

    def __init__(self, network: str):
        self.network = network

    def call(self, method, params):
        env = "RAILPROOF_RPC_" + self.network.upper().replace("-", "_")
        raise RpcUnavailable(f"no RPC URL configured for {self.network} (set {env})")


class Chains:
    def __init__(self, settings: Settings, catalog=None, live_factory: LiveFactory | None = None):
        self.settings = settings
        self.catalog = catalog
        self._live_factory = live_factory or self._default_live
        self._lock = threading.Lock()
        self._by_network: dict[str, Transport] = {}
        self._independent: dict[str, list[Transport]] = {}
        self._cassette_calls: dict[str, list[Call]] | None = None
        # (network, provider, kind) of each RPC URL that failed a call: the engine counts them.
        self.on_provider_failure: Callable[[str, str, str], None] | None = None

    def _default_live(self, family: str, urls: list[str], network: str) -> Transport:
        transport = adapter_class(family, self.catalog).live_transport(urls, network)
        # The family builds its transport; the deployment's bounds for the network are set on
        # it here, so adapters never read settings.
        set_policy = getattr(transport, "set_policy", None)
        if set_policy is not None:
            set_policy(self.settings.rpc_policy(network))
        set_observer = getattr(transport, "set_failure_observer", None)
        if set_observer is not None:
            set_observer(lambda provider, kind: self._provider_failed(network, provider, kind))
        return transport

    def _provider_failed(self, network: str, provider: str, kind: str) -> None:
        if self.on_provider_failure is not None:
            self.on_provider_failure(network, provider, kind)

    def _load_cassettes(self) -> dict[str, list[Call]]:
        if self._cassette_calls is None:
            calls: dict[str, list[Call]] = {}
            directory = Path(self.settings.cassette_dir)
            for p in discover(directory) if directory.is_dir() else []:
                doc = read_cassette(p)
                calls.setdefault(doc["network"], []).extend(Call(c) for c in doc["calls"])
            self._cassette_calls = calls
        return self._cassette_calls

    # -- one transport per network (failover across URLs) ------------------------------------

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
        return self._live_factory(family, urls, network)

    def set_transport(self, network: str, transport: Transport) -> None:
        """Tests and local chains plug a transport in for a network."""
        with self._lock:
            self._by_network[network] = transport

    # -- one transport per URL (the quorum) ---------------------------------------------------

    def quorum(self, network: str) -> int:
        """How many independent nodes must agree for `network`: RAILPROOF_RPC_QUORUM on live
        chains (or where a test plugged independent transports), 1 on a recorded chain."""
        with self._lock:
            plugged = network in self._independent
        if self.settings.chain == "live" or plugged:
            return self.settings.rpc_quorum
        return 1

    def independent(self, family: str, network: str) -> list[Transport]:
        with self._lock:
            ts = self._independent.get(network)
            if ts is None:
                # SECURITY: the same node listed twice is one vote, however its URL is
                # written (case, a slash, an empty query, another API key on the same host).
                by_node: dict[tuple[str, int | None], str] = {}
                for url in self.settings.rpc_urls(network):
                    by_node.setdefault(node_of(url), url)
                urls = list(by_node.values())
                ts = [self._live_factory(family, [url], network) for url in urls]
                self._independent[network] = ts
            return ts

    def set_independent_transports(self, network: str, transports: list[Transport]) -> None:
        """Tests plug the quorum's nodes in for a network."""
        with self._lock:
            self._independent[network] = list(transports)

    # -- one verification ------------------------------------------------------------------------

    def verify(
        self, adapter: Adapter, proof: str, terms: Terms, budget_s: float | None = None
    ) -> Checked:
        """One verification of `proof` on the adapter's rail: through the quorum of independent
        nodes when one is configured, otherwise through the network's transport. `budget_s`:
        answer within that time (pending rpc_unavailable when the chain has not decided)."""
        rail = adapter.rail
        quorum = self.quorum(rail.network)
        transports: list[Transport]
        if quorum > 1:
            transports = self.independent(rail.family, rail.network)

            def run(ts: list[Transport]) -> Checked:
                return run_verify_quorum(adapter, proof, terms, ts, quorum)
        else:
            transports = [self.transport(rail.family, rail.network)]

            def run(ts: list[Transport]) -> Checked:
                return run_verify(adapter, proof, terms, ts[0])

        # A recorded chain answers from memory: nothing to bound, no thread to pay for.
        if budget_s is None or all(t.source == "cassette" for t in transports):
            return run(transports)
        return verify_within(budget_s, transports, run)

    def finality(
        self,
        adapter: Adapter,
        refs: list[str],
        expected: Mapping[str, tuple[str, int]] | None = None,
    ) -> tuple[list[Settlement], str]:
        """The settlements of `refs` (normalized refs of verified proofs) and their source:
        with a quorum, only those the nodes agree on (verifier.checking.decide_settlement)."""
        rail = adapter.rail
        quorum = self.quorum(rail.network)
        if quorum > 1:
            nodes = self.independent(rail.family, rail.network)
            return (
                run_finality_quorum(adapter, refs, nodes, quorum, expected),
                nodes[0].source if nodes else "live",
            )
        chain = self.transport(rail.family, rail.network)
        return adapter.finality(refs, chain, expected=expected), chain.source


def node_of(url: str) -> tuple[str, int | None]:
    """The node a URL reaches, as the quorum counts nodes: its host (any case) and port (the
    scheme's default written out)."""
    u = urlsplit(url.strip())
    try:
        port = u.port
    except ValueError:  # refused with its variable named at startup (config)
        port = None
    scheme = u.scheme.lower()
    if port is None:
        port = {"http": 80, "https": 443, "ws": 80, "wss": 443}.get(scheme)
    return ((u.hostname or "").rstrip(".").lower(), port)
