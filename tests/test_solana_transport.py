"""The live Solana transport against a JSON-RPC server on 127.0.0.1 (tests/jsonrpc_server.py):
raw results, retries on 429/5xx/timeouts/dropped connections, failover, bounded attempts and
time, error mapping, and pending (never failed) when every URL is down; plus recording."""

from __future__ import annotations

import socket
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from rails import adapter_for
from rails.base import Status, Terms
from rails.codes import FailureCode
from rails.errors import MalformedResponse, RpcErrorResponse, RpcUnavailable, UnmatchedRequest
from rails.solana import SolanaAdapter
from rails.transport.cassette import CassetteTransport
from rails.transport.recording import RecordingTransport, record
from rails.transport.solana_http import RetryPolicy, SolanaRpcTransport, redact_url
from registry.catalog import load_catalog
from tests.jsonrpc_server import Fault, JsonRpcServer
from verifier.core.checking import run_verify

SOL = Path(__file__).resolve().parent.parent / "fixtures" / "solana"
USDC_SIG = (
    "2S2rTZjaqzxYRw9mnqzwtyqitKtSsnE8GVqLn1KrD5R2YpXZnU4GdjppsgfSAbrzJfaqadfi8CtrqEBy588WVQ3E"
)
USDC_TO = "3i476kTBBTy7pBGx4CXwJpJ6phuwLQgcwLTdHhU3c7ui"
NOW = datetime(2026, 1, 1, tzinfo=UTC)
FAST = RetryPolicy(
    attempts=3, timeout=0.5, total_seconds=5.0, backoff_initial=0.01, backoff_max=0.05
)
# Generous safety bound for a test that must finish; not a speed claim.
BOUND_S = 10.0


@pytest.fixture
def srv():
    with JsonRpcServer() as s:
        yield s


@pytest.fixture
def srv2():
    with JsonRpcServer() as s:
        yield s


