"""Verified proofs waiting for their settlement's finality: owners take turns, and a payment
verified before it settled (x402) that the chain shows no settlement of is asked at growing
intervals.

Any tenant can keep verified proofs waiting at no cost: an x402 payload is verified offline (a
signature from any key, even one with no funds, over an authorization to the treasury with a
validBefore far ahead). Claimed in due order, a backlog of them would be ahead of every other
tenant's payment waiting for finality, sweep after sweep; asked every 10 s until validBefore,
each would load the node every tenant of the network shares."""

from __future__ import annotations

import json
from itertools import count
from typing import Any

from eth_account import Account
from eth_utils import keccak, to_checksum_address

from rails.x402 import TRANSFER_WITH_AUTHORIZATION_FIELDS
from tests.helpers import advance
from verifier.services import proofs
from verifier.services.sessions import NewSession, open_session
from verifier.storage.models import ProofStatus
from verifier.worker import loop as worker

BASE_USDC = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
DOMAIN = {"name": "USD Coin", "version": "2", "chainId": 8453, "verifyingContract": BASE_USDC}
TREASURY = to_checksum_address(keccak(text="x402 finality fairness treasury")[-20:])
EMPTY_WALLET = keccak(text="x402 finality fairness: a key with no funds")
VALID_AFTER = 1767225600  # 2026-01-01T00:00:00Z, the tests' pinned clock
VALID_BEFORE = VALID_AFTER + 365 * 86400  # a year: the payer chooses it
_n = count()


class SilentBase:
    """Base mainnet's node: none of these authorizations was ever used (nothing settles)."""

    source = "cassette"

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    def call(self, method: str, params: list[Any]) -> Any:
        self.calls[method] = self.calls.get(method, 0) + 1
        if method == "eth_chainId":
            return hex(8453)
        if method == "eth_getLogs":
            return []
        if method == "eth_blockNumber":
            return hex(30_000_000)
        if method == "eth_call":  # authorizationState: unused
            return "0x" + "00" * 32
        raise KeyError(method)


def _unfunded_payload(amount: int) -> str:
    auth = {
        "from": Account.from_key(EMPTY_WALLET).address,
        "to": TREASURY,
        "value": str(amount),
        "validAfter": str(VALID_AFTER),
        "validBefore": str(VALID_BEFORE),
        "nonce": "0x" + keccak(text=f"x402 finality fairness nonce {next(_n)}").hex(),
    }
    msg = {
        **auth,
        "value": amount,
        "validAfter": VALID_AFTER,
        "validBefore": VALID_BEFORE,
        "nonce": bytes.fromhex(auth["nonce"][2:]),
    }
    types = {"TransferWithAuthorization": TRANSFER_WITH_AUTHORIZATION_FIELDS}
    sig = bytes(Account.sign_typed_data(EMPTY_WALLET, DOMAIN, types, msg).signature)
    return json.dumps(
        {
            "x402Version": 1,
            "scheme": "exact",
            "network": "base",
            "payload": {"signature": "0x" + sig.hex(), "authorization": auth},
        }
    )


def _unsettled_backlog(engine, n: int) -> list[str]:
    """`n` x402 proofs of bob's, verified offline, never settled."""
    out = []
    for _ in range(n):
        ps = open_session(
            engine,
            NewSession(
                owner_id="bob",
                rail_id="x402",
                access_product_id="api",
                amount=1,
                recipient=TREASURY,
                expires_in_seconds=3600,
            ),
            actor="svc",
        )
        view, created = proofs.submit_proof(engine, ps["id"], _unfunded_payload(1), ["bob"])
        assert created and view["status"] == "verified", view
        out.append(view["id"])
    return out


def _alices_confirmed(engine, chain) -> str:
    """Alice's real payment on the live rail: verified, confirmed, not final yet."""
    ps = open_session(
        engine,
        NewSession(
            owner_id="alice",
            rail_id="fake_live",
            access_product_id="pro",
            amount=1_000_000,
            recipient="fatreasury",
        ),
        actor="svc",
    )
    tx = "fx" + "a1" * 16
    chain.txs[tx] = {
        "status": "ok",
        "to": "fatreasury",
        "amount": 1_000_000,
        "asset": "fusd",
        "refs": [ps["reference"]],
        "finality": "confirmed",
    }
    view, _ = proofs.submit_proof(engine, ps["id"], tx, ["alice"])
    assert (view["status"], view["settlement"]["finality"]) == ("verified", "confirmed"), view
    return view["id"]


def test_owners_take_turns_in_the_finality_claim(engine, chain):
    engine.chains.set_transport("base", SilentBase())
    junk = _unsettled_backlog(engine, 60)
    advance(engine, 30)
    alice = _alices_confirmed(engine, chain)
    advance(engine, 60)

    first = worker.claim(engine, ProofStatus.verified, "w1", 20)
    assert len(first) == 20
    assert alice in first, (
        "alice's payment waited behind another owner's backlog of unsettled x402 proofs"
    )
    assert set(first) - {alice} <= set(junk)


def test_another_owners_backlog_does_not_delay_a_finalized_payment_by_a_sweep(engine, chain):
    """Counted in worker sweeps (batch 20), behind bob's 60 unsettled proofs: alice's payment
    finalizes on chain and is seen final in the first sweep after it falls due."""
    base = SilentBase()
    engine.chains.set_transport("base", base)
    junk = _unsettled_backlog(engine, 60)
    advance(engine, 30)
    alice = _alices_confirmed(engine, chain)
    chain.statuses["fx" + "a1" * 16] = "finalized"
    advance(engine, 60)

    seen_at = None
    for sweep in range(1, 9):
        worker.refresh_finality(engine, "w1", 20)
        view = proofs.get_proof(engine, alice, ["alice"])
        if view["settlement"] and view["settlement"]["finality"] == "finalized":
            seen_at = sweep
            break
        advance(engine, 4)  # a sweep's own time: one eth_getLogs per junk proof
    assert seen_at == 1, f"alice's finalized payment was first seen final after {seen_at} sweeps"
    assert len(junk) == 60


def test_an_unsettled_x402_proof_is_asked_for_its_settlement_at_growing_intervals(engine):
    """The node's cost of one proof never settled, counted over an hour of sweeps (one every
    5 s of the clock): its checks back off to one per 10 min (proofs.unsettled_backoff), as a
    pending proof's do, rather than one every ~10 s until its validBefore (a year here)."""
    base = SilentBase()
    engine.chains.set_transport("base", base)
    _unsettled_backlog(engine, 1)
    base.calls.clear()
    for _ in range(3600 // 5):
        advance(engine, 5)
        worker.refresh_finality(engine, "w1", 100)
    asked = base.calls.get("eth_getLogs", 0)
    assert asked <= 30, f"one unsettled x402 proof cost {asked} eth_getLogs in an hour"
