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

Another chain than eth-tester's own (options; the defaults are unchanged): `chain_id` (eth-tester
hard-codes its chain id, web3's tester provider answers eth_chainId with a constant: both are
replaced, so transactions are signed for, and the CHAINID opcode returns, that id),
`genesis_timestamp`, and `genesis_accounts` — code, storage and balance placed at addresses in
the genesis state, besides the funded test accounts. `LocalEvmChain.base_sepolia()` is Base
Sepolia (84532) with the EIP-3009 test token (fixtures/evm/token/TestUSDC3009.json: an
address-independent USDC-like token with the "USDC"/"2" EIP-712 domain) at the real Base Sepolia
USDC address, so a payment authorization signed for the real token settles here.
`block_time`: each block is mined that many seconds after its parent instead of at the wall
clock's time. `set_next_block_timestamp` pins the time of the next mined block (an
authorization's window).

`ScriptedNode`: a threaded HTTP server on 127.0.0.1 that answers with scripted failures
(500, 429, slow replies, garbage) before real answers, for the live transports' retry and
failover tests. Nothing here talks to anything but 127.0.0.1.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from eth_tester import EthereumTester, PyEVMBackend
from eth_tester.backends.pyevm.main import ZERO_ADDRESS
from eth_utils import keccak, to_canonical_address, to_checksum_address
from web3 import EthereumTesterProvider, Web3
from web3.providers.eth_tester.defaults import API_ENDPOINTS, static_return

from rails.errors import RpcErrorResponse
from registry.catalog import FinalityPolicy, Rail, Stage

TOKEN_JSON = Path(__file__).resolve().parent.parent / "fixtures" / "evm" / "token" / "TestUSDC.json"
TOKEN_3009_JSON = TOKEN_JSON.with_name("TestUSDC3009.json")

BASE_SEPOLIA_CHAIN_ID = 84532
BASE_SEPOLIA_USDC = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
# Before the window of the x402 spec's Base Sepolia payload (validAfter 1740672089): blocks
# are mined at or after the genesis time, so a chain meant to settle it starts earlier.
BASE_SEPOLIA_GENESIS_TIMESTAMP = 1740672000  # 2025-02-27T16:00:00Z


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


def mapping_slot(slot: int, *keys: str | int | bytes) -> int:
    """The storage slot of `m[k1][k2]…` for a Solidity mapping `m` declared at `slot`:
    keccak256(pad32(key) ‖ pad32(slot)), nested key by key (addresses and uint keys)."""
    for key in keys:
        if isinstance(key, str):
            key = to_canonical_address(key)
        raw = key.rjust(32, b"\0") if isinstance(key, bytes) else key.to_bytes(32, "big")
        slot = int.from_bytes(keccak(raw + slot.to_bytes(32, "big")), "big")
    return slot


def eip3009_token_account(
    balances: dict[str, int] | None = None, allowances: dict[tuple[str, str], int] | None = None
) -> dict[str, Any]:
    """A genesis account holding the EIP-3009 test token's runtime code, with balances and
    allowances ((owner, spender) → value) already in its storage, as if minted and approved
    before the chain's first block."""
    doc = json.loads(TOKEN_3009_JSON.read_text())
    slots = doc["storageSlots"]
    storage: dict[int, int] = {}
    for owner, value in (balances or {}).items():
        storage[mapping_slot(slots["balanceOf"], owner)] = value
    if balances:
        storage[slots["totalSupply"]] = sum(balances.values())
    for (owner, spender), value in (allowances or {}).items():
        storage[mapping_slot(slots["allowance"], owner, spender)] = value
    return {"code": doc["deployedBytecode"], "storage": storage}


