"""`railproof bench --http`: the API as a backend drives it, over HTTP, with many clients.

`railproof serve` is started on a free 127.0.0.1 port with `--workers W` on the given database
(a temporary SQLite by default), its chain replayed from cassettes the bench writes for its
synthetic proofs (verifier.tools.bench: recorded transfers with fresh signatures), so no
network is used. C client threads then run the README's walk-through, each unit a session
opened and a proof submitted, both with an Idempotency-Key, over one keep-alive connection
per client. Every answer is checked: a non-2xx answer, a proof that does not come back
`verified`, or a failed connection counts in `http_errors`.

Figures (docs/bench.md, "HTTP"):

    http_submit_per_s        session + proof units completed per second, all clients together
    http_p50_ms / p95 / p99  latency of one proof submission (POST /v1/proofs), client side
    http_session_p99_ms      the same for opening the session (POST /v1/payment-sessions)
    http_errors              failed requests (must be 0)

Nothing here prints; the CLI prints the returned dict.
"""

from __future__ import annotations

import http.client
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from verifier.tools import bench

TOKEN = "bench-service-token"  # a disposable server's own token, on loopback only
# The token acts for these owners; the claim's principal names them all, and it must fit
# idempotency_claims.principal (128 characters).
OWNERS = 8
WARMUP_PER_CLIENT = 3
START_TIMEOUT_S = 60.0

Progress = Callable[[str, int, int], None]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_cassette(proofs: list[bench.Synthetic], directory: Path) -> Path:
    """The synthetic proofs' chain as one cassette file the server's cassette mode reads."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "bench.json"
    doc = {
        "cassette": 1,
        "network": bench.NETWORK,
        "calls": [
            {"method": c.method, "params": c.params, "result": c.result}
            for p in proofs
            for c in p.calls
        ],
    }
    path.write_bytes(orjson.dumps(doc))
    return path


def server_env(database_url: str, cassette_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAILPROOF_")}
    env.update(
        {
            "RAILPROOF_DATABASE_URL": database_url,
            "RAILPROOF_CHAIN": "cassette",
            "RAILPROOF_CASSETTE_DIR": str(cassette_dir),
            "RAILPROOF_CLOCK": bench.CLOCK.isoformat(),
            "RAILPROOF_SESSION_TTL_SECONDS": str(bench.SESSION_TTL),
            "RAILPROOF_SERVICE_TOKENS": orjson.dumps(
                {TOKEN: [_owner(i) for i in range(OWNERS)]}
            ).decode(),
            # The key the stored history was written with; verified like any other.
            "RAILPROOF_AUDIT_KEY": bench.AUDIT_KEY,
            "RAILPROOF_RATE_LIMIT_PER_SECOND": "0",  # the bench is the only client
            "RAILPROOF_LOG_LEVEL": "WARNING",
        }
    )
    return env


@contextmanager
def serving(database_url: str, cassette_dir: Path, api_workers: int) -> Iterator[str]:
    """`railproof serve` on a free loopback port with `api_workers` processes; yields its base
    URL once /healthz answers, and stops the whole process group afterwards."""
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "verifier.cli.main",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(api_workers),
    ]
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        cmd,
        env=server_env(database_url, cassette_dir),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: uvicorn's workers stop with it
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, port, log)
        yield url
    finally:
        with _suppress():
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with _suppress():
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        log.close()


@contextmanager
def _suppress() -> Iterator[None]:
    try:
        yield
    except ProcessLookupError:
        pass


def _wait_ready(proc: subprocess.Popen[bytes], port: int, log: Any) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            tail = log.read()[-2000:].decode(errors="replace")
            raise RuntimeError(f"railproof serve exited with {proc.returncode}: {tail}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                conn.close()
                return
            conn.close()
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"railproof serve did not answer on port {port} in {START_TIMEOUT_S} s")


class _Client:
    """One backend client: a keep-alive connection, the walk-through's two requests."""

    def __init__(self, port: int, index: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.conn.connect()
        # Small requests answered at once: without this each waits for a delayed ACK.
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.index = index

    def post(self, path: str, body: dict[str, Any], key: str) -> tuple[int, dict[str, Any]]:
        headers = {
            "Authorization": f"Bearer {TOKEN}",
            "Content-Type": "application/json",
            "Idempotency-Key": key,
        }
        self.conn.request("POST", path, orjson.dumps(body), headers)
        resp = self.conn.getresponse()
        data = resp.read()
        return resp.status, orjson.loads(data) if data else {}

    def one(self, n: int, p: bench.Synthetic) -> tuple[float, float, bool]:
        """(session ms, proof ms, ok) for one unit of work."""
        owner = _owner(n)
        t0 = time.perf_counter()
        status, session = self.post(
            "/v1/payment-sessions",
            {
                "owner_id": owner,
                "rail_id": bench.RAIL_ID,
                "access_product_id": "bench-product",
                "amount": str(p.amount),
                "recipient": p.recipient,
                "reference": p.reference,
                "memo": p.memo,
                "expires_in_seconds": bench.SESSION_TTL,
            },
            # Keyed by the transfer, not the unit's number: a run against a database used
            # before must not meet the keys (and replay the answers) of an earlier run.
            f"bench-s-{p.signature[:24]}",
        )
        t1 = time.perf_counter()
        if status not in (200, 201) or "id" not in session:
            return (t1 - t0) * 1000, 0.0, False
        status, proof = self.post(
            "/v1/proofs",
            {"session_id": session["id"], "proof": p.signature},
            f"bench-p-{p.signature[:24]}",
        )
        t2 = time.perf_counter()
        ok = status in (200, 201) and proof.get("status") == "verified"
        return (t1 - t0) * 1000, (t2 - t1) * 1000, ok

    def close(self) -> None:
        self.conn.close()


def drive(
    url: str, proofs: list[bench.Synthetic], clients: int, progress: Progress | None = None
) -> dict[str, Any]:
    """Run every proof through the API with `clients` threads; the first WARMUP_PER_CLIENT
    units of each client are not timed."""
    port = int(url.rsplit(":", 1)[1])
    lock = threading.Lock()
    cursor = iter(enumerate(proofs))
    session_ms: list[float] = []
    proof_ms: list[float] = []
    errors: list[str] = []
    done = [0]
    warm = threading.Barrier(clients + 1)
    go = threading.Event()

    def take() -> tuple[int, bench.Synthetic] | None:
        with lock:
            return next(cursor, None)

    def run(index: int) -> None:
        client = None
        try:
            client = _Client(port, index)
            for _ in range(WARMUP_PER_CLIENT):
                item = take()
                if item is not None:
                    _, _, ok = client.one(*item)
                    if not ok:
                        with lock:
                            errors.append("warm-up")
        except Exception as e:  # counted, never raised: the figure says it
            with lock:
                errors.append(type(e).__name__)
        finally:
            warm.wait()
        go.wait()
        while client is not None and (item := take()) is not None:
            try:
                s_ms, p_ms, ok = client.one(*item)
            except Exception as e:
                with lock:
                    errors.append(type(e).__name__)
                client.close()
                client = _Client(port, index)
                continue
            with lock:
                if ok:
                    session_ms.append(s_ms)
                    proof_ms.append(p_ms)
                else:
                    errors.append("answer")
                done[0] += 1
                if progress is not None and done[0] % 50 == 0:
                    progress("http", done[0], total)
        if client is not None:
            client.close()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    warm.wait()
    total = max(0, len(proofs) - clients * WARMUP_PER_CLIENT)
    started = time.perf_counter()
    go.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if progress is not None:
        progress("http", total, total)
    return {
        "http_submit_per_s": bench._rate(len(proof_ms), elapsed),
        "http_p50_ms": _pct(proof_ms, 0.50),
        "http_p95_ms": _pct(proof_ms, 0.95),
        "http_p99_ms": _pct(proof_ms, 0.99),
        "http_session_p99_ms": _pct(session_ms, 0.99),
        "http_errors": len(errors),
        "http_submissions": len(proof_ms),
    }


def _owner(n: int) -> str:
    return f"bench-{n % OWNERS}"


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)], 2)


