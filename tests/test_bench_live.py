"""`railproof bench --live-rpc`: the live Solana transport against the bench's loopback replay
node. Counts, never speed: a finalized transfer costs one round trip (two JSON-RPC calls in one
batch), every synthetic proof verifies, and the node answers as a Solana node would."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
from typer.testing import CliRunner

from rails.transport.solana_http import SolanaRpcTransport
from verifier.tools import bench_live
from verifier.tools.bench import NETWORK, synthetic_proofs

GEN = Path(__file__).resolve().parent.parent / "fixtures" / "solana" / "generated"
CONTRACT = {
    "live_verify_per_s": float,
    "live_client_cpu_ms": float,
    "live_round_trips_per_verification": float,
}


def test_run_live_bench_returns_the_contract_keys_and_one_round_trip_per_verification():
    out = bench_live.run_live_bench(20)
    for key, kind in CONTRACT.items():
        assert isinstance(out[key], kind), (key, out[key])
    assert out["live_verified"] == out["live_proofs"] == 20
    # Counted by the node: one HTTP request carrying two calls per verification.
    assert out["live_round_trips_per_verification"] == 1.0
    assert out["live_rpc_calls_per_verification"] == 2.0


def test_the_node_counts_round_trips_not_calls():
    proofs = synthetic_proofs(12)
    with bench_live.replay_node(proofs) as node:
        with SolanaRpcTransport([node.url], NETWORK, batch_status=False) as unbatched:
            two = bench_live.measure(unbatched, proofs, node)
        with SolanaRpcTransport([node.url], NETWORK) as batched:
            one = bench_live.measure(batched, proofs, node)
    assert two["live_verified"] == one["live_verified"] == 12
    assert two["live_round_trips_per_verification"] == 2.0
    assert one["live_round_trips_per_verification"] == 1.0
    assert one["live_rpc_calls_per_verification"] == two["live_rpc_calls_per_verification"] == 2


def test_the_alternative_costs_a_second_round_trip_for_a_transfer_not_yet_finalized():
    proofs = synthetic_proofs(10)
    confirmed = bench_live._confirmed_only(proofs)
    with bench_live.replay_node(confirmed) as node:
        with bench_live.finalized_first_transport([node.url]) as alt:
            slow = bench_live.measure(alt, confirmed, node)
        with SolanaRpcTransport([node.url], NETWORK) as batched:
            fast = bench_live.measure(batched, confirmed, node)
    assert slow["live_round_trips_per_verification"] == 2.0
    assert fast["live_round_trips_per_verification"] == 1.0
    assert slow["live_verified"] == fast["live_verified"] == 10  # verified, not final yet


def test_the_replay_node_answers_like_a_solana_node():
    answers = bench_live.ReplayAnswers(
        [GEN / "confirmed_not_final.json", GEN / "demo_payment.json"]
    )
    pending = orjson.loads((GEN / "confirmed_not_final.json").read_bytes())["calls"][0]["params"][0]
    final = orjson.loads((GEN / "demo_payment.json").read_bytes())["calls"][0]["params"][0]

    def ask(sig: str, commitment: str | None) -> object:
        opts = {"encoding": "jsonParsed"} | ({"commitment": commitment} if commitment else {})
        body = {"jsonrpc": "2.0", "id": 7, "method": "getTransaction", "params": [sig, opts]}
        answer = orjson.loads(answers.answer(orjson.dumps(body)))
        assert answer["id"] == 7
        return answer["result"]

    # A node's default commitment is finalized: a confirmed-only transaction is not there yet.
    assert ask(pending, None) is None and ask(pending, "finalized") is None
    assert ask(pending, "confirmed")["transaction"]["signatures"] == [pending]
    assert ask(final, None)["transaction"]["signatures"] == [final]
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "getSignatureStatuses", "params": [[final, "x"]]},
        {"jsonrpc": "2.0", "id": 2, "method": "getSlot", "params": []},
    ]
    statuses, unknown = orjson.loads(answers.answer(orjson.dumps(batch)))
    assert statuses["result"]["value"][0]["confirmationStatus"] == "finalized"
    assert statuses["result"]["value"][1] is None
    assert unknown["error"]["code"] == -32601
    assert answers.stats() == {"http_requests": 5, "calls": 6}


def test_cli_bench_live_rpc_prints_the_live_figures():
    from verifier.cli.main import app

    res = CliRunner().invoke(app, ["bench", "--live-rpc", "--proofs", "10", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    for key, kind in CONTRACT.items():
        assert isinstance(out[key], kind), (key, out[key])
    assert out["live_verified"] == 10 and out["live_round_trips_per_verification"] == 1.0