class _Backend(PyEVMBackend):
    """PyEVMBackend with a chosen chain id (eth-tester's chain class hard-codes one), only the
    funded test accounts listed when the genesis state holds other accounts too, and, with
    `block_time`, blocks timed by the chain (each `block_time` seconds after its parent)
    rather than by the wall clock."""

    def __init__(self, chain_id: int | None, block_time: int | None = None, **kw: Any):
        self._chain_id = chain_id
        self.block_time = block_time
        super().__init__(**kw)

    def _follow_parent(self) -> None:
        # The pending block is empty here (just mined, reverted or created): nothing has run
        # against its timestamp yet.
        if self.block_time is not None:
            parent = self.chain.get_canonical_head()
            self.chain.set_header_timestamp(parent.timestamp + self.block_time)

    def mine_blocks(self, num_blocks=1, coinbase=ZERO_ADDRESS):
        hashes = []
        for _ in range(num_blocks):
            hashes.extend(super().mine_blocks(1, coinbase))
            self._follow_parent()
        return tuple(hashes)

    def revert_to_snapshot(self, snapshot):
        super().revert_to_snapshot(snapshot)
        self._follow_parent()

    def reset_to_genesis(self, genesis_params=None, genesis_state=None, *args: Any, **kw: Any):
        super().reset_to_genesis(genesis_params, genesis_state, *args, **kw)
        if self._chain_id is not None:
            base = type(self.chain)
            # A subclass rather than an attribute: a revert to genesis rebuilds the chain
            # from its class, and every VM reads the id from the chain when it is made.
            self.chain.__class__ = type(base.__name__, (base,), {"chain_id": self._chain_id})
        if genesis_state:
            # eth-tester makes one key per genesis account; the contracts' are not funded.
            keys = tuple(
                k
                for k in self.account_keys
                if genesis_state.get(k.public_key.to_canonical_address(), {}).get("balance")
            )
            self.account_keys = keys
        self._follow_parent()


def _genesis_account(spec: dict[str, Any]) -> dict[str, Any]:
    code = spec.get("code", b"")
    if isinstance(code, str):
        code = bytes.fromhex(code.removeprefix("0x"))
    return {
        "balance": int(spec.get("balance", 0)),
        "nonce": int(spec.get("nonce", 0)),
        "code": code,
        "storage": {int(k): int(v) for k, v in spec.get("storage", {}).items()},
    }


