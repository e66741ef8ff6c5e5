"""A reverted receipt served from a block that is no longer canonical (EVM rails).

A node behind a reorg (or a pool member on the losing fork) serves the receipt of the payer's
transaction as the orphaned block had it: `status 0x0`, while the canonical chain holds another
block at that height. That answer is not the chain's: the proof stays `pending` (`reorged`),
and once the node serves the canonical receipt, in which the transaction paid, it verifies.
A `failed` there was definitive and held nothing: the payer's real payment could never pay its
session (a resubmission answered the stored failed proof, and the worker re-checks only pending
proofs). README "Reliability": a node behind gives `pending`, never `failed`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from rails.evm import TRANSFER_TOPIC
from tests.conftest import SERVICE_TOKEN, auth, make_settings
from verifier.core.engine import Engine
from verifier.http.api import create_app
from verifier.services import proofs

BASE_USDC = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
TREASURY = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
PAYER = "0x857b06519E91e3A54538791bDbb0E22373e36b66"
AMOUNT = 10_000
TX = "0x" + "5a" * 32
OPENED = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
MINED_AT = int(OPENED.timestamp()) + 20
BLOCK = 0x1000
ORPHAN_HASH = "0x" + "ab" * 32  # the block the lagging node still serves
CANONICAL_HASH = "0x" + "cd" * 32  # the chain's block at that height now


def _topic(address: str) -> str:
    return "0x" + "00" * 12 + address[2:].lower()


def _receipt(status: str, block_hash: str) -> dict[str, Any]:
    logs = []
    if status == "0x1":
        logs = [
            {
                "address": BASE_USDC.lower(),
                "topics": [TRANSFER_TOPIC, _topic(PAYER), _topic(TREASURY)],
                "data": "0x" + AMOUNT.to_bytes(32, "big").hex(),
                "blockHash": block_hash,
                "blockNumber": hex(BLOCK),
                "transactionHash": TX,
                "logIndex": "0x0",
                "removed": False,
            }
        ]
    return {
        "transactionHash": TX,
        "blockHash": block_hash,
        "blockNumber": hex(BLOCK),
        "from": PAYER.lower(),
        "to": BASE_USDC.lower(),
        "status": status,
        "logs": logs,
    }


class Node:
    """A Base node: the canonical block at BLOCK is CANONICAL_HASH; `receipt` is what it
    serves for TX (a lagging node: the orphaned block's reverted receipt)."""

    source = "live"

    def __init__(self) -> None:
        self.receipt = _receipt("0x0", ORPHAN_HASH)

    def call(self, method: str, params: list[Any]) -> Any:
        if method == "eth_chainId":
            return hex(8453)
        if method == "eth_getTransactionReceipt":
            assert params[0].lower() == TX
            return self.receipt
        if method == "eth_blockNumber":
            return hex(BLOCK + 100)
        if method == "eth_getBlockByNumber":
            tag = params[0]
            if tag == "finalized":
                return {"number": hex(BLOCK + 50), "hash": "0x" + "ee" * 32}
            if tag == "latest":
                return {
                    "number": hex(BLOCK + 100),
                    "hash": "0x" + "ef" * 32,
                    "timestamp": hex(MINED_AT + 200),
                }
            assert int(tag, 16) == BLOCK, tag
            return {"number": hex(BLOCK), "hash": CANONICAL_HASH, "timestamp": hex(MINED_AT)}
        if method == "eth_getTransactionByHash":
            return {"hash": TX, "blockHash": CANONICAL_HASH, "blockNumber": hex(BLOCK)}
        raise AssertionError(f"unexpected call {method} {params}")


@pytest.fixture
def served(db_url):
    engine = Engine(make_settings(db_url, clock=OPENED))
    engine.ensure_rail_states()
    node = Node()
    engine.chains.set_transport("base", node)
    with TestClient(create_app(engine), raise_server_exceptions=False) as client:
        yield engine, client, node
    engine.db.dispose()


def test_a_reverted_receipt_from_an_orphaned_block_is_not_a_definitive_failure(served):
    engine, client, node = served
    r = client.post(
        "/v1/payment-sessions",
        json={
            "owner_id": "alice",
            "rail_id": "base_usdc",
            "access_product_id": "api",
            "amount": str(AMOUNT),
            "recipient": TREASURY,
            "payer": PAYER,
        },
        headers={**auth(SERVICE_TOKEN), "Idempotency-Key": "s-1"},
    )
    assert r.status_code == 201, r.text
    session = r.json()["id"]

    r = client.post(
        "/v1/proofs",
        json={"session_id": session, "proof": TX},
        headers={**auth(SERVICE_TOKEN), "Idempotency-Key": "p-1"},
    )
    assert r.status_code in (200, 201), r.text
    first = r.json()
    # The receipt is from block ORPHAN_HASH; the chain's block at that height is another one.
    # What the transaction did on the canonical chain is not known from this answer.
    assert (first["status"], first["failure_code"]) == ("pending", "reorged"), first

    # The node catches up: on the canonical chain the transaction succeeded and paid.
    node.receipt = _receipt("0x1", CANONICAL_HASH)
    r = client.post(
        "/v1/proofs",
        json={"session_id": session, "proof": TX},
        headers={**auth(SERVICE_TOKEN), "Idempotency-Key": "p-2"},
    )
    assert r.status_code in (200, 201), r.text
    if r.json()["status"] == "pending":  # the worker re-checks a pending proof
        proofs.verify_proof(engine, first["id"])
        r = client.get(f"/v1/proofs/{first['id']}", headers=auth(SERVICE_TOKEN))
    assert r.json()["id"] == first["id"]
    assert r.json()["status"] == "verified", r.json()