def closed_url() -> str:
    """A 127.0.0.1 port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@pytest.fixture
def transport_for():
    made: list[SolanaRpcTransport] = []

    def make(urls: list[str], policy: RetryPolicy = FAST) -> SolanaRpcTransport:
        t = SolanaRpcTransport(urls, "solana-mainnet", policy)
        made.append(t)
        return t

    yield make
    for t in made:
        t.close()


def real_answers() -> dict[str, Any]:
    calls = orjson.loads((SOL / "usdc_transfer.json").read_bytes())["calls"]
    return {c["method"]: c["result"] for c in calls}


def serve_usdc(s: JsonRpcServer) -> None:
    answers = real_answers()
    s.answer(
        "getTransaction",
        lambda params: answers["getTransaction"] if params[0] == USDC_SIG else None,
    )
    s.answer("getSignatureStatuses", answers["getSignatureStatuses"])


def usdc_terms(**over: Any) -> Terms:
    return Terms(**({"recipient": USDC_TO, "amount": 1000, "now": NOW} | over))


@pytest.fixture(scope="module")
def adapter() -> SolanaAdapter:
    return adapter_for(load_catalog().resolve("solana_usdc"))


# -- plain answers ----------------------------------------------------------------------------------


def test_returns_the_raw_result_and_sends_params_verbatim(srv, transport_for):
    srv.answer("getSlot", 123)
    srv.answer("getTransaction", None)
    t = transport_for([srv.url])
    assert t.source == "live"
    assert t.call("getSlot", []) == 123
    params = [USDC_SIG, {"encoding": "jsonParsed", "maxSupportedTransactionVersion": 0}]
    assert t.call("getTransaction", params) is None  # a null result stays null
    # Sent with its status request in one batch, the transaction's params exactly as asked.
    asked = srv.requests[-2]
    assert asked["params"] == params and asked["method"] == "getTransaction"
    assert srv.requests[-1]["method"] == "getSignatureStatuses"


def test_live_verification_is_verified_with_two_calls_in_one_round_trip(
    srv, transport_for, adapter
):
    serve_usdc(srv)
    c = run_verify(adapter, USDC_SIG, usdc_terms(), transport_for([srv.url]))
    assert c.verdict.status is Status.verified, c.verdict.detail
    assert c.verdict.settlement is not None and c.verdict.settlement.finality == "finalized"
    assert (c.rpc_calls, c.source) == (2, "live")
    assert srv.round_trips == 1
    assert [r["method"] for r in srv.requests] == ["getTransaction", "getSignatureStatuses"]
    assert srv.requests[0]["params"][1] == {
        "encoding": "jsonParsed",
        "maxSupportedTransactionVersion": 0,
        "commitment": "confirmed",
    }


def test_live_lying_node_is_not_verified(srv, transport_for, adapter):
    answers = real_answers()
    srv.answer("getTransaction", answers["getTransaction"])  # whatever is asked
    srv.answer("getSignatureStatuses", answers["getSignatureStatuses"])
    other = (
        "5hJfaZoyjTrJcchXLFXRySgDMtGRiLsqvmrtpXcQjZq1Zc2d7Qj3LisaAtaFDtS9tDdv4aZ5n4fbtJNfVMCNV8Lj"
    )
    c = run_verify(adapter, other, usdc_terms(), transport_for([srv.url]))
    assert (c.verdict.status, c.verdict.code) == (Status.pending, FailureCode.rpc_unavailable)


# -- retries -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "faults",
    [
        [Fault.status(429), Fault.status(429)],
        [Fault.status(500), Fault.status(503)],
        [Fault.slow(1.5)],  # longer than the 0.5 s request timeout
        [Fault.drop(), Fault.status(502)],
    ],
    ids=["429", "5xx", "timeout", "dropped"],
)
def test_transient_faults_are_retried_on_the_same_url(srv, transport_for, faults):
    srv.answer("getSlot", 7)
    srv.push(*faults)
    t = transport_for([srv.url])
    assert t.call("getSlot", []) == 7
    assert srv.count("getSlot") == len(faults) + 1 == t.attempts


def test_attempts_per_url_are_bounded_then_the_next_url_answers(srv, srv2, transport_for):
    srv.push(*[Fault.status(500)] * 10)
    srv2.answer("getSlot", 99)
    t = transport_for([srv.url, srv2.url])
    assert t.call("getSlot", []) == 99
    assert srv.count() == FAST.attempts and srv2.count() == 1


def test_a_client_error_status_fails_over_without_retrying(srv, srv2, transport_for):
    srv.push(Fault.status(403))
    srv2.answer("getSlot", 5)
    t = transport_for([srv.url, srv2.url])
    assert t.call("getSlot", []) == 5
    assert srv.count() == 1


def test_total_time_per_url_is_bounded(srv, transport_for):
    srv.push(*[Fault.slow(0.4)] * 50)
    srv.answer("getSlot", 1)
    policy = RetryPolicy(
        attempts=50, timeout=0.2, total_seconds=0.6, backoff_initial=0.01, backoff_max=0.02
    )
    t = transport_for([srv.url], policy)
    started = time.monotonic()
    with pytest.raises(RpcUnavailable):
        t.call("getSlot", [])
    assert time.monotonic() - started < BOUND_S
    assert 1 < t.attempts < 50  # the time budget, not the attempt budget, stopped it


def test_every_url_down_raises_rpc_unavailable(transport_for):
    t = transport_for([closed_url(), closed_url()])
    started = time.monotonic()
    with pytest.raises(RpcUnavailable) as e:
        t.call("getSlot", [])
    assert time.monotonic() - started < BOUND_S
    assert t.attempts == 2 * FAST.attempts
    assert "every RPC URL failed" in str(e.value)


def test_every_url_down_is_pending_never_failed(transport_for, adapter):
    c = run_verify(adapter, USDC_SIG, usdc_terms(), transport_for([closed_url(), closed_url()]))
    assert (c.verdict.status, c.verdict.code) == (Status.pending, FailureCode.rpc_unavailable)


def test_every_url_throttled_is_pending_never_failed(srv, srv2, transport_for, adapter):
    srv.push(*[Fault.status(429)] * 10)
    srv2.push(*[Fault.status(503)] * 10)
    c = run_verify(adapter, USDC_SIG, usdc_terms(), transport_for([srv.url, srv2.url]))
    assert (c.verdict.status, c.verdict.code) == (Status.pending, FailureCode.rpc_unavailable)
    assert srv.round_trips == srv2.round_trips == FAST.attempts


# -- answers that are not results -----------------------------------------------------------------------


def test_json_rpc_error_is_raised_not_retried(srv, srv2, transport_for, adapter):
    srv.push(Fault.rpc_error(-32005, "Node is unhealthy"))
    t = transport_for([srv.url, srv2.url])
    with pytest.raises(RpcErrorResponse) as e:
        t.call("getSlot", [])
    assert e.value.error["code"] == -32005 and srv.count() == 1 and srv2.count() == 0
    srv.push(Fault.rpc_error())
    c = run_verify(adapter, USDC_SIG, usdc_terms(), t)
    assert (c.verdict.status, c.verdict.code) == (Status.pending, FailureCode.rpc_unavailable)


@pytest.mark.parametrize(
    "body", [b"<html>gateway</html>", b"[1, 2]", b'{"jsonrpc": "2.0", "id": 1}', b""]
)
def test_garbage_is_a_malformed_response(srv, transport_for, body):
    srv.push(Fault.malformed(body))
    with pytest.raises(MalformedResponse):
        transport_for([srv.url]).call("getSlot", [])


def test_urls_are_redacted_in_errors(transport_for):
    port = closed_url().rsplit(":", 1)[1].rstrip("/")
    secret_url = f"http://127.0.0.1:{port}/v1/SECRET-KEY?api-key=SECRET"
    assert redact_url(secret_url) == f"http://127.0.0.1:{port}"
    with pytest.raises(RpcUnavailable) as e:
        transport_for([secret_url]).call("getSlot", [])
    assert "SECRET" not in str(e.value)


def test_calls_from_many_threads_share_one_transport(srv, transport_for):
    srv.answer("echo", lambda params: params[0])
    t = transport_for([srv.url])
    out: dict[int, Any] = {}

    def work(i: int) -> None:
        out[i] = t.call("echo", [i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(BOUND_S)
    assert out == {i: i for i in range(16)}


def test_live_transport_classmethod_builds_this_transport():
    t = SolanaAdapter.live_transport(["http://127.0.0.1:1/"], "solana-mainnet")
    try:
        assert isinstance(t, SolanaRpcTransport) and t.source == "live"
    finally:
        t.close()


# -- recording -------------------------------------------------------------------------------------------


def test_recorded_cassette_replays_to_the_same_verdict(srv, transport_for, adapter, tmp_path):
    serve_usdc(srv)
    rec = RecordingTransport(transport_for([srv.url]))
    live = run_verify(adapter, USDC_SIG, usdc_terms(), rec)
    path = rec.write(tmp_path / "rec.json", "solana-mainnet", "test server")
    replay = run_verify(adapter, USDC_SIG, usdc_terms(), CassetteTransport.from_files([path]))
    assert live.verdict.status is replay.verdict.status is Status.verified
    assert live.verdict.observed == replay.verdict.observed
    assert (replay.source, replay.rpc_calls) == ("cassette", 2)


def test_record_writes_results_and_errors(srv, tmp_path):
    srv.answer("getTransaction", lambda params: None)
    srv.answer("getSlot", 77)
    srv.push(Fault.rpc_error(-32009, "Slot skipped"))  # the first request gets an error object
    out = record(
        "solana-mainnet",
        [srv.url + "secret-path"],
        [
            ("getBlock", [1]),
            ("getTransaction", [USDC_SIG, {"encoding": "jsonParsed"}]),
            ("getSlot", []),
        ],
        tmp_path / "out" / "c.json",
    )
    doc = orjson.loads(out.read_bytes())
    assert (
        doc["cassette"] == 1
        and doc["network"] == "solana-mainnet"
        and "secret-path" not in doc["source"]
    )
    assert [c["method"] for c in doc["calls"]] == ["getBlock", "getTransaction", "getSlot"]
    assert doc["calls"][0]["error"]["code"] == -32009
    assert doc["calls"][1]["result"] is None and doc["calls"][2]["result"] == 77
    replay = CassetteTransport.from_files([out])
    assert replay.call("getSlot", []) == 77
    with pytest.raises(RpcErrorResponse):
        replay.call("getBlock", [1])


# -- one round trip: the transaction and its status in one batch -------------------------------------

GEN = SOL / "generated"


# The demo payment's terms, for the cassettes that state none (the demo and what a node
# may say about it: another transaction, an error, nothing).
DEMO_TERMS = {"recipient": "C1bL1CaQ6PjLKZyYRn11ZtydLqEfGUxdcvUS3frx8ocg", "amount": 25_000_000}


def generated_terms(doc: dict[str, Any]) -> Terms:
    exp = doc.get("expect", {}) if "recipient" in doc.get("expect", {}) else DEMO_TERMS
    base = {"recipient": exp["recipient"], "amount": exp["amount"], "now": GEN_NOW}
    if "asset" in exp:
        base["asset"] = exp["asset"]
    return Terms(**base)


GEN_NOW = datetime(2026, 1, 1, 0, 5, tzinfo=UTC)  # inside the generated cassettes' windows


def serve_cassette(s: JsonRpcServer, replay: CassetteTransport) -> None:
    """The node answers what the cassette recorded: results, error objects, and an error for a
    call it never recorded (as the cassette path raises for it)."""

    def answer(method: str):
        def one(params: list[Any]) -> Any:
            try:
                return replay.call(method, params)
            except RpcErrorResponse as e:
                return Fault("rpc_error", error=e.error)
            except UnmatchedRequest:
                return Fault.rpc_error(-32601, f"{method} not recorded")

        return one

    s.answer("getTransaction", answer("getTransaction"))
    s.answer("getSignatureStatuses", answer("getSignatureStatuses"))


def verdict_view(c: Any) -> tuple[Any, ...]:
    v = c.verdict
    return (v.status, v.code, v.detail, v.observed, v.settlement, v.transfer_keys)


@pytest.mark.parametrize("name", sorted(p.stem for p in GEN.glob("*.json")) + ["usdc_transfer"])
def test_the_batched_live_path_decides_as_the_cassette_path(transport_for, adapter, name):
    path = GEN / f"{name}.json" if (GEN / f"{name}.json").exists() else SOL / f"{name}.json"
    doc = orjson.loads(path.read_bytes())
    sig = doc["calls"][0]["params"][0]
    terms = usdc_terms() if name == "usdc_transfer" else generated_terms(doc)
    replayed = run_verify(adapter, sig, terms, CassetteTransport.from_files([path]))
    with JsonRpcServer() as node:
        serve_cassette(node, CassetteTransport.from_files([path]))
        live = run_verify(adapter, sig, terms, transport_for([node.url]))
        assert verdict_view(live) == verdict_view(replayed)
        assert live.rpc_calls == replayed.rpc_calls  # the adapter asked the same calls
        assert node.round_trips == 1  # whatever the verdict: one request to the node


def test_a_node_error_on_the_status_half_is_pending_never_failed(srv, transport_for, adapter):
    answers = real_answers()
    srv.answer("getTransaction", answers["getTransaction"])
    srv.answer("getSignatureStatuses", Fault.rpc_error(-32014, "Block status not yet available"))
    c = run_verify(adapter, USDC_SIG, usdc_terms(), transport_for([srv.url]))
    assert (c.verdict.status, c.verdict.code) == (Status.pending, FailureCode.rpc_unavailable)
    assert "Block status not yet available" in c.verdict.detail
    assert srv.round_trips == 1  # the node answered: an error object is not retried


def test_a_malformed_status_half_is_pending_never_failed(srv, transport_for, adapter):
    answers = real_answers()
    srv.answer("getTransaction", answers["getTransaction"])
    srv.answer("getSignatureStatuses", {"context": {"slot": 1}, "value": "not a list"})
    c = run_verify(adapter, USDC_SIG, usdc_terms(), transport_for([srv.url]))
    assert (c.verdict.status, c.verdict.code) == (Status.pending, FailureCode.rpc_unavailable)
    assert "MalformedResponse" in c.verdict.detail


def test_an_error_on_the_transaction_half_is_pending_and_its_status_is_not_used(
    srv, transport_for, adapter
):
    answers = real_answers()
    srv.answer("getTransaction", Fault.rpc_error(-32005, "Node is unhealthy"))
    srv.answer("getSignatureStatuses", answers["getSignatureStatuses"])
    t = transport_for([srv.url])
    c = run_verify(adapter, USDC_SIG, usdc_terms(), t)
    assert (c.verdict.status, c.verdict.code) == (Status.pending, FailureCode.rpc_unavailable)
    # The status fetched alongside answers nothing later: the next status call goes out.
    assert t.call("getSignatureStatuses", [[USDC_SIG], {"searchTransactionHistory": True}])
    assert srv.round_trips == 2


def test_the_batch_is_solders_batch_request(srv, transport_for):
    from solders.rpc.config import RpcSignatureStatusConfig, RpcTransactionConfig
    from solders.rpc.requests import GetSignatureStatuses, GetTransaction, batch_to_json
    from solders.signature import Signature
    from solders.transaction_status import UiTransactionEncoding

    srv.answer("getTransaction", None)
    srv.answer("getSignatureStatuses", {"context": {"slot": 1}, "value": [None]})
    opts = {"encoding": "jsonParsed", "maxSupportedTransactionVersion": 0}
    transport_for([srv.url]).call("getTransaction", [USDC_SIG, opts])
    tx, status = srv.requests
    sig = Signature.from_string(USDC_SIG)
    config = RpcTransactionConfig(
        encoding=UiTransactionEncoding.JsonParsed, max_supported_transaction_version=0
    )
    expected = batch_to_json(
        [
            GetTransaction(sig, config, tx["id"]),
            GetSignatureStatuses(
                [sig], RpcSignatureStatusConfig(search_transaction_history=True), status["id"]
            ),
        ]
    )
    assert [tx, status] == orjson.loads(expected)


def test_a_kept_status_serves_only_the_next_call_for_its_signature(srv, transport_for):
    answers = real_answers()
    srv.answer("getTransaction", answers["getTransaction"])
    statuses = iter(range(1, 100))
    srv.answer("getSignatureStatuses", lambda params: {"context": {"slot": next(statuses)}})
    srv.answer("getSlot", 5)
    t = transport_for([srv.url])
    tx_params = [USDC_SIG, {"encoding": "jsonParsed", "maxSupportedTransactionVersion": 0}]
    status_params = [[USDC_SIG], {"searchTransactionHistory": True}]
    t.call("getTransaction", tx_params)
    assert t.call("getSignatureStatuses", status_params) == {"context": {"slot": 1}}
    assert srv.round_trips == 1
    # Used once: asked again, the node answers anew.
    assert t.call("getSignatureStatuses", status_params) == {"context": {"slot": 2}}
    # Another call in between drops it.
    t.call("getTransaction", tx_params)  # fetches status 3 alongside
    t.call("getSlot", [])
    assert t.call("getSignatureStatuses", status_params) == {"context": {"slot": 4}}
    # Another thread never sees this thread's kept answer.
    t.call("getTransaction", tx_params)  # status 5 kept for this thread
    seen: list[Any] = []
    other = threading.Thread(
        target=lambda: seen.append(t.call("getSignatureStatuses", status_params))
    )
    other.start()
    other.join(BOUND_S)
    assert seen == [{"context": {"slot": 6}}]
    assert t.call("getSignatureStatuses", status_params) == {"context": {"slot": 5}}


def test_without_batching_a_verification_takes_two_round_trips(srv, adapter):
    serve_usdc(srv)
    with SolanaRpcTransport([srv.url], "solana-mainnet", FAST, batch_status=False) as t:
        c = run_verify(adapter, USDC_SIG, usdc_terms(), t)
    assert c.verdict.status is Status.verified
    assert srv.round_trips == 2 and [r["method"] for r in srv.requests] == [
        "getTransaction",
        "getSignatureStatuses",
    ]


@pytest.mark.parametrize(
    "refusal",
    [
        Fault.status(400),
        Fault.malformed(
            b'{"jsonrpc":"2.0","id":null,"error":{"code":-32600,'
            b'"message":"batch requests are not supported"}}'
        ),
    ],
    ids=["http-400", "one-object"],
)
def test_a_node_refusing_batches_is_asked_alone_from_then_on(srv, transport_for, adapter, refusal):
    serve_usdc(srv)
    srv.push(refusal)
    t = transport_for([srv.url])
    first = run_verify(adapter, USDC_SIG, usdc_terms(), t)
    assert first.verdict.status is Status.verified, first.verdict.detail
    assert srv.round_trips == 3  # the refused batch, then each call alone
    second = run_verify(adapter, USDC_SIG, usdc_terms(), t)
    assert second.verdict.status is Status.verified
    assert srv.round_trips == 5  # no batch tried again
    assert all(isinstance(r, dict) for r in srv.requests[-2:])