def run_http_bench(
    proofs: int = 2000,
    database_url: str | None = None,
    clients: int = 8,
    api_workers: int = 1,
    stored: int | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """The HTTP figures for `proofs` units on `database_url` (None: a temporary SQLite file),
    with `stored` proofs of history bulk-inserted first (default: none)."""
    from verifier.core.config import Settings
    from verifier.core.engine import Engine

    if clients < 1 or api_workers < 1:
        raise ValueError("clients and api_workers: at least 1")
    tmp = Path(tempfile.mkdtemp(prefix="railproof-bench-http-"))
    try:
        if database_url is None:
            database_url = f"sqlite:///{tmp / 'bench.db'}"
        seed = bench.run_seed(bench.SEED + 3, bench._prepare_database(database_url))
        synthetic = bench.synthetic_proofs(proofs + clients * WARMUP_PER_CLIENT, seed=seed)
        cassettes = tmp / "cassettes"
        write_cassette(synthetic, cassettes)
        engine = Engine(
            Settings(
                database_url=database_url,
                chain="cassette",
                clock=bench.CLOCK,
                cassette_dir=cassettes,
                session_ttl_seconds=bench.SESSION_TTL,
                audit_key=bench.AUDIT_KEY,
            )
        )
        try:
            engine.ensure_rail_states()
            have = bench.fill_stored(engine, 0, seed)
            if stored:
                have = bench.fill_stored(engine, have + stored, seed)
            dialect = engine.db.engine.dialect.name
        finally:
            engine.db.dispose()
        with serving(database_url, cassettes, api_workers) as url:
            out = drive(url, synthetic, clients, progress)
        return {
            "http_database": dialect,
            "http_clients": clients,
            "http_api_workers": api_workers,
            "http_stored_before": have,
            **out,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
