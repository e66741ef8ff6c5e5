"""EVM: trouble while an answer's body is read is retried and fails over.

The EVM transport reads each answer itself (`_Session.post`: `stream=True`, then
`read_bounded(urllib3_chunks(response.raw), ...)`), so what goes wrong there is urllib3's own
error (`ProtocolError` for a connection dropped mid-answer, `ReadTimeoutError` for a node that
stalls mid-answer, `DecodeError` for a gzip answer that does not inflate), where requests used
to wrap it. Unwrapped, the call stopped at the first URL (no retry, no failover), and what left
`EvmHttpTransport.call` was no `TransportError`, which every caller handles (inflow scans,
discovery, reconciliation, the quorum's finality). README "Reliability", docs/reliability.md
"first URL down, second up": transient trouble is retried and fails over."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from rails import adapter_class
from rails.base import Terms
from rails.errors import TransportError
from rails.transport.evm_http import EvmHttpTransport
from rails.transport.failover import RetryPolicy
from registry.catalog import load_catalog
from tests import loopback_http as loopback
from verifier.core.checking import run_verify

CASSETTE = Path(__file__).resolve().parent.parent / "fixtures" / "evm" / "eth_usdc_transfer.json"
TX = "0x225853c513c75a4276979841a480ad1856bc649c496c16765107cb5d62d1def7"
RECIPIENT = "0xc1AF05a7A4F27Cd1b61De823EA31aB5049b38eA8"
AMOUNT = 59691936965  # the recorded transfer (tests/test_evm_adapter.py)
NOW = datetime(2025, 3, 1, tzinfo=UTC)
FAST = RetryPolicy(
    attempts=2, per_url_seconds=5, total_seconds=8, timeout=1.0, initial_wait=0.01,
    max_wait=0.01, jitter=0,
)  # fmt: skip
FAULTS = ("cut_mid_answer", "stall_mid_answer", "gzip_that_does_not_inflate")


def _recorded() -> dict[tuple[str, str], object]:
    calls = json.loads(CASSETTE.read_text())["calls"]
    return {(c["method"], json.dumps(c["params"])): c["result"] for c in calls}


@pytest.fixture
def honest_node() -> Iterator[str]:
    """Answers the recorded calls of fixtures/evm/eth_usdc_transfer.json."""
    answers = _recorded()

    class Handler(loopback.Handler):
        def do_POST(self) -> None:  # noqa: N802
            req = json.loads(self.body())
            key = (req["method"], json.dumps(req["params"]))
            out = {"jsonrpc": "2.0", "id": req["id"]}
            if key in answers:
                out["result"] = answers[key]
            else:
                out["error"] = {"code": -32601, "message": "not recorded"}
            self.answer(json.dumps(out).encode())

    with loopback.serving(Handler) as base:
        yield f"{base}/v2/HONEST"


def _faulty_node(fault: str, release: threading.Event) -> type[loopback.Handler]:
    class Handler(loopback.Handler):
        def do_POST(self) -> None:  # noqa: N802
            req = json.loads(self.body())
            good = json.dumps({"jsonrpc": "2.0", "id": req["id"], "result": "0x1"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            if fault == "gzip_that_does_not_inflate":
                body = b"\x1f\x8b\x08\x00" + b"not deflate data at all" * 4
                self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            self.send_header("Content-Length", str(len(good) + 500))
            self.end_headers()
            self.wfile.write(good[:10])  # part of the answer, then ...
            self.wfile.flush()
            if fault == "stall_mid_answer":
                release.wait(5.0)  # ... nothing more, past the client's read timeout
            self.close_connection = True  # ... or the connection drops

    return Handler


@pytest.fixture(params=FAULTS)
def faulty_node(request) -> Iterator[str]:
    release = threading.Event()
    try:
        with loopback.serving(_faulty_node(request.param, release)) as base:
            yield f"{base}/v2/FAULTY"
    finally:
        release.set()


def test_trouble_mid_answer_is_a_transport_error(faulty_node):
    chain = EvmHttpTransport([faulty_node], "ethereum", FAST)
    try:
        chain.call("eth_blockNumber", [])
    except TransportError:
        return  # pending rpc_unavailable, as the README says
    except Exception as e:  # noqa: BLE001 - what escapes is the finding
        pytest.fail(f"{type(e).__module__}.{type(e).__name__} escaped the EVM transport: {e}")
    pytest.fail("a broken answer was returned as a result")


def test_trouble_mid_answer_fails_over_to_the_next_url(faulty_node, honest_node):
    chain = EvmHttpTransport([faulty_node, honest_node], "ethereum", FAST)
    try:
        answer = chain.call("eth_chainId", [])
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"no failover to the second URL: {type(e).__module__}.{type(e).__name__}: {e}")
    assert answer == "0x1"


def test_a_payment_verifies_through_the_second_url(faulty_node, honest_node):
    """docs/reliability.md: "first URL down, second up | failover reached the second URL"."""
    rail = load_catalog().resolve("evm_usdc")
    adapter = adapter_class(rail.family)(rail)
    terms = Terms(recipient=RECIPIENT, amount=AMOUNT, now=NOW)
    alone = run_verify(
        adapter, TX, terms, EvmHttpTransport([honest_node], rail.network, FAST)
    ).verdict
    assert alone.status.value == "verified", alone  # the honest node alone pays
    both = run_verify(
        adapter, TX, terms, EvmHttpTransport([faulty_node, honest_node], rail.network, FAST)
    ).verdict
    assert (both.status, both.code) == (alone.status, alone.code), (
        f"the honest second URL says {alone.status}/{alone.code}; with a first URL that broke "
        f"mid-answer: {both.status}/{both.code} ({both.detail})"
    )
