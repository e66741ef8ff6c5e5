"""An answer too large to read is a range to split, and an unusable node is one to pass by.

eth_getLogs over a treasury's busy block range can answer more than the transports read
(8 MiB decoded). That ended the inflow scan at the range, every time it was asked: payments
past it were never discovered. A Tron node behind a proxy that compresses anyway stopped the
failover at its URL, as if it had lied, where the next URL would have answered.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import orjson

from rails.errors import AnswerTooLarge
from rails.evm_inflows import transfer_logs
from rails.transport.bodies import MAX_ANSWER_BYTES
from rails.transport.evm_http import EvmHttpTransport
from rails.transport.failover import RetryPolicy
from rails.transport.tron_http import TronHttpTransport
from tests import loopback_http as loopback

RECORDED = (
    Path(__file__).resolve().parent.parent / "fixtures/evm/inflows/treasury_transfer_logs.json"
)
FAST = RetryPolicy(attempts=1, per_url_seconds=10, total_seconds=20, timeout=10)


def _recorded_logs() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    doc = json.loads(RECORDED.read_text())
    logs = {
        (log["transactionHash"], log["logIndex"]): log
        for c in doc["calls"]
        if c["method"] == "eth_getLogs" and isinstance(c.get("result"), list)
        for log in c["result"]
    }
    return doc["expect"], list(logs.values())


def test_a_range_answering_too_much_is_asked_for_in_halves():
    expect, logs = _recorded_logs()
    asked: list[tuple[int, int]] = []

    class Node(loopback.Handler):
        def do_POST(self) -> None:  # noqa: N802
            request = orjson.loads(self.body())
            if request["method"] == "eth_chainId":
                self.answer(orjson.dumps({"jsonrpc": "2.0", "id": request["id"], "result": "0x1"}))
                return
            f = request["params"][0]
            lo, hi = int(f["fromBlock"], 16), int(f["toBlock"], 16)
            asked.append((lo, hi))
            if hi - lo + 1 > 2:  # a busy range: more than any answer is read
                padding = b" " * (MAX_ANSWER_BYTES + 1)
                self.answer(
                    b'{"jsonrpc":"2.0","id":%d,"result":[]' % request["id"] + padding + b"}"
                )
                return
            found = [log for log in logs if lo <= int(log["blockNumber"], 16) <= hi]
            self.answer(orjson.dumps({"jsonrpc": "2.0", "id": request["id"], "result": found}))

    with loopback.serving(Node) as base:
        chain = EvmHttpTransport([base], "ethereum", FAST)
        scan = transfer_logs(chain, expect["token"], expect["treasury"], 0, expect["head"])
    assert scan.error is None
    assert scan.scanned_to == expect["head"]
    assert [(i.tx_hash, i.value, i.block_number) for i in scan.inflows] == [
        (i["tx_hash"], i["value"], i["block_number"]) for i in expect["inflows"]
    ]
    assert (0, expect["head"]) in asked and all(hi - lo < 2 for lo, hi in asked[-3:])


def test_a_single_block_too_large_ends_the_scan_there_with_the_reason():
    expect, _ = _recorded_logs()

    class Node(loopback.Handler):
        def do_POST(self) -> None:  # noqa: N802
            request = orjson.loads(self.body())
            self.answer(
                b'{"jsonrpc":"2.0","id":%d,"result":[' % request["id"]
                + b" " * (MAX_ANSWER_BYTES + 1)
                + b"]}"
            )

    with loopback.serving(Node) as base:
        chain = EvmHttpTransport([base], "ethereum", FAST)
        scan = transfer_logs(chain, expect["token"], expect["treasury"], 3, 4)
    assert scan.scanned_to == 2 and scan.inflows == []
    assert scan.error is not None and "[3, 3]" in scan.error and "larger than" in scan.error


def test_the_transports_say_too_large_as_its_own_error():
    class Node(loopback.Handler):
        def do_POST(self) -> None:  # noqa: N802
            self.body()
            self.answer(b"[" + b" " * (MAX_ANSWER_BYTES + 1) + b"]")

    with loopback.serving(Node) as base:
        chain = TronHttpTransport([base], "tron-mainnet", FAST)
        try:
            chain.call("getnowblock", [])
        except AnswerTooLarge as e:
            assert "larger than" in str(e)
        else:
            raise AssertionError("an 8 MiB answer was read")
        finally:
            chain.close()


def test_a_tron_node_answering_compressed_passes_the_call_to_the_next_url():
    block = {"block_header": {"raw_data": {"number": 77}}}

    class Compressing(loopback.Handler):
        def do_POST(self) -> None:  # noqa: N802
            self.body()
            self.answer(gzip.compress(orjson.dumps(block)), {"Content-Encoding": "gzip"})

    class Plain(loopback.Handler):
        def do_POST(self) -> None:  # noqa: N802
            self.body()
            self.answer(orjson.dumps(block))

    with loopback.serving(Compressing) as first, loopback.serving(Plain) as second:
        chain = TronHttpTransport([first, second], "tron-mainnet", FAST)
        try:
            assert chain.call("getnowblock", []) == block
        finally:
            chain.close()
