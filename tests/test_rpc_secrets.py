"""An RPC provider's key never reaches what a tenant reads (a proof's detail) or a staff
record (a reconciliation run), whatever its node answers: providers put keys in URL paths and
queries, and nodes and gateways quote the URL they were asked on (an HTML error page, a
JSON-RPC error's message or data, Tron's `{"Error": ...}`). And a node cutting its answer
short is trouble reaching the chain (`pending`), never a 500."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from rails import adapter_class
from rails.base import Terms
from rails.codes import FailureCode
from rails.rpc_policy import RpcPolicy
from rails.transport.evm_http import EvmHttpTransport
from rails.transport.failover import RetryPolicy
from registry.catalog import load_catalog
from tests.conftest import SERVICE_TOKEN, STAFF_TOKEN, auth
from tests.helpers import cassette_engine
from tests.live_server import handler_server
from verifier.core.checking import run_verify
from verifier.core.config import Settings
from verifier.core.engine import Engine
from verifier.http.api import create_app
from verifier.services import reconciliation
from verifier.storage.db import upgrade

KEY = "PROVIDERKEY"
Answer = Callable[[str, bytes], tuple[int, str, bytes, int]]

ETH_TX = "0x225853c513c75a4276979841a480ad1856bc649c496c16765107cb5d62d1def7"
ETH_TO = "0xc1AF05a7A4F27Cd1b61De823EA31aB5049b38eA8"
ETH_FROM = "0x28C6c06298d514Db089934071355E5743bf21d60"
SOL_SIG = "2QDmA4v3FomQSDNL2KuZVbq9pfWQ1PcABZjZnZ4ZA51jsmZrdCbo9nAZQ2iqT5tcx1HKD8bfHtUXnbWmDLUzhH2T"
CASES = {  # rail: (proof, recipient, amount)
    "evm_usdc": (ETH_TX, ETH_TO, 59691936965),
    "base_usdc": (ETH_TX, ETH_TO, 59691936965),
    "solana_usdc": (SOL_SIG, "C1bL1CaQ6PjLKZyYRn11ZtydLqEfGUxdcvUS3frx8ocg", 25000000),
    "tron_usdt": (
        "b69c51db8f9d974e6a38c76852c8ce1adcb682dbacb25ad8ad4f6876121fe9dc",
        "TUikLT3nTTjTkXPAuC4xUGj84vfSERCWRn",
        3_500_000,
    ),
}
FAST = RetryPolicy(
    attempts=1,
    per_url_seconds=3,
    total_seconds=5,
    initial_wait=0.01,
    max_wait=0.02,
    jitter=0.01,
    timeout=2,
)


@contextmanager
def node(answer: Answer) -> Iterator[str]:
    """A node on 127.0.0.1 answering every request with `answer(url asked, body)`; yields its
    URL with a key in the path and the query, as providers hand them out."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            host, port = self.server.server_address[:2]
            code, ctype, out, declared = answer(f"http://{host}:{port}{self.path}", body)
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(declared))
            if declared != len(out):
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args: Any) -> None:
            pass

    with handler_server(Handler) as url:
        yield f"{url}/v2/{KEY}1?api-key={KEY}2"


def html_page(url: str, body: bytes) -> tuple[int, str, bytes, int]:
    page = f"<html><body>Gateway error for {url}</body></html>".encode()
    return 200, "text/html", page, len(page)


def jsonrpc_error(url: str, body: bytes) -> tuple[int, str, bytes, int]:
    req = json.loads(body or b"{}")
    err = {"code": -32000, "message": f"unauthorized key for {url}", "data": {"url": url}}
    one = lambda r: {"jsonrpc": "2.0", "id": r.get("id"), "error": err}  # noqa: E731
    out = json.dumps([one(r) for r in req] if isinstance(req, list) else one(req)).encode()
    return 200, "application/json", out, len(out)


def tron_error(url: str, body: bytes) -> tuple[int, str, bytes, int]:
    out = json.dumps({"Error": f"bad key {url}"}).encode()
    return 200, "application/json", out, len(out)


def cut_short(url: str, body: bytes) -> tuple[int, str, bytes, int]:
    return 200, "application/json", b'{"jsonrpc":"2.0","id":1,', 400


