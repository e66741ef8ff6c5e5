"""`tx_not_found` turns into `failed` only when the chain has said "not found" for a whole
grace, past the session's expiry plus that grace: a node behind, a proof submitted late, a
settlement sent back by a reorg and x402's minute of waiting for a late block stay `pending`
and verify once the node has the transfer. And a settlement that vanished is seen as gone
(or, where the node's own answers disagree, as nothing), never left `verified` for good.

On recorded chain data: the Solana demo payment and a confirmed-only transfer, the real
Ethereum USDC transfer, and a signed x402 payload on a node of the test's own."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from rails.errors import RpcUnavailable
from rails.x402 import AUTHORIZATION_USED_TOPIC, TRANSFER_TOPIC
from tests.conftest import make_settings
from tests.helpers import (
    FIXTURES,
    SwitchableTransport,
    advance,
    cassette_engine,
    cassette_expect,
    recorded_calls,
)
from tests.test_e2e_http import EVM_CLOCK
from tests.test_worker import _activate_evm_usdc
from verifier.core.engine import Engine
from verifier.core.timeutil import utc
from verifier.services import proofs
from verifier.services.sessions import NewSession, open_session
from verifier.storage.models import Entitlement
from verifier.worker import loop as worker

DEMO_FILE = FIXTURES / "solana" / "generated" / "demo_payment.json"
DEMO = json.loads(DEMO_FILE.read_text())["demo"]
CONFIRMED = FIXTURES / "solana" / "generated" / "confirmed_not_final.json"
ETH = FIXTURES / "evm" / "eth_usdc_transfer.json"


@pytest.fixture
def engine(db_url):
    e = cassette_engine(db_url)
    yield e
    e.db.dispose()


def _session(e: Engine, rail_id: str, amount: int, recipient: str, **terms: Any) -> dict[str, Any]:
    new = NewSession(
        owner_id="alice",
        rail_id=rail_id,
        access_product_id="pro",
        amount=amount,
        recipient=recipient,
        **terms,
    )
    return open_session(e, new, actor="svc")


def _demo_session(e: Engine) -> dict[str, Any]:
    return _session(
        e,
        "solana_usdc",
        int(DEMO["amount"]),
        DEMO["recipient"],
        reference=DEMO["reference"],
        memo=DEMO["memo"],
    )


def _checked(e: Engine, proof_id: str) -> dict[str, Any]:
    """The proof after the chain is asked again (as the worker's re-check does)."""
    proofs.verify_proof(e, proof_id)
    return proofs.get_proof(e, proof_id, None)


def _without_the_transaction(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same node before it has the transaction: getTransaction answers null."""
    tx = copy.deepcopy(calls[0])
    tx["result"] = None
    return [tx]


def _past_grace(e: Engine, session: dict[str, Any], extra: float) -> None:
    expires = utc(datetime.fromisoformat(str(session["expires_at"]).replace("Z", "+00:00")))
    e.settings.clock = expires + timedelta(seconds=e.settings.tx_not_found_grace_seconds + extra)


def test_a_late_proof_to_a_node_behind_waits_for_it_then_verifies(engine):
    # The payment was inside the window; its proof comes after expiry plus the grace, to a
    # node that does not have the transaction yet. It used to fail at once, for good (a
    # resubmission answers the stored proof).
    calls = recorded_calls(DEMO_FILE)
    chain = SwitchableTransport(_without_the_transaction(calls))
    engine.chains.set_transport("solana-mainnet", chain)
    session = _demo_session(engine)
    _past_grace(engine, session, 5)
    view, _ = proofs.submit_proof(engine, session["id"], DEMO["signature"], ["alice"])
    assert (view["status"], view["failure_code"]) == ("pending", "tx_not_found"), view
    advance(engine, 600)  # still inside the grace counted from the first "not found"
    assert _checked(engine, view["id"])["status"] == "pending"
    chain.load(calls)  # the node caught up
    advance(engine, 60)
    worker.sweep(engine, "w1")
    again, created = proofs.submit_proof(engine, session["id"], DEMO["signature"], ["alice"])
    assert not created and again["status"] == "verified"


def test_a_late_proof_the_chain_never_has_fails_after_the_grace(engine):
    engine.chains.set_transport(
        "solana-mainnet", SwitchableTransport(_without_the_transaction(recorded_calls(DEMO_FILE)))
    )
    session = _demo_session(engine)
    _past_grace(engine, session, 5)
    view, _ = proofs.submit_proof(engine, session["id"], DEMO["signature"], ["alice"])
    grace = engine.settings.tx_not_found_grace_seconds
    advance(engine, grace)  # the grace itself, to the second: still pending
    assert _checked(engine, view["id"])["status"] == "pending"
    advance(engine, 1)
    stored = _checked(engine, view["id"])
    assert (stored["status"], stored["failure_code"]) == ("failed", "tx_not_found")


class FlakyNode:
    """A node that alternates: "not found", then unreachable, and so on."""

    source = "live"

    def __init__(self) -> None:
        self.calls = 0

    def call(self, method: str, params: list[Any]) -> Any:
        self.calls += 1
        if self.calls % 2 == 0:
            raise RpcUnavailable("connection refused")
        assert method == "getTransaction"
        return None


def test_an_unreachable_node_between_not_found_answers_does_not_keep_a_proof_pending(engine):
    # Unreachable answers say nothing: they do not restart the grace, or a flaky node would
    # keep a transfer that never existed pending for good.
    engine.chains.set_transport("solana-mainnet", FlakyNode())
    session = _demo_session(engine)
    _past_grace(engine, session, 5)
    view, _ = proofs.submit_proof(engine, session["id"], DEMO["signature"], ["alice"])
    assert (view["status"], view["failure_code"]) == ("pending", "tx_not_found"), view
    grace = engine.settings.tx_not_found_grace_seconds
    for _ in range(12):  # the worker's re-checks over three graces
        advance(engine, grace / 4)
        worker.sweep(engine, "w1")
    seen = [a["failure_code"] for a in proofs.list_attempts(engine, view["id"])]
    assert "rpc_unavailable" in seen[1:-1], seen
    stored = proofs.get_proof(engine, view["id"], None)
    assert (stored["status"], stored["failure_code"]) == ("failed", "tx_not_found"), seen


class DownNode:
    """A node that is unreachable while `down` is set, and answers `inner` otherwise."""

    source = "live"

    def __init__(self, inner: SwitchableTransport) -> None:
        self.inner = inner
        self.down = False

    def call(self, method: str, params: list[Any]) -> Any:
        if self.down:
            raise RpcUnavailable("connection refused")
        return self.inner.call(method, params)


def test_a_node_still_behind_after_a_long_outage_gets_the_grace_again(engine):
    # "Not found", then the node is unreachable for longer than the grace (and two re-checks),
    # then it answers "not found" again, still catching up: the grace counts from that answer,
    # not from the one before the outage, so the payment verifies once the node has it.
    calls = recorded_calls(DEMO_FILE)
    behind = SwitchableTransport(_without_the_transaction(calls))
    node = DownNode(behind)
    engine.chains.set_transport("solana-mainnet", node)
    session = _demo_session(engine)
    _past_grace(engine, session, 5)
    view, _ = proofs.submit_proof(engine, session["id"], DEMO["signature"], ["alice"])
    assert (view["status"], view["failure_code"]) == ("pending", "tx_not_found"), view
    node.down = True
    outage = 2 * proofs.LONGEST_RECHECK.total_seconds() + 60
    for _ in range(6):
        advance(engine, outage / 6)
        worker.sweep(engine, "w1")
    node.down = False
    stored = _checked(engine, view["id"])
    assert (stored["status"], stored["failure_code"]) == ("pending", "tx_not_found"), stored
    advance(engine, engine.settings.tx_not_found_grace_seconds - 60)
    assert _checked(engine, view["id"])["status"] == "pending"
    behind.load(calls)  # the node caught up
    advance(engine, 30)
    assert _checked(engine, view["id"])["status"] == "verified"


def test_a_node_that_never_has_the_transfer_fails_a_grace_after_a_long_outage(engine):
    node = DownNode(SwitchableTransport(_without_the_transaction(recorded_calls(DEMO_FILE))))
    engine.chains.set_transport("solana-mainnet", node)
    session = _demo_session(engine)
    _past_grace(engine, session, 5)
    view, _ = proofs.submit_proof(engine, session["id"], DEMO["signature"], ["alice"])
    node.down = True
    advance(engine, 2 * proofs.LONGEST_RECHECK.total_seconds() + 60)
    node.down = False
    assert _checked(engine, view["id"])["status"] == "pending"
    advance(engine, engine.settings.tx_not_found_grace_seconds + 1)
    stored = _checked(engine, view["id"])
    assert (stored["status"], stored["failure_code"]) == ("failed", "tx_not_found"), stored


class RarelyUpNode:
    """A node reachable on one call in three (a rate-limited public RPC answering 429 to the
    others); when it answers, it has no such transaction."""

    source = "live"

    def __init__(self) -> None:
        self.calls = 0

    def call(self, method: str, params: list[Any]) -> Any:
        self.calls += 1
        if self.calls % 3 != 1:
            raise RpcUnavailable("429 too many requests")
        return None


def test_a_node_that_answers_rarely_still_fails_a_transfer_that_never_existed(engine):
    # At the backoff's cap its "not found" answers come ~30 min apart, each after a silence
    # longer than the grace and two re-checks, so each restarted the grace: the proof stayed
    # pending for good. The run's patience bounds it.
    engine.chains.set_transport("solana-mainnet", RarelyUpNode())
    session = _demo_session(engine)
    _past_grace(engine, session, 5)
    view, _ = proofs.submit_proof(engine, session["id"], DEMO["signature"], ["alice"])
    assert (view["status"], view["failure_code"]) == ("pending", "tx_not_found"), view
    patience = max(proofs.NOT_FOUND_PATIENCE.total_seconds(), 4 * 900)
    for _ in range(int(patience // 600) - 1):
        advance(engine, 600)
        proofs.verify_proof(engine, view["id"])
    assert proofs.get_proof(engine, view["id"], None)["status"] == "pending"
    for _ in range(6):  # the next "not found" answer, at the latest three re-checks on
        advance(engine, 600)
        proofs.verify_proof(engine, view["id"])
        if proofs.get_proof(engine, view["id"], None)["status"] != "pending":
            break
    seen = [a["failure_code"] for a in proofs.list_attempts(engine, view["id"])]
    stored = proofs.get_proof(engine, view["id"], None)
    assert (stored["status"], stored["failure_code"]) == ("failed", "tx_not_found"), seen


def test_a_confirmed_transfer_whose_fork_is_dropped_does_not_stay_verified(engine):
    calls = recorded_calls(CONFIRMED)
    sig = calls[0]["params"][0]
    chain = SwitchableTransport(calls)
    engine.chains.set_transport("solana-mainnet", chain)
    exp = cassette_expect(CONFIRMED)
    session = _session(
        engine, "solana_usdc", int(exp["amount"]), exp["recipient"], reference=exp["reference"]
    )
    view, _ = proofs.submit_proof(engine, session["id"], sig, ["alice"])
    assert view["status"] == "verified" and not view["settlement"]["is_final"]
    # The fork is abandoned: no status (searched through history) and no transaction.
    tx, status = copy.deepcopy(calls[0]), copy.deepcopy(calls[1])
    tx["result"] = None
    status["result"]["context"]["slot"] += 400
    status["result"]["value"] = [None]
    chain.load([tx, status])
    for _ in range(2):  # the settlement is gone; the proof is verified again at once
        advance(engine, 60)
        worker.sweep(engine, "w1")
    p = proofs.get_proof(engine, view["id"], None)
    assert (p["status"], p["failure_code"]) == ("pending", "tx_not_found"), p
    attempts = [(a["status"], a["failure_code"]) for a in proofs.list_attempts(engine, p["id"])]
    assert ("pending", "reorged") in attempts
    for _ in range(40):  # past the session and the grace: decided, not verified for good
        advance(engine, 600)
        worker.sweep(engine, "w1")
    p = proofs.get_proof(engine, view["id"], None)
    assert (p["status"], p["failure_code"]) == ("failed", "tx_not_found"), p


def _receipts_missing(calls: list[dict[str, Any]], mined: bool) -> list[dict[str, Any]]:
    """A node with no receipt for the transfer; `mined`: it still has the transaction in
    the block it holds as canonical (else it has no transaction either)."""
    out = copy.deepcopy(calls)
    receipt = next(c for c in out if c["method"] == "eth_getTransactionReceipt")
    tx = (
        {
            "hash": receipt["params"][0],
            "blockNumber": receipt["result"]["blockNumber"],
            "blockHash": receipt["result"]["blockHash"],
        }
        if mined
        else None
    )
    receipt["result"] = None
    return [*out, {"method": "eth_getTransactionByHash", "params": receipt["params"], "result": tx}]


def _applied_eth(db_url: str) -> tuple[Engine, SwitchableTransport, str, str]:
    e = cassette_engine(db_url, clock=EVM_CLOCK)
    chain = SwitchableTransport(recorded_calls(ETH))
    e.chains.set_transport("ethereum", chain)
    pid, ent_id = _activate_evm_usdc(e)
    return e, chain, pid, ent_id


def _flagged(e: Engine, ent_id: str) -> bool:
    with e.db.tx() as s:
        ent = s.get(Entitlement, ent_id)
        assert ent is not None
        return bool(ent.reorg_flagged)


def test_a_node_without_the_receipt_of_a_mined_transfer_undoes_nothing(db_url):
    # During the reorg watch of an applied transfer, the node answers no receipt while it
    # holds the transaction in its canonical block: no reorg, nothing flagged, still final.
    e, chain, pid, ent_id = _applied_eth(db_url)
    try:
        chain.load(_receipts_missing(recorded_calls(ETH), mined=True))
        for _ in range(3):
            advance(e, 3600)
            worker.sweep(e, "w1")
        p = proofs.get_proof(e, pid, None)
        assert p["status"] == "verified" and p["settlement"]["is_final"], p
        assert not _flagged(e, ent_id)
    finally:
        e.db.dispose()


def test_a_node_that_lost_an_applied_transfer_for_a_while_never_fails_it(db_url):
    # Two hours on (the session long over), the node has neither receipt nor transaction for
    # two sweeps: a reorg as far as it can tell (flagged for staff), and the proof is verified
    # again; "not found" is only minutes old, so it waits, and verifies once the node is back.
    e, chain, pid, ent_id = _applied_eth(db_url)
    try:
        calls = recorded_calls(ETH)
        chain.load(_receipts_missing(calls, mined=False))
        advance(e, 7200)
        worker.sweep(e, "w1")
        advance(e, 30)
        worker.sweep(e, "w1")
        p = proofs.get_proof(e, pid, None)
        assert (p["status"], p["failure_code"]) == ("pending", "tx_not_found"), p
        assert _flagged(e, ent_id)
        chain.load(calls)
        for _ in range(3):
            advance(e, 120)
            worker.sweep(e, "w1")
        assert proofs.get_proof(e, pid, None)["status"] == "verified"
    finally:
        e.db.dispose()


# -- x402: the minute of waiting for a late block ---------------------------------------------

X402 = Path(__file__).resolve().parent.parent / "fixtures" / "x402"
SIGNED = json.loads((X402 / "x402_base_signed.json").read_text())
DOC = SIGNED["payloads"]["valid_v1"]["payload"]
AUTH = DOC["payload"]["authorization"]
BASE_USDC = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
VALID_BEFORE = int(AUTH["validBefore"])
TX = "0x" + "ab" * 32
BLOCK_HASH = "0x" + "cd" * 32


def _topic(address: str) -> str:
    return "0x" + address[2:].lower().rjust(64, "0")


class FacilitatorNode:
    """A Base node: down at first; the authorization's settlement (a block stamped 20 s
    before validBefore) reaches it when `used` is set."""

    source = "live"

    def __init__(self) -> None:
        self.down, self.used = True, False

    def call(self, method: str, params: list[Any]) -> Any:
        if self.down:
            raise RpcUnavailable("connection refused")
        if method == "eth_chainId":
            return hex(8453)  # Base
        if method == "eth_call":  # authorizationState(from, nonce)
            return "0x" + ("1" if self.used else "0").rjust(64, "0")
        if method == "eth_getLogs":
            return (
                [{"transactionHash": TX, "blockNumber": "0x64", "removed": False}]
                if self.used
                else []
            )
        if method == "eth_getTransactionReceipt":
            used = [AUTHORIZATION_USED_TOPIC, _topic(AUTH["from"]), AUTH["nonce"]]
            moved = [TRANSFER_TOPIC, _topic(AUTH["from"]), _topic(AUTH["to"])]
            value = "0x" + int(AUTH["value"]).to_bytes(32, "big").hex()
            logs = [
                {"address": BASE_USDC.lower(), "topics": used, "data": "0x", "logIndex": "0x0"},
                {"address": BASE_USDC.lower(), "topics": moved, "data": value, "logIndex": "0x1"},
            ]
            return {
                "transactionHash": TX,
                "status": "0x1",
                "blockNumber": hex(100),
                "blockHash": BLOCK_HASH,
                "logs": logs,
            }
        if method == "eth_blockNumber":
            return hex(200)
        if method == "eth_getBlockByNumber":
            if params[0] == "finalized":
                return {"number": hex(150), "hash": "0x" + "ee" * 32}
            return {"number": params[0], "hash": BLOCK_HASH, "timestamp": hex(VALID_BEFORE - 20)}
        raise KeyError(method)


@pytest.fixture
def x402_engine(db_url):
    e = Engine(make_settings(db_url, clock=datetime.fromtimestamp(SIGNED["now"], UTC)))
    e.ensure_rail_states()
    yield e
    e.db.dispose()


@pytest.mark.parametrize("session_seconds", [600, 7200])
def test_x402_waits_its_minute_for_a_late_block_whatever_the_session(x402_engine, session_seconds):
    # The payer signed for an hour; the session lasts 10 minutes (or two hours). Submitted in
    # time while the node was down, checked 10 s past validBefore before the settlement's
    # block reached the node: the minute's wait is pending, and the settlement verifies.
    e, node = x402_engine, FacilitatorNode()
    e.chains.set_transport(e.rail("x402").network, node)
    session = _session(
        e,
        "x402",
        int(AUTH["value"]),
        SIGNED["pay_to"],
        reference=None,
        expires_in_seconds=session_seconds,
    )
    view, _ = proofs.submit_proof(e, session["id"], json.dumps(DOC), ["alice"])
    assert (view["status"], view["failure_code"]) == ("pending", "rpc_unavailable"), view
    node.down = False
    advance(e, VALID_BEFORE + 10 - e.now().timestamp())
    waiting = _checked(e, view["id"])
    assert (waiting["status"], waiting["failure_code"]) == ("pending", "tx_not_found"), waiting
    node.used = True
    advance(e, 20)
    assert _checked(e, view["id"])["status"] == "verified"
