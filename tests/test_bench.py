"""`railproof bench` runs end to end with tiny numbers and returns every figure of the contract.

Nothing here looks at how fast anything was: timings depend on the machine. Counts do not:
a verified Solana proof costs exactly two RPC calls, and every synthetic proof verifies."""

from __future__ import annotations

import json
import os

from typer.testing import CliRunner

from rails.base import Status, Terms
from rails.transport.cassette import CassetteTransport
from verifier.core.checking import run_verify
from verifier.tools import bench, host_cpu

CONTRACT = {
    "verify_offline_per_s": float,
    "submit_verify_per_s": float,
    "dry_run_apply_p50_ms": float,
    "dry_run_apply_p95_ms": float,
    "rpc_calls_per_verified_proof": float,
    "x402_verify_per_s": float,
    "x402_sdk_verify_per_s": float,
    "peak_rss_mb": float,
    "proofs": int,
    "database": str,
    "stored": int,
}


def test_run_bench_small_returns_the_contract_keys():
    out = bench.run_bench(proofs=20, stored=50, discovery_sessions=50, reconcile_inflows=200)
    for key, kind in CONTRACT.items():
        assert isinstance(out[key], kind), (key, out[key])
    assert out["proofs"] == 20
    assert out["database"] == "sqlite"
    assert out["stored"] == 50
    assert out["rpc_calls_per_verified_proof"] <= 2
    assert out["offline_verified"] == 20
    assert set(out["submit_statuses"]) == {"verified"}
    assert out["x402_valid"] == {"ours": 20, "sdk": 20, "of": 20}
    # One shared treasury watch per cycle, not one poll per session.
    assert out["discovery_payments"] == 50 and out["discovery_rpc_calls_per_payment"] <= 1.2
    assert out["reconcile_status"] == "complete" and out["reconcile_inflows_checked"] == 200


def test_synthetic_proofs_are_distinct_and_verify_with_their_own_amounts():
    proofs = bench.synthetic_proofs(len(bench.TEMPLATES) * 2)
    assert len({p.signature for p in proofs}) == len(proofs)
    refs = [p.reference for p in proofs if p.reference]
    assert len(set(refs)) == len(refs)
    chain = CassetteTransport([c for p in proofs for c in p.calls], bench.NETWORK)
    adapter = bench.adapter_for(bench.load_catalog().resolve(bench.RAIL_ID))
    for p in proofs:
        ok = run_verify(adapter, p.signature, bench._terms(p), chain)
        assert ok.verdict.status is Status.verified, ok.verdict
        assert ok.verdict.observed["amount"] == str(p.amount)
        assert ok.rpc_calls == 2
        # The amount was changed consistently: any other amount is refused.
        other = Terms(**{**bench._terms(p).model_dump(), "amount": p.amount + 1})
        assert run_verify(adapter, p.signature, other, chain).verdict.status is Status.failed


def test_cli_bench_prints_one_json_object():
    res = CliRunner().invoke(bench_app(), ["bench", "--proofs", "10", "--stored", "15", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    assert out["proofs"] == 10 and out["stored"] == 15
    # The host's CPU over the run comes with the figures (Linux: /proc/stat).
    assert out["host_cpus"] == os.cpu_count()
    assert 0 <= out["host_cpu_steal_pct"] <= 100 and 0 <= out["host_cpu_idle_pct"] <= 100


def test_host_cpu_shares_are_the_deltas_of_the_aggregate_line():
    before = host_cpu.parse("cpu  100 0 50 800 10 0 5 35 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n")
    after = host_cpu.parse("cpu  160 0 70 900 30 0 5 135 0 0\ncpu0 9 9 9 9 9 9 9 9 0 0\n")
    assert before is not None and after is not None
    # 300 ticks passed: 100 stolen by the hypervisor, 120 idle or waiting for I/O.
    assert host_cpu.shares(before, after) == {
        "host_cpu_steal_pct": 33.3,
        "host_cpu_idle_pct": 40.0,
    }
    # A kernel without the steal column counts none; no aggregate line: nothing to say.
    assert host_cpu.parse("cpu  1 2 3 4\n") == dict.fromkeys(host_cpu.FIELDS, 0) | {
        "user": 1,
        "nice": 2,
        "system": 3,
        "idle": 4,
    }
    assert host_cpu.parse("intr 5\n") is None


def bench_app():
    from verifier.cli.main import app

    return app


def test_history_is_stored_first_and_submissions_follow_it(db_url):
    """Submission is timed against the stored history (how its cost grows): on PostgreSQL the
    history's explicit attempt and evidence ids must not collide with the service's next
    ones, and the audit chain runs on through both."""
    from verifier.services import audit
    from verifier.storage.db import Database

    out = bench.run_bench(proofs=12, stored=40, database_url=db_url, discovery_sessions=0)
    assert out["stored"] == 40
    assert out["submit_statuses"] == {"verified": 10}  # 2 warm-up proofs are not timed
    assert out["rpc_calls_per_verified_proof"] == 2.0  # this run's attempts, not the history's
    db = Database(db_url, audit_key=bench.AUDIT_KEY.encode())
    try:
        with db.tx() as s:
            assert audit.verify_chain(s).ok
    finally:
        db.dispose()