@pytest.mark.parametrize(
    ("rail_id", "answer"),
    [
        ("evm_usdc", html_page),  # web3 quotes the body it could not decode
        ("evm_usdc", jsonrpc_error),
        ("base_usdc", html_page),  # Base and x402 share the EVM transport
        ("base_usdc", jsonrpc_error),
        ("solana_usdc", jsonrpc_error),
        ("solana_usdc", html_page),
        ("tron_usdt", tron_error),
    ],
)
def test_a_node_quoting_its_url_never_puts_the_key_in_a_verdict(rail_id, answer):
    rail = load_catalog().resolve(rail_id)
    proof, recipient, amount = CASES[rail_id]
    with node(answer) as url:
        chain = adapter_class(rail.family).live_transport([url], rail.network)
        if isinstance(getattr(chain, "policy", None), RetryPolicy):
            chain.policy = FAST
        adapter = adapter_class(rail.family)(rail)
        now = datetime(2027, 2, 1, tzinfo=UTC)
        checked = run_verify(
            adapter, proof, Terms(recipient=recipient, amount=amount, now=now), chain
        )
    v = checked.verdict
    assert v.code is FailureCode.rpc_unavailable, v
    assert KEY not in v.detail and KEY not in repr(v.observed), v.detail
    assert url.split("/v2/")[0] in v.detail or "JSON-RPC" in v.detail, v.detail


def _live_engine(db: str, env: dict[str, str]) -> Engine:
    upgrade(db)
    settings = Settings(
        database_url=db,
        chain="live",
        service_tokens={SERVICE_TOKEN: ["alice"]},
        staff_tokens={STAFF_TOKEN: "ops1"},
        env=env,
        rpc_attempts=1,
        audit_key="k",
    )
    engine = Engine(settings)
    engine.ensure_rail_states()
    return engine


EVM_SESSION = {
    "owner_id": "alice",
    "rail_id": "evm_usdc",
    "access_product_id": "pro",
    "amount": 59691936965,
    "recipient": ETH_TO,
    "payer": ETH_FROM,
}


@pytest.mark.parametrize("answer", [html_page, jsonrpc_error, cut_short])
def test_the_tenant_reads_pending_and_never_the_key(tmp_path: Path, answer):
    with node(answer) as url:
        engine = _live_engine(f"sqlite:///{tmp_path}/r.db", {"RAILPROOF_RPC_ETHEREUM": url})
        try:
            with TestClient(create_app(engine), raise_server_exceptions=False) as c:
                r = c.post("/v1/payment-sessions", headers=auth(), json=EVM_SESSION)
                assert r.status_code == 201, r.text
                r = c.post(
                    "/v1/proofs",
                    headers=auth(),
                    json={"session_id": r.json()["id"], "proof": ETH_TX},
                )
                # An answer cut short was a 500 (an exception no layer took for transient).
                assert r.status_code == 201, r.text
                view = r.json()
                assert (view["status"], view["failure_code"]) == ("pending", "rpc_unavailable")
                again = c.get(f"/v1/proofs/{view['id']}", headers=auth()).text
        finally:
            engine.db.dispose()
    assert KEY not in r.text and KEY not in again, r.text


@pytest.mark.parametrize("answer", [html_page, jsonrpc_error])
def test_a_reconciliation_run_names_the_provider_never_its_key(tmp_path: Path, answer):
    from tests.test_reconciliation import OPS

    db = f"sqlite:///{tmp_path}/r.db"
    upgrade(db)
    engine = cassette_engine(db, env={"RAILPROOF_TREASURY_EVM_USDC": ETH_TO})
    try:
        with node(answer) as url:
            chain = EvmHttpTransport([url], "ethereum")  # as the deployment builds it
            chain.set_policy(RpcPolicy(timeout_s=2.0, attempts=1, total_s=5.0))
            engine.chains.set_transport("ethereum", chain)
            out = reconciliation.run(
                engine,
                reconciliation.RunRequest(scope="chain_inflows", rail_id="evm_usdc", **OPS),
                "ops1",
            )
            stored = reconciliation.get_run(engine, out["id"])
    finally:
        engine.db.dispose()
    assert out["status"] == "incomplete" and url.split("/v2/")[0] in out["detail"], out
    assert KEY not in repr(out) and KEY not in repr(stored), out["detail"]


def test_scrubbed_errors_keep_what_is_not_a_url():
    # The scrub cuts the URL's parts only: the node's own words stay for the operator.
    from rails.errors import RpcErrorResponse
    from rails.transport.failover import scrubbed

    url = f"https://rpc.example/v2/{KEY}?api-key={KEY}"
    e = scrubbed(RpcErrorResponse("eth_call", {"message": f"rate limited on {url}"}), [url])
    assert KEY not in str(e) and KEY not in repr(e.error)
    assert "rate limited on https://rpc.example" in e.error["message"]
