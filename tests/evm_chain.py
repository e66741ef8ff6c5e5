"""Test helpers for the EVM and Tron rails.

A real EVM chain in process: eth-tester on py-evm behind the rails' `Transport`
seam, with the test token (fixtures/evm/token/TestUSDC.json) deployed from its bytecode.

`LocalEvmChain.call(method, params)` forwards to `w3.provider.make_request` and returns the
`result` in JSON-RPC wire form. eth-tester's provider speaks Python values (snake_case keys,
ints, block numbers as ints) below web3's middleware, so the helper converts both ways: hex
block numbers in, camelCase keys and hex quantities out — exactly what an HTTP node sends.

`finalized_lag`: eth-tester answers the `finalized` tag with the latest block; a real chain
finalizes some blocks behind its head, so the helper answers `finalized` as head − lag
(None: whatever eth-tester says).

`ScriptedNode`: a threaded HTTP server on 127.0.0.1 that answers with scripted failures
(500, 429, slow replies, garbage) before real answers, for the live transports' retry and
failover tests. Nothing here talks to anything but 127.0.0.1.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

from eth_tester import EthereumTester, PyEVMBackend
from web3 import EthereumTesterProvider, Web3

from rails.errors import RpcErrorResponse
from registry.catalog import FinalityPolicy, Rail, Stage

TOKEN_JSON = Path(__file__).resolve().parent.parent / "fixtures" / "evm" / "token" / "TestUSDC.json"


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(part.title() for part in rest)


def to_wire(value: Any) -> Any:
    """Python values from eth-tester → JSON-RPC wire values."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return hex(value)
    if isinstance(value, (bytes, bytearray)):
        return "0x" + bytes(value).hex()
    if isinstance(value, dict):
        return {_camel(k): to_wire(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_wire(v) for v in value]
    return value


def _block_param(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("0x"):
        return int(value, 16)
    return value


class LocalEvmChain:
    source = "local"

    def __init__(self, finalized_lag: int | None = None):
        self.tester = EthereumTester(PyEVMBackend())
        self.w3 = Web3(EthereumTesterProvider(self.tester))
        self.accounts = self.w3.eth.accounts
        self.finalized_lag = finalized_lag
        self.calls: list[tuple[str, list[Any]]] = []
        doc = json.loads(TOKEN_JSON.read_text())
        self.abi, self.bytecode = doc["abi"], doc["bytecode"]

    # -- the Transport seam ------------------------------------------------------------------

    def call(self, method: str, params: list[Any]) -> Any:
        self.calls.append((method, list(params)))
        if method == "eth_getBlockByNumber":
            tag = params[0]
            if tag == "finalized" and self.finalized_lag is not None:
                tag = max(0, self.head() - self.finalized_lag)
            params = [_block_param(tag), *params[1:]]
        response = self.w3.provider.make_request(method, params)
        if "error" in response:
            raise RpcErrorResponse(method, response["error"])
        result = response["result"]
        if method == "eth_getBlockByNumber" and isinstance(result, dict):
            result = {k: v for k, v in result.items() if k != "transactions"} | {
                "transactions": [to_wire(t) for t in result.get("transactions", [])]}
        return to_wire(result)

    # -- driving the chain -------------------------------------------------------------------

    @property
    def chain_id(self) -> int:
        return self.w3.eth.chain_id

    def head(self) -> int:
        return self.w3.eth.block_number

    def mine(self, blocks: int = 1) -> None:
        self.tester.mine_blocks(blocks)

    def deploy_token(self, deployer: str | None = None):
        deployer = deployer or self.accounts[0]
        factory = self.w3.eth.contract(abi=self.abi, bytecode=self.bytecode)
        receipt = self.w3.eth.wait_for_transaction_receipt(
            factory.constructor().transact({"from": deployer}))
        return self.w3.eth.contract(address=receipt.contractAddress, abi=self.abi)

    def transfer(self, token, sender: str, to: str, amount: int, gas: int | None = None) -> str:
        """Send token.transfer; with `gas` set, a reverting call is still mined (status 0)."""
        tx = {"from": sender} | ({"gas": gas} if gas is not None else {})
        return token.functions.transfer(to, amount).transact(tx).to_0x_hex()

    def snapshot(self) -> int:
        """evm_snapshot through the provider (eth-tester's take_snapshot)."""
        return self.w3.provider.make_request("evm_snapshot", [])["result"]

    def revert(self, snapshot_id: int) -> None:
        """evm_revert: the chain goes back to the snapshot; blocks mined since are dropped."""
        self.w3.provider.make_request("evm_revert", [snapshot_id])

    def rail(self, token_address: str, confirmations: int = 3, finalized_tag: bool = False,
             stage: Stage = Stage.gated, rail_id: str = "local_usdc") -> Rail:
        """A rail for this chain and token: the catalog's shape with local values."""
        return Rail(
            rail_id=rail_id, family="evm", stage=stage, network="local", chain_id=self.chain_id,
            asset=token_address, asset_symbol="USDC", decimals=6, proof_types=("evm_tx_hash",),
            finality=FinalityPolicy(mode="depth", confirmations=confirmations,
                                    finalized_tag=finalized_tag),
            treasury=None, default_production_enabled=False,
        )


# ----------------------------------------------------------------------------------------------
# A scripted HTTP node on 127.0.0.1 (for the live transports' retry and failover tests)
# ----------------------------------------------------------------------------------------------

# A reply is (HTTP status, body bytes) or (status, body, delay seconds before answering).
Reply = tuple


class ScriptedNode:
    """A threaded HTTP server on 127.0.0.1 answering POSTs from `answer(path, body) -> Reply`.
    `script` replies are served first, in order (e.g. a 500, then a 429); after that `answer`
    decides. Every request is recorded as (path, parsed JSON body)."""

    def __init__(self, answer: Callable[[str, Any], Reply], script: list[Reply] | None = None):
        self.answer = answer
        self.script = list(script or [])
        self.requests: list[tuple[str, Any]] = []
        node = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"null")
                except ValueError:
                    body = raw
                node.requests.append((self.path, body))
                reply = node.script.pop(0) if node.script else node.answer(self.path, body)
                status, payload, *delay = reply
                if delay:
                    time.sleep(delay[0])
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

            def log_message(self, *args):  # keep test output quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def jsonrpc_answer(table: Callable[[str, list[Any]], Any]) -> Callable[[str, Any], Reply]:
    """An `answer` for ScriptedNode that serves JSON-RPC: `table(method, params)` gives the
    result (or raise KeyError for a JSON-RPC 'method not found' error)."""

    def answer(path: str, body: Any) -> Reply:
        try:
            result = table(body["method"], body.get("params", []))
            doc = {"jsonrpc": "2.0", "id": body.get("id"), "result": result}
        except KeyError:
            doc = {"jsonrpc": "2.0", "id": body.get("id"),
                   "error": {"code": -32601, "message": "method not found"}}
        return 200, json.dumps(doc).encode()

    return answer


def closed_port_url() -> str:
    """A 127.0.0.1 URL where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"
