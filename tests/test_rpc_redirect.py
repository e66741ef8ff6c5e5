"""The EVM transport followed an RPC node's HTTP redirects to any other host; it follows none.

The Solana transport sends every request with `redirect=False` and the Tron transport's httpx
client does not follow redirects; the EVM transport goes through web3's HTTPProvider, i.e.
`requests.Session.post`, which follows up to 30 redirects to any host by default
(rails/transport/evm_http.py builds `_Provider` without turning that off).

So a configured RPC URL (a provider, a gateway, a hijacked DNS name) can make the engine send
requests to a host nobody configured — internal services included (a 303 turns the POST into
a GET, e.g. to a cloud metadata endpoint) — and web3 quotes the body it could not decode
into the MalformedResponse, whose text becomes the proof's `detail`, read by the tenant:
a server-side request forgery whose answer comes back to the tenant. Here the "other host"
is `localhost` (another host name on loopback), standing in for any host.

Expected: a redirect is not followed (as on Solana and Tron): the URL's answer is a 3xx, which
is `pending rpc_unavailable`, and the other host never hears from us.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from rails import adapter_class
from rails.base import Status, Terms
from rails.codes import FailureCode
from rails.transport.failover import RetryPolicy
from registry.catalog import load_catalog
from tests import loopback_http as loopback
from verifier.core.checking import run_verify

ETH_TX = "0x225853c513c75a4276979841a480ad1856bc649c496c16765107cb5d62d1def7"
ETH_TO = "0xc1AF05a7A4F27Cd1b61De823EA31aB5049b38eA8"
INTERNAL = b"INTERNAL-ONLY role=admin token=AKIA-NOT-FOR-TENANTS"
FAST = RetryPolicy(attempts=1, per_url_seconds=5, total_seconds=5, timeout=3, initial_wait=0.01)


@pytest.fixture
def internal_host() -> Iterator[tuple[str, list[str]]]:
    """A host nobody configured (an internal service): records every request it gets."""
    seen: list[str] = []

    class Internal(loopback.Handler):
        def _answer(self) -> None:
            self.body()
            seen.append(f"{self.command} {self.path}")
            self.answer(INTERNAL, {"Content-Type": "text/plain"})

        do_GET = do_POST = _answer  # noqa: N815

    with loopback.serving(Internal) as base:
        yield base, seen


@pytest.mark.parametrize("code", [303, 307])
def test_the_evm_transport_does_not_follow_a_redirect_to_another_host(internal_host, code):
    internal, seen = internal_host

    class Redirecting(loopback.Handler):
        def do_POST(self) -> None:  # noqa: N802
            self.body()
            self.send_response(code)
            self.send_header("Location", f"{internal}/latest/meta-data/iam")
            self.send_header("Content-Length", "0")
            self.end_headers()

    rail = load_catalog().resolve("evm_usdc")
    with loopback.serving(Redirecting) as base:
        chain = adapter_class(rail.family).live_transport([f"{base}/v2/PROVIDERKEY"], rail.network)
        chain.policy = FAST
        adapter = adapter_class(rail.family)(rail)
        terms = Terms(recipient=ETH_TO, amount=1, now=datetime(2027, 2, 1, tzinfo=UTC))
        v = run_verify(adapter, ETH_TX, terms, chain).verdict
    assert (v.status, v.code) == (Status.pending, FailureCode.rpc_unavailable), v
    assert "INTERNAL-ONLY" not in v.detail, (
        f"the other host's answer reached the tenant: {v.detail}"
    )
    assert seen == [], f"the engine followed HTTP {code} to a host nobody configured: {seen}"
