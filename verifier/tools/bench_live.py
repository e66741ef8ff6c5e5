"""`railproof bench --live-rpc`: verification through the live Solana transport
(`rails.transport.solana_http.SolanaRpcTransport`) against a loopback replay node.

The node runs in its own process (`python -m verifier.tools.bench_live serve CASSETTE`) so
that the client's CPU time (`time.process_time()` of this process, every thread included) is
the transport's and the engine's, not the node's. It serves the synthetic proofs of
`verifier.tools.bench` (recorded cassettes from fixtures/, fresh signatures) as a Solana node
would: single and batch JSON-RPC, `getTransaction` at `finalized` only for a transaction whose
recorded status is finalized, and it counts HTTP requests (round trips) and JSON-RPC calls.
Its handler sets TCP_NODELAY, or every answer waits ~40 ms for a delayed ACK.

Figures (docs/bench.md, "Live RPC path"):

    live_verify_per_s                    verifications per second, one client, in sequence
    live_client_cpu_ms                   client CPU time per verification
    live_round_trips_per_verification    HTTP requests the node received per verification

Nothing here prints, except the node's port line; the CLI prints the returned dict.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson

from rails import adapter_for
from rails.base import Status
from registry.catalog import load_catalog
from verifier.core.checking import run_verify
from verifier.tools.bench import NETWORK, RAIL_ID, _terms, synthetic_proofs

WARMUP = 50
_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"


# -- the replay node ------------------------------------------------------------------------------


class ReplayAnswers:
    """What the node knows: per signature, its getTransaction result (serialized once) and its
    getSignatureStatuses entry, from one or more cassettes."""

    def __init__(self, cassettes: list[Path]):
        self.tx: dict[str, bytes] = {}
        self.status: dict[str, Any] = {}
        self.context_slot = 0
        for path in cassettes:
            for c in orjson.loads(Path(path).read_bytes())["calls"]:
                params = c.get("params") or []
                if c.get("error") is not None or not params:
                    continue
                if c["method"] == "getTransaction" and c.get("result") is not None:
                    self.tx.setdefault(params[0], orjson.dumps(c["result"]))
                elif c["method"] == "getSignatureStatuses":
                    result = c["result"]
                    self.context_slot = max(self.context_slot, result["context"]["slot"])
                    for sig, value in zip(params[0], result["value"], strict=True):
                        self.status.setdefault(sig, value)
        self.lock = threading.Lock()
        self.http_requests = 0
        self.calls = 0

    def answer(self, raw: bytes) -> bytes:
        request = orjson.loads(raw)
        with self.lock:
            self.http_requests += 1
            self.calls += len(request) if isinstance(request, list) else 1
        if isinstance(request, list):
            return b"[" + b",".join(self._one(r) for r in request) + b"]"
        return self._one(request)

    def _one(self, request: dict[str, Any]) -> bytes:
        rid = orjson.dumps(request.get("id"))
        method = request.get("method")
        params = request.get("params") or []
        if method == "getTransaction" and params:
            sig = params[0]
            opts = params[1] if len(params) > 1 and isinstance(params[1], dict) else {}
            blob = self.tx.get(sig)
            status = self.status.get(sig) or {}
            # A node's default commitment is finalized: it answers null for a transaction that
            # is only confirmed so far.
            if opts.get("commitment", "finalized") == "finalized" and (
                status.get("confirmationStatus") != "finalized"
            ):
                blob = None
            result = blob if blob is not None else b"null"
        elif method == "getSignatureStatuses" and params and isinstance(params[0], list):
            result = orjson.dumps(
                {
                    "context": {"slot": self.context_slot},
                    "value": [self.status.get(s) for s in params[0]],
                }
            )
        else:
            err = {"code": -32601, "message": f"Method not found: {method}"}
            return b'{"jsonrpc":"2.0","id":%s,"error":%s}' % (rid, orjson.dumps(err))
        return b'{"jsonrpc":"2.0","id":%s,"result":%s}' % (rid, result)

    def stats(self) -> dict[str, int]:
        with self.lock:
            return {"http_requests": self.http_requests, "calls": self.calls}


def _handler(answers: ReplayAnswers) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # TCP_NODELAY: without it each answer waits for the client's delayed ACK (~40 ms).
        disable_nagle_algorithm = True

        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, body: bytes) -> None:
            # Status line, headers and body in one write: one segment per answer.
            head = (
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            )
            self.wfile.write(head % len(body) + body)

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self._send(answers.answer(raw))

        def do_GET(self) -> None:  # /stats: what the node has served so far
            self._send(orjson.dumps(answers.stats()))

    return Handler


def serve(cassettes: list[Path], port: int = 0) -> None:
    """Run the replay node on 127.0.0.1 until killed; print `PORT <n>` once listening."""
    httpd = ThreadingHTTPServer(("127.0.0.1", port), _handler(ReplayAnswers(cassettes)))
    httpd.daemon_threads = True
    print(f"PORT {httpd.server_address[1]}", flush=True)
    httpd.serve_forever()


class NodeProcess:
    """The replay node in a child process, serving `cassettes`."""

    def __init__(self, cassettes: list[Path]):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "verifier.tools.bench_live", "serve", *map(str, cassettes)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if len(line) != 2 or line[0] != "PORT":
            self.stop()
            raise RuntimeError("the replay node did not start")
        self.url = f"http://127.0.0.1:{line[1]}/"

    def stats(self) -> dict[str, int]:
        # Straight to 127.0.0.1, whatever proxy the environment names.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(self.url + "stats", timeout=5) as r:
            return dict(json.loads(r.read()))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> NodeProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


@contextlib.contextmanager
def replay_node(proofs: list[Any]) -> Iterator[NodeProcess]:
    """A node serving `proofs` (bench.Synthetic): their calls written as one cassette."""
    with tempfile.TemporaryDirectory(prefix="railproof-live-bench-") as tmp:
        path = Path(tmp) / "synthetic.json"
        calls = [
            {"method": c.method, "params": c.params, "result": c.result}
            for p in proofs
            for c in p.calls
        ]
        doc = {"cassette": 1, "network": NETWORK, "source": "bench synthetic", "calls": calls}
        path.write_bytes(orjson.dumps(doc))
        with NodeProcess([path]) as node:
            yield node


# -- the measurement --------------------------------------------------------------------------


def measure(transport: Any, proofs: list[Any], node: NodeProcess) -> dict[str, Any]:
    """Verify every proof once through `transport` (after a warm-up) and read the node's
    counters: rate, client CPU per verification, round trips per verification."""
    adapter = adapter_for(load_catalog().resolve(RAIL_ID))
    terms = [_terms(p) for p in proofs]
    for p, t in list(zip(proofs, terms, strict=True))[:WARMUP]:
        run_verify(adapter, p.signature, t, transport)
    before = node.stats()
    verified = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for p, t in zip(proofs, terms, strict=True):
        verified += run_verify(adapter, p.signature, t, transport).verdict.status is Status.verified
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    after = node.stats()
    n = len(proofs)
    return {
        "live_verify_per_s": round(n / wall, 1),
        "live_client_cpu_ms": round(cpu * 1000 / n, 3),
        "live_round_trips_per_verification": round(
            (after["http_requests"] - before["http_requests"]) / n, 3
        ),
        "live_rpc_calls_per_verification": round((after["calls"] - before["calls"]) / n, 3),
        "live_verified": verified,
        "live_proofs": n,
    }


def run_live_bench(proofs: int = 2000) -> dict[str, Any]:
    """`railproof bench --live-rpc`: `proofs` synthetic finalized transfers, each verified once
    through the live transport against the loopback replay node."""
    from rails.transport.solana_http import SolanaRpcTransport

    if proofs < 10:
        raise ValueError("proofs: at least 10")
    synthetic = synthetic_proofs(proofs)
    with replay_node(synthetic) as node:
        with SolanaRpcTransport([node.url], NETWORK) as transport:
            return measure(transport, synthetic, node)


# -- the design choice, measured (docs/bench.md, "Live RPC path") --------------------------------


def finalized_first_transport(urls: list[str]) -> Any:
    """The alternative to the batch: `getTransaction` at `finalized`, and at `confirmed` (with
    its status, batched) only when the node has nothing finalized. A finalized transaction
    stands in for its status, so the status answer is made up from the transaction — which is
    why it is not the transport railproof uses (a recording would hold a status no node sent)."""
    from rails.transport.solana_http import SolanaRpcTransport

    class FinalizedFirst(SolanaRpcTransport):
        def call(self, method: str, params: list[Any], deadline: float | None = None) -> Any:
            made = getattr(self._local, "made", None)
            self._local.made = None
            if method == "getSignatureStatuses" and made is not None and params[0] == [made[0]]:
                return made[1]
            if method == "getTransaction" and len(params) == 2 and isinstance(params[1], dict):
                self.batch_status = False  # the finalized question goes alone
                try:
                    final = super().call(
                        method, [params[0], {**params[1], "commitment": "finalized"}], deadline
                    )
                finally:
                    self.batch_status = True
                if final is None:
                    return super().call(method, params, deadline)  # confirmed, with its status
                status = {
                    "slot": final["slot"],
                    "confirmations": None,
                    "err": final["meta"]["err"],
                    "confirmationStatus": "finalized",
                }
                self._local.made = (
                    params[0],
                    {"context": {"slot": final["slot"]}, "value": [status]},
                )
                return final
            return super().call(method, params, deadline)

    return FinalizedFirst(urls, NETWORK)


def _confirmed_only(proofs: list[Any]) -> list[Any]:
    """The same proofs, each only confirmed so far (12 confirmations)."""
    from dataclasses import replace

    from rails.cassette import Call

    out = []
    for p in proofs:
        tx, st = p.calls
        value = dict(st.result["value"][0], confirmationStatus="confirmed", confirmations=12)
        status = Call(
            {"method": st.method, "params": st.params, "result": {**st.result, "value": [value]}}
        )
        out.append(replace(p, calls=(tx, status)))
    return out


def compare_strategies(proofs: int = 2000) -> dict[str, dict[str, Any]]:
    """Every strategy on finalized and on confirmed-only transfers, one node per workload:
    `batch` (railproof's), `finalized_first`, `unbatched` (two calls, two round trips)."""
    from rails.transport.solana_http import SolanaRpcTransport

    out: dict[str, dict[str, Any]] = {}
    finalized = synthetic_proofs(proofs)
    for workload, synthetic in (
        ("finalized", finalized),
        ("confirmed", _confirmed_only(finalized)),
    ):
        with replay_node(synthetic) as node:
            for name, make in (
                ("batch", lambda: SolanaRpcTransport([node.url], NETWORK)),
                ("finalized_first", lambda: finalized_first_transport([node.url])),
                ("unbatched", lambda: SolanaRpcTransport([node.url], NETWORK, batch_status=False)),
            ):
                with make() as transport:
                    out[f"{name}/{workload}"] = measure(transport, synthetic, node)
    return out


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "serve":
        serve([Path(p) for p in sys.argv[2:]])
    elif len(sys.argv) in (2, 3) and sys.argv[1] == "compare" and sys.argv[-1].isdigit():
        sys.stdout.write(json.dumps(compare_strategies(int(sys.argv[-1])), indent=2) + "\n")
    else:
        sys.stdout.write(
            "usage: python -m verifier.tools.bench_live serve CASSETTE... | compare PROOFS\n"
        )
        sys.exit(2)
