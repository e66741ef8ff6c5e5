"""The EVM treasury scan through the live HTTP transport against a loopback JSON-RPC node
(tests/jsonrpc_server.py) serving the recorded Transfer logs of
fixtures/evm/inflows/treasury_transfer_logs.json: a range the node refuses is split until it
answers; a block it refuses even alone makes the run incomplete, never "no drift"."""

from __future__ import annotations

import json

import pytest

from rails.rpc_policy import RpcPolicy
from rails.transport.evm_http import EvmHttpTransport
from tests.conftest import CLOCK
from tests.helpers import FIXTURES, cassette_engine
from tests.jsonrpc_server import Fault, JsonRpcServer
from tests.test_reconciliation import OPS, by_kind
from verifier.services import reconciliation
from verifier.services.sessions import NewSession, open_session

EVM_LOGS = FIXTURES / "evm" / "inflows" / "treasury_transfer_logs.json"
DOC = json.loads(EVM_LOGS.read_text())
EXP = DOC["expect"]
LOGS = [
    log
    for c in DOC["calls"]
    if c["method"] == "eth_getLogs" and isinstance(c.get("result"), list)
    for log in c["result"]
]


def serve(srv: JsonRpcServer, cap: int, refuse_block: int | None = None) -> list[tuple[int, int]]:
    """Answer as a provider that refuses more than `cap` blocks per eth_getLogs (and, with
    `refuse_block`, that block even alone); returns the ranges it was asked for."""
    asked: list[tuple[int, int]] = []

    def get_logs(params):
        f = params[0]
        lo, hi = int(f["fromBlock"], 16), int(f["toBlock"], 16)
        asked.append((lo, hi))
        if hi - lo + 1 > cap or (refuse_block is not None and lo <= refuse_block <= hi):
            return Fault.rpc_error(-32005, "query exceeds max block range")
        assert f["address"] == EXP["token"] and f["topics"][2].endswith(EXP["treasury"].lower()[2:])
        return [x for x in LOGS if lo <= int(x["blockNumber"], 16) <= hi]

    def block(params):  # a block's time: a minute after the engine's clock (sessions open then)
        stamp = int(CLOCK.timestamp()) + 60
        return {"number": params[0], "hash": "0x" + "b" * 64, "timestamp": hex(stamp)}

    srv.answer("eth_blockNumber", hex(EXP["head"]))
    srv.answer("eth_getLogs", get_logs)
    srv.answer("eth_getBlockByNumber", block)
    return asked


@pytest.fixture
def eng(db_url):
    e = cassette_engine(
        db_url,
        reconcile_evm_max_range=100,  # more than the node takes: every first ask is refused
        env={
            "RAILPROOF_TREASURY_EVM_USDC": EXP["treasury"],
            "RAILPROOF_ASSET_EVM_USDC": EXP["token"],
        },
    )
    yield e
    e.db.dispose()


def live(url: str) -> EvmHttpTransport:
    t = EvmHttpTransport([url], "ethereum")
    t.set_policy(RpcPolicy(timeout_s=2.0, attempts=1, total_s=5.0))
    return t


def run(engine) -> dict:
    return reconciliation.run(
        engine, reconciliation.RunRequest(scope="chain_inflows", rail_id="evm_usdc", **OPS), "ops1"
    )


def test_refused_ranges_are_split_over_http(eng):
    first = EXP["inflows"][0]
    s = open_session(
        eng,
        NewSession(
            owner_id="alice",
            rail_id="evm_usdc",
            access_product_id="pro",
            amount=first["value"],
            payer=first["sender"],
            reference=None,
        ),
        actor="svc",
    )
    with JsonRpcServer() as srv:
        asked = serve(srv, cap=2)
        eng.chains.set_transport("ethereum", live(srv.url))
        out = run(eng)
        assert out["status"] == "complete", out["detail"]
        assert out["summary"]["inflows"] == len(EXP["inflows"])
        [bound] = by_kind(out)["orphan_bound"]
        assert (bound["subjects"]["transfer"], bound["subjects"]["session_id"]) == (
            first["tx_hash"],
            s["id"],
        )
        assert {f["subjects"]["transfer"] for f in by_kind(out)["orphan_unbound"]} == {
            i["tx_hash"] for i in EXP["inflows"][1:]
        }
        # The whole window was asked first, refused, then halves down to what the node takes,
        # and every block was read exactly once by an answered request.
        assert asked[0] == (0, EXP["head"])
        answered = sorted(r for r in asked if r[1] - r[0] + 1 <= 2)
        assert [b for lo, hi in answered for b in range(lo, hi + 1)] == list(range(EXP["head"] + 1))
        # + eth_blockNumber, + the bound transfer's block (its time against the session's)
        assert out["summary"]["rpc_calls"] == srv.count() == len(asked) + 2


def test_a_block_the_node_refuses_even_alone_makes_the_run_incomplete(eng):
    with JsonRpcServer() as srv:
        serve(srv, cap=2, refuse_block=6)
        eng.chains.set_transport("ethereum", live(srv.url))
        out = run(eng)
    assert out["status"] == "incomplete"
    assert "eth_getLogs [6, 6]" in out["detail"] and "-32005" in out["detail"]
    # What was read before (blocks 0-5: two transfers) is reported; nothing says "no drift".
    assert {f["subjects"]["transfer"] for f in out["findings"]} == {
        i["tx_hash"] for i in EXP["inflows"] if i["block_number"] < 6
    }
