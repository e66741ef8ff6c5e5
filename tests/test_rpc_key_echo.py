"""A node that quotes the API key itself (not the whole URL) never puts it in a proof's
detail, which the tenant reads.

`rails.transport.failover.scrub` removed the configured URL, its path and query, its query,
its path and its user information, each as one whole string. A provider's error that names the
key alone ("invalid api key K", as gateways write them) contains none of those, so the key
went into the verdict's detail. Each path segment, query value and password long enough to be
a key is now removed too, as written and decoded."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from rails import adapter_class
from rails.base import Terms, Verdict
from rails.codes import FailureCode
from rails.transport.failover import RetryPolicy
from registry.catalog import load_catalog
from tests import loopback_http as loopback
from verifier.core.checking import run_verify

KEY = "PROVIDERKEY"
CASES = {  # rail: (proof, recipient)
    "evm_usdc": (
        "0x225853c513c75a4276979841a480ad1856bc649c496c16765107cb5d62d1def7",
        "0xc1AF05a7A4F27Cd1b61De823EA31aB5049b38eA8",
    ),
    "solana_usdc": (
        "2QDmA4v3FomQSDNL2KuZVbq9pfWQ1PcABZjZnZ4ZA51jsmZrdCbo9nAZQ2iqT5tcx1HKD8bfHtUXnbWmDLUzhH2T",
        "C1bL1CaQ6PjLKZyYRn11ZtydLqEfGUxdcvUS3frx8ocg",
    ),
    "tron_usdt": (
        "b69c51db8f9d974e6a38c76852c8ce1adcb682dbacb25ad8ad4f6876121fe9dc",
        "TUikLT3nTTjTkXPAuC4xUGj84vfSERCWRn",
    ),
}
FAST = RetryPolicy(attempts=1, per_url_seconds=3, total_seconds=5, timeout=2, initial_wait=0.01)


def echoing_handler(key_of: Callable[[str], str]) -> type[loopback.Handler]:
    """A node answering every call with the provider's usual refusal, naming the key
    `key_of` reads from the request's path."""

    class Handler(loopback.Handler):
        def do_POST(self) -> None:  # noqa: N802
            raw = self.body()
            key = key_of(self.path)
            if "/wallet/" in self.path:  # Tron's HTTP API
                out: Any = {"Error": f"invalid api key {key}"}
            else:
                err = {"code": -32052, "message": f"invalid api key {key}"}
                req = json.loads(raw or b"{}")
                one = lambda r: {"jsonrpc": "2.0", "id": r.get("id"), "error": err}  # noqa: E731
                out = [one(r) for r in req] if isinstance(req, list) else one(req)
            self.answer(json.dumps(out).encode())

    return Handler


@pytest.fixture
def echoing_node() -> Iterator[str]:
    """The key as the node decodes it from the query."""
    Handler = echoing_handler(  # noqa: N806
        lambda path: parse_qs(urlsplit(path).query).get("api-key", ["?"])[0]
    )
    with loopback.serving(Handler) as base:
        yield f"{base}/rpc?api-key={KEY}"


@pytest.mark.parametrize("rail_id", list(CASES))
def test_a_node_naming_the_key_never_puts_it_in_a_verdict(echoing_node, rail_id):
    v = verdict_through(echoing_node, rail_id)
    assert v.code is FailureCode.rpc_unavailable, v
    assert KEY not in v.detail, f"the provider's key reached the tenant: {v.detail}"


def verdict_through(url: str, rail_id: str) -> Verdict:
    """The verdict on the rail's recorded proof, asked of the node at `url` alone."""
    rail = load_catalog().resolve(rail_id)
    proof, recipient = CASES[rail_id]
    chain = adapter_class(rail.family).live_transport([url], rail.network)
    if isinstance(getattr(chain, "policy", None), RetryPolicy):
        chain.policy = FAST
    adapter = adapter_class(rail.family)(rail)
    terms = Terms(recipient=recipient, amount=1, now=datetime(2027, 2, 1, tzinfo=UTC))
    return run_verify(adapter, proof, terms, chain).verdict
