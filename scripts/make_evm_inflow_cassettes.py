"""Build fixtures/evm/inflows/treasury_transfer_logs.json: `eth_getLogs` pages of a treasury's
incoming token transfers, recorded from the local EVM chain the suite uses (eth-tester on
py-evm, tests/evm_chain.py, with the test token deployed from fixtures/evm/token/).

The node caps `eth_getLogs` at CAP blocks and refuses a larger range with -32005, as hosted
providers do; the scan asks for MAX_RANGE blocks at a time, so the cassette holds the
refusals and the split ranges that answered. Recorded under network "ethereum-local" so
these answers never mix with the recorded mainnet ones.

    .venv/bin/python scripts/make_evm_inflow_cassettes.py
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from rails.errors import RpcErrorResponse  # noqa: E402
from rails.evm_inflows import head, transfer_logs  # noqa: E402
from tests.evm_chain import LocalEvmChain, to_wire  # noqa: E402

OUT = ROOT / "fixtures" / "evm" / "inflows" / "treasury_transfer_logs.json"
NETWORK = "ethereum-local"
GENESIS = 1767225601  # 2026-01-01T00:00:01Z, blocks every 12 s
CAP, MAX_RANGE = 2, 8


class LogsNode:
    """LocalEvmChain with eth_getLogs in wire form (eth-tester's provider wants snake_case
    block bounds) and the range cap of a hosted node."""

    source = "local"

    def __init__(self, chain: LocalEvmChain, cap: int | None = CAP):
        self.chain, self.cap = chain, cap

    def call(self, method: str, params: list[Any]) -> Any:
        if method != "eth_getLogs":
            return self.chain.call(method, params)
        f = dict(params[0])
        lo, hi = int(f.pop("fromBlock"), 16), int(f.pop("toBlock"), 16)
        if self.cap is not None and hi - lo + 1 > self.cap:
            raise RpcErrorResponse(
                method, {"code": -32005, "message": f"query exceeds max block range {self.cap}"}
            )
        r = self.chain.w3.provider.make_request(method, [{"from_block": lo, "to_block": hi, **f}])
        if "error" in r:
            raise RpcErrorResponse(method, r["error"])
        return to_wire(r["result"])


class Recorder:
    source = "local"

    def __init__(self, inner: Any):
        self.inner, self.calls = inner, []

    def call(self, method: str, params: list[Any]) -> Any:
        try:
            result = self.inner.call(method, params)
        except RpcErrorResponse as e:
            self.calls.append({"method": method, "params": params, "error": e.error})
            raise
        self.calls.append({"method": method, "params": params, "result": result})
        return result


def build() -> dict[str, Any]:
    chain = LocalEvmChain(chain_id=1, genesis_timestamp=GENESIS, block_time=12)
    token = chain.deploy_token()
    payer, other, treasury = chain.accounts[1], chain.accounts[3], chain.accounts[2]
    for who in (payer, other):
        token.functions.mint(who, 1_000 * 10**6).transact({"from": chain.accounts[0]})
    sent = [
        chain.transfer(token, payer, treasury, 5_000_000),
        chain.transfer(token, other, treasury, 7_000_000),
        chain.transfer(token, payer, chain.accounts[4], 1_000_000),  # not to the treasury
        chain.transfer(token, payer, treasury, 9_000_000),
    ]
    chain.mine(3)
    rec = Recorder(LogsNode(chain))
    top = head(rec)
    scan = transfer_logs(rec, token.address, treasury, 0, top, max_range=MAX_RANGE)
    assert scan.error is None and len(scan.inflows) == 3, scan
    return {
        "cassette": 1,
        "network": NETWORK,
        "source": "generated: the local EVM chain (eth-tester, py-evm) with the test token",
        "how": "scripts/make_evm_inflow_cassettes.py; the node refuses ranges over "
        f"{CAP} blocks (-32005), the scan asks for {MAX_RANGE}",
        "expect": {
            "token": token.address,
            "treasury": treasury,
            "head": top,
            "cap": CAP,
            "max_range": MAX_RANGE,
            "sent": sent,
            "inflows": [
                {
                    "tx_hash": i.tx_hash,
                    "sender": i.sender,
                    "value": i.value,
                    "block_number": i.block_number,
                }
                for i in scan.inflows
            ],
        },
        "calls": rec.calls,
    }


def main() -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_bytes(orjson.dumps(build(), option=orjson.OPT_INDENT_2) + b"\n")
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