class LocalEvmChain:
    source = "local"

    def __init__(
        self,
        finalized_lag: int | None = None,
        chain_id: int | None = None,
        genesis_timestamp: int | None = None,
        genesis_accounts: dict[str, dict[str, Any]] | None = None,
        block_time: int | None = None,
    ):
        """`chain_id`, `genesis_timestamp`, `genesis_accounts` ({address: {"code", "storage",
        "balance", "nonce"}}), `block_time`: see the module's docstring; None keeps
        eth-tester's defaults."""
        params = (
            PyEVMBackend.generate_genesis_params({"timestamp": genesis_timestamp})
            if genesis_timestamp is not None
            else None
        )
        state = None
        if genesis_accounts:
            state = PyEVMBackend.generate_genesis_state()
            for address, spec in genesis_accounts.items():
                state[to_canonical_address(address)] = _genesis_account(spec)
        if chain_id is None and params is None and state is None and block_time is None:
            backend = PyEVMBackend()
        else:
            backend = _Backend(chain_id, block_time, genesis_parameters=params, genesis_state=state)
        self.tester = EthereumTester(backend)
        endpoints = None
        if chain_id is not None:
            endpoints = {
                **API_ENDPOINTS,
                "eth": {**API_ENDPOINTS["eth"], "chainId": static_return(chain_id)},
            }
        self.w3 = Web3(EthereumTesterProvider(self.tester, api_endpoints=endpoints))
        self.accounts = self.w3.eth.accounts
        self.finalized_lag = finalized_lag
        self.calls: list[tuple[str, list[Any]]] = []
        doc = json.loads(TOKEN_JSON.read_text())
        self.abi, self.bytecode = doc["abi"], doc["bytecode"]

    @classmethod
    def base_sepolia(
        cls,
        genesis_timestamp: int = BASE_SEPOLIA_GENESIS_TIMESTAMP,
        block_time: int = 2,
        balances: dict[str, int] | None = None,
        allowances: dict[tuple[str, str], int] | None = None,
        **kw: Any,
    ) -> LocalEvmChain:
        """Base Sepolia (chain 84532) with the EIP-3009 test token's runtime code at the real
        USDC address (`eip3009_token()`); `balances` and `allowances` are in its genesis
        storage. Blocks follow each other every `block_time` seconds (Base: 2) from the
        genesis time, whatever the wall clock says."""
        token = eip3009_token_account(balances, allowances)
        return cls(
            chain_id=BASE_SEPOLIA_CHAIN_ID,
            genesis_timestamp=genesis_timestamp,
            genesis_accounts={BASE_SEPOLIA_USDC: token},
            block_time=block_time,
            **kw,
        )

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
                "transactions": [to_wire(t) for t in result.get("transactions", [])]
            }
        return to_wire(result)

    # -- driving the chain -------------------------------------------------------------------

    @property
    def chain_id(self) -> int:
        return self.w3.eth.chain_id

    def head(self) -> int:
        return self.w3.eth.block_number

    def mine(self, blocks: int = 1) -> None:
        self.tester.mine_blocks(blocks)

    def set_next_block_timestamp(self, timestamp: int) -> None:
        """The next mined block (the one pending transactions go into) gets this timestamp,
        which must be after the latest block's; the blocks after it follow it by `block_time`
        seconds (or are back on the wall clock without one)."""
        latest = self.w3.eth.get_block("latest").timestamp
        if timestamp <= latest:
            raise ValueError(f"timestamp {timestamp} is not after the latest block's ({latest})")
        self.tester.backend.chain.set_header_timestamp(timestamp)

    def eip3009_token(self, address: str = BASE_SEPOLIA_USDC):
        """The EIP-3009 test token at `address` (placed there by the genesis state)."""
        abi = json.loads(TOKEN_3009_JSON.read_text())["abi"]
        return self.w3.eth.contract(address=to_checksum_address(address), abi=abi)

    def transfer_with_authorization(
        self,
        token,
        authorization: dict[str, Any],
        signature: str,
        sender: str | None = None,
        as_bytes: bool = False,
        gas: int = 200_000,
    ) -> str:
        """Settle a signed EIP-3009 authorization (an x402 payload's `authorization` and
        `signature`) as a facilitator does: `sender` (default: the first test account) calls
        transferWithAuthorization with (v, r, s), or with the 65-byte signature when
        `as_bytes`. The gas is given: eth-tester estimates gas in a block timed by the wall
        clock, not in the pending block (whose time may be pinned inside the window)."""
        a = authorization
        args = [
            a["from"],
            a["to"],
            int(a["value"]),
            int(a["validAfter"]),
            int(a["validBefore"]),
            a["nonce"],
        ]
        sig = bytes.fromhex(signature.removeprefix("0x"))
        if as_bytes:
            fn = token.get_function_by_signature(
                "transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,bytes)"
            )
            call = fn(*args, sig)
        else:
            fn = token.get_function_by_signature(
                "transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,"
                "uint8,bytes32,bytes32)"
            )
            call = fn(*args, sig[64], sig[:32], sig[32:64])
        return call.transact({"from": sender or self.accounts[0], "gas": gas}).to_0x_hex()

    def deploy_token(self, deployer: str | None = None):
        deployer = deployer or self.accounts[0]
        factory = self.w3.eth.contract(abi=self.abi, bytecode=self.bytecode)
        receipt = self.w3.eth.wait_for_transaction_receipt(
            factory.constructor().transact({"from": deployer})
        )
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

    def rail(
        self,
        token_address: str,
        confirmations: int = 3,
        finalized_tag: bool = False,
        stage: Stage = Stage.gated,
        rail_id: str = "local_usdc",
    ) -> Rail:
        """A rail for this chain and token: the catalog's shape with local values."""
        return Rail(
            rail_id=rail_id,
            family="evm",
            stage=stage,
            network="local",
            chain_id=self.chain_id,
            asset=token_address,
            asset_symbol="USDC",
            decimals=6,
            proof_types=("evm_tx_hash",),
            finality=FinalityPolicy(
                mode="depth", confirmations=confirmations, finalized_tag=finalized_tag
            ),
            treasury=None,
            default_production_enabled=False,
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
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
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
            doc = {
                "jsonrpc": "2.0",
                "id": body.get("id"),
                "error": {"code": -32601, "message": "method not found"},
            }
        return 200, json.dumps(doc).encode()

    return answer


def closed_port_url() -> str:
    """A 127.0.0.1 URL where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"
