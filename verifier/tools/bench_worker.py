"""`railproof bench --worker`: verified proofs whose settlement is not final yet, finalized and
then applied by the worker, against a loopback replay RPC node.

The proofs are submitted through the service as usual, on a chain replayed in process that
says each transfer is only `confirmed` (so each is verified, with a settlement that is not
final, and due for a finality refresh). The worker then runs on the same database with
`RAILPROOF_AUTO_APPLY=1` semantics against the replay node of `verifier.tools.bench_live`
(a separate process on 127.0.0.1, serving the same transfers as `finalized`), through the
live Solana transport: its finality sweeps ask `getSignatureStatuses` for up to 256
signatures per call, record the final settlements, and its apply sweeps create the receipts.

Figures (docs/bench.md, "Worker"):

    worker_finalize_per_s            proofs whose final settlement was recorded, per second
    worker_rpc_calls_per_finalized   JSON-RPC calls the node answered per finalized proof
    worker_status_calls              getSignatureStatuses requests in all (≤ 1 per 256 proofs)
    worker_apply_per_s               proofs applied (receipt + entitlement) per second

Nothing here prints; the CLI prints the returned dict.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import tempfile
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from rails.cassette import Call, CassetteTransport
from verifier.tools import bench
from verifier.tools.bench_http import Progress

BATCH = 256  # the worker's claim size: one status call per batch (STATUS_BATCH)
WORKER = "bench-worker"


def confirmed_only(p: bench.Synthetic) -> bench.Synthetic:
    """The same proof on a chain that has confirmed the transfer but not finalized it."""
    tx, status = p.calls
    result: dict[str, Any] = copy.deepcopy(status.result or {"value": []})
    for v in result["value"]:
        if v is not None:
            v["confirmationStatus"] = "confirmed"
            v["confirmations"] = 10
    return replace(
        p,
        calls=(tx, Call({"method": status.method, "params": status.params, "result": result})),
    )


def submit_confirmed(
    engine: Any, proofs: list[bench.Synthetic], progress: Progress | None
) -> list[str]:
    """Submit every proof through the service on the confirmed-only chain; returns the ids of
    those that came back verified with a settlement that is not final yet."""
    from verifier.services.proofs import submit_proof
    from verifier.services.sessions import NewSession, open_session

    confirmed = [confirmed_only(p) for p in proofs]
    engine.chains.set_transport(
        bench.NETWORK, CassetteTransport([c for p in confirmed for c in p.calls], bench.NETWORK)
    )
    verified: list[str] = []
    for i, p in enumerate(confirmed):
        owner = f"bench-owner-{i % 97}"
        s = open_session(
            engine,
            NewSession(
                owner_id=owner,
                rail_id=bench.RAIL_ID,
                access_product_id="bench-product",
                amount=p.amount,
                recipient=p.recipient,
                reference=p.reference,
                memo=p.memo,
                expires_in_seconds=bench.SESSION_TTL,
            ),
            actor="bench",
        )
        view, _ = submit_proof(engine, s["id"], p.signature, [owner])
        if view["status"] == "verified" and not (view.get("settlement") or {}).get("is_final"):
            verified.append(view["id"])
        if progress is not None and (i + 1) % 50 == 0:
            progress("submit", i + 1, len(proofs))
    return verified


def run_worker_bench(
    proofs: int = 2000,
    database_url: str | None = None,
    progress: Progress | None = None,
    processes: int = 1,
) -> dict[str, Any]:
    from verifier.core.config import Settings
    from verifier.core.engine import Engine
    from verifier.tools.bench_live import replay_node
    from verifier.worker import loop

    if proofs < 1:
        raise ValueError("proofs: at least 1")
    if processes < 1:
        raise ValueError("worker processes: at least 1")
    tmp = tempfile.mkdtemp(prefix="railproof-bench-worker-")
    engines: list[Any] = []
    try:
        if database_url is None:
            database_url = f"sqlite:///{os.path.join(tmp, 'bench.db')}"
        seed = bench.run_seed(bench.SEED + 5, bench._prepare_database(database_url))
        base = Settings(
            database_url=database_url,
            chain="cassette",
            clock=bench.CLOCK,
            cassette_dir=Path(tmp) / "no-cassettes",
            session_ttl_seconds=bench.SESSION_TTL,
            auto_apply=False,
            audit_key=bench.AUDIT_KEY,
        )
        synthetic = bench.synthetic_proofs(proofs, seed=seed)
        submitter = Engine(base)
        engines.append(submitter)
        submitter.ensure_rail_states()
        ids = submit_confirmed(submitter, synthetic, progress)
        pending = len(ids)
        # The worker a minute later: every refresh (due 5 s after verification) is due.
        worker = Engine(
            base.model_copy(
                update={"clock": bench.CLOCK + timedelta(seconds=60), "auto_apply": True}
            )
        )
        engines.append(worker)
        with replay_node(synthetic) as node:
            adapter = worker.adapter(worker.rail(bench.RAIL_ID))
            transport = adapter.live_transport([node.url], bench.NETWORK)
            worker.chains.set_transport(bench.NETWORK, transport)
            try:
                before = node.stats()
                if processes == 1:
                    t_final = _finality_here(worker, pending, progress)
                else:
                    t_final = _finality_in_processes(worker.settings, node.url, processes)
                after = node.stats()
                applied, t_apply = 0, 0.0
                while True:
                    started = time.perf_counter()
                    n = loop.auto_apply(worker, BATCH)
                    t_apply += time.perf_counter() - started
                    if not n:
                        break
                    applied += n
                    if progress is not None:
                        progress("apply", min(applied, pending), pending)
            finally:
                close = getattr(transport, "close", None)
                if close is not None:
                    close()
        final = _final_count(worker, ids)
        requests = after["http_requests"] - before["http_requests"]
        calls = after["calls"] - before["calls"]
        return {
            "worker_proofs": proofs,
            "worker_processes": processes,
            "worker_pending_finality": pending,
            "worker_finalized": final,
            "worker_finalize_per_s": bench._rate(final, t_final),
            "worker_rpc_calls_per_finalized": round(calls / final, 4) if final else None,
            "worker_status_calls": calls,
            "worker_rpc_requests": requests,
            "worker_status_calls_bound": math.ceil(pending / BATCH),
            "worker_applied": applied,
            "worker_apply_per_s": bench._rate(applied, t_apply) if applied else 0.0,
        }
    finally:
        for e in engines:
            e.db.dispose()
        shutil.rmtree(tmp, ignore_errors=True)


def _finality_here(worker: Any, pending: int, progress: Progress | None) -> float:
    """Finality sweeps in this process until none is due; returns the seconds they took."""
    from verifier.worker import loop

    finalized, took = 0, 0.0
    while True:
        started = time.perf_counter()
        n = loop.refresh_finality(worker, WORKER, BATCH)
        took += time.perf_counter() - started
        if not n:
            return took
        finalized += n
        if progress is not None:
            progress("finality", min(finalized, pending), pending)


def _finality_in_processes(settings: Any, node_url: str, processes: int) -> float:
    """Finality sweeps in `processes` worker processes at once, sharing the due proofs as
    `railproof worker` processes do (claims taken with SKIP LOCKED); returns the seconds from
    the moment all were ready (engine opened, transport built) to the last one's end."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Barrier(processes + 1)
    done = ctx.Queue()
    procs = [
        ctx.Process(target=_sweeper, args=(settings, node_url, f"{WORKER}-{i}", ready, done))
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    try:
        ready.wait(timeout=120)
        started = time.perf_counter()
        failures = [done.get(timeout=600) for _ in procs]
        took = time.perf_counter() - started
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    errors = [f for f in failures if f]
    if errors:
        raise RuntimeError(f"a worker process failed: {errors[0]}")
    return took


def _sweeper(settings: Any, node_url: str, name: str, ready: Any, done: Any) -> None:
    """One worker process of `_finality_in_processes`: reports "" when no proof is due any
    more, or what went wrong."""
    try:
        from verifier.core.engine import Engine
        from verifier.worker import loop

        engine = Engine(settings)
        transport = engine.adapter(engine.rail(bench.RAIL_ID)).live_transport(
            [node_url], bench.NETWORK
        )
        engine.chains.set_transport(bench.NETWORK, transport)
    except Exception as e:
        ready.abort()
        done.put(repr(e))
        return
    try:
        ready.wait(timeout=120)
        while loop.refresh_finality(engine, name, BATCH):
            pass
        done.put("")
    except Exception as e:
        done.put(repr(e))
    finally:
        close = getattr(transport, "close", None)
        if close is not None:
            close()
        engine.db.dispose()


def _final_count(engine: Any, proof_ids: list[str]) -> int:
    """How many of `proof_ids` have final settlement evidence now."""
    from sqlalchemy import func, select

    from verifier.storage.models import SettlementEvidence as SE

    n = 0
    with engine.db.tx() as s:
        for i in range(0, len(proof_ids), 1000):
            chunk = proof_ids[i : i + 1000]
            n += int(
                s.scalar(
                    select(func.count(func.distinct(SE.proof_id))).where(
                        SE.proof_id.in_(chunk), SE.is_final.is_(True)
                    )
                )
                or 0
            )
    return n
