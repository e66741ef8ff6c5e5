"""Chain faults through the real engine and HTTP API, live mode, against fault-injecting
JSON-RPC nodes on 127.0.0.1 (tests/fault_rpc.py) that serve the recorded demo payment.

Proven here:
- transient faults (429, 5xx, timeouts, dropped connections, a node error) give `pending
  rpc_unavailable` — never `failed`, never `verified` — and a later check verifies;
- retries are bounded in count (per URL) and in time, and failover reaches the next URL;
- a malformed answer, or an answer about another transaction, is rejected, not trusted;
- a node behind the others gives `pending tx_not_found`, never `failed`;
- RAILPROOF_RPC_QUORUM=2: verified only when two independent nodes agree on the transfer; a
  lying, forging, lagging or absent node can neither verify nor fail a proof on its own.

Live mode refuses a fixed clock, so sessions open on the real clock and the nodes serve the
recorded transaction with a blockTime of "now" (inside the session window).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from rails.transport.solana_http import RetryPolicy, SolanaRpcTransport
from tests.conftest import SERVICE_TOKEN, STAFF_TOKEN, auth
from tests.fault_rpc import DEMO_CASSETTE, SOLANA_GENERATED, Behaviour, FaultRpcNode, now_block_time
from tests.jsonrpc_server import Fault
from verifier.core.chains import Chains
from verifier.core.config import Settings
from verifier.core.engine import Engine
from verifier.http.api import create_app
from verifier.services import proofs
from verifier.storage.db import upgrade
from verifier.storage.models import Proof, VerificationAttempt

DEMO = json.loads(DEMO_CASSETTE.read_text())["demo"]
OTHER_CASSETTE = SOLANA_GENERATED / "usdc_reference_memo.json"
FAST = RetryPolicy(
    attempts=3, timeout=0.5, total_seconds=4.0, backoff_initial=0.01, backoff_max=0.05
)
# Where no node is slow on purpose: an honest loopback answer late under a loaded machine must
# not read as a timeout (the count of attempts is the same).
STEADY = RetryPolicy(
    attempts=3, timeout=5.0, total_seconds=12.0, backoff_initial=0.01, backoff_max=0.05
)
# A generous safety bound for "it stopped trying"; not a speed claim.
BOUND_S = 15.0


@pytest.fixture
def nodes() -> Iterator[Any]:
    started: list[FaultRpcNode] = []

    def start(n: int = 1, **kw: Any) -> list[FaultRpcNode]:
        out = []
        for _ in range(n):
            node = FaultRpcNode([DEMO_CASSETTE, OTHER_CASSETTE], block_time=now_block_time, **kw)
            started.append(node.start())
            out.append(node)
        return out

    yield start
    for node in started:
        node.release()
        node.stop()


class Live:
    """An engine in live mode on its own SQLite file, with the HTTP API in front of it."""

    def __init__(self, db_url: str, urls: list[str], quorum: int, policy: RetryPolicy):
        self.transports: list[SolanaRpcTransport] = []

        def factory(family: str, urls: list[str], network: str) -> SolanaRpcTransport:
            assert family == "solana"
            t = SolanaRpcTransport(urls, network, policy)
            self.transports.append(t)
            return t

        settings = Settings(
            database_url=db_url,
            chain="live",
            rpc_quorum=quorum,
            service_tokens={SERVICE_TOKEN: ["alice"]},
            staff_tokens={STAFF_TOKEN: "ops1"},
            env={"RAILPROOF_RPC_SOLANA_MAINNET": ",".join(urls)},
        )
        self.engine = Engine(settings, chains=Chains(settings, live_factory=factory))
        self.engine.ensure_rail_states()
        self.client = TestClient(create_app(self.engine), raise_server_exceptions=False)

    def close(self) -> None:
        self.client.close()
        for t in self.transports:
            t.close()
        self.engine.db.dispose()

    def session(self, **over: Any) -> dict[str, Any]:
        body = {
            "owner_id": "alice",
            "rail_id": "solana_usdc",
            "access_product_id": "pro",
            "amount": DEMO["amount"],
            "recipient": DEMO["recipient"],
            "reference": DEMO["reference"],
            "memo": DEMO["memo"],
            **over,
        }
        r = self.client.post("/v1/payment-sessions", headers=auth(), json=body)
        assert r.status_code == 201, r.text
        return r.json()

    def submit(self, session_id: str, proof: str = DEMO["signature"]) -> dict[str, Any]:
        r = self.client.post(
            "/v1/proofs", headers=auth(), json={"session_id": session_id, "proof": proof}
        )
        assert r.status_code in (200, 201), r.text
        return r.json()

    def pay(self, **over: Any) -> dict[str, Any]:
        return self.submit(self.session(**over)["id"])

    def attempts(self, proof_id: str) -> list[VerificationAttempt]:
        with self.engine.db.tx() as s:
            return list(
                s.scalars(
                    select(VerificationAttempt)
                    .where(VerificationAttempt.proof_id == proof_id)
                    .order_by(VerificationAttempt.id)
                ).all()
            )

    def dry_run(self, proof_id: str) -> dict[str, Any]:
        r = self.client.post(
            f"/v1/admin/proofs/{proof_id}/dry-run-apply", headers=auth(STAFF_TOKEN), json={}
        )
        assert r.status_code == 200, r.text
        return r.json()


@pytest.fixture
def live(tmp_path) -> Iterator[Any]:
    made: list[Live] = []

    def make(urls: list[str], quorum: int = 1, policy: RetryPolicy = STEADY) -> Live:
        url = f"sqlite:///{tmp_path}/railproof-{len(made)}.db"
        upgrade(url)
        lv = Live(url, urls, quorum, policy)
        made.append(lv)
        return lv

    yield make
    for lv in made:
        lv.close()


def assert_pending(view: dict[str, Any], code: str = "rpc_unavailable") -> None:
    assert (view["status"], view["failure_code"]) == ("pending", code), view
    assert view["receipt_id"] is None


# -- one node ------------------------------------------------------------------------------------


def test_honest_node_verifies_the_recorded_payment(nodes, live):
    (node,) = nodes()
    lv = live([node.url])
    view = lv.pay()
    assert view["status"] == "verified", view
    (att,) = lv.attempts(view["id"])
    assert (att.source, att.rpc_calls) == ("live", 2)
    assert lv.dry_run(view["id"])["would_apply"] is True


@pytest.mark.parametrize(
    "fault",
    [
        Fault.status(429),
        Fault.status(500),
        Fault.status(503),
        Fault.slow(1.5),
        Fault.drop(),
    ],
    ids=["429", "500", "503", "timeout", "dropped"],
)
def test_transient_faults_are_pending_then_verify_once_the_node_recovers(nodes, live, fault):
    (node,) = nodes()
    node.always(fault)
    lv = live([node.url], policy=FAST)  # the slow answer (1.5 s) outlasts its timeout
    started = time.monotonic()
    view = lv.pay()
    assert time.monotonic() - started < BOUND_S
    assert_pending(view)
    # Bounded in count: the first call (getTransaction, batched with its status request) was
    # tried `attempts` times, no more.
    assert node.count("getTransaction") == FAST.attempts == node.round_trips

    node.always(None)
    verdict = proofs.verify_proof(lv.engine, view["id"])
    assert verdict.status.value == "verified", verdict.detail
    assert [a.status for a in lv.attempts(view["id"])] == ["pending", "verified"]


def test_a_node_error_object_is_pending_not_failed(nodes, live):
    (node,) = nodes()
    node.always(Fault.rpc_error(-32005, "Node is behind by 500 slots"))
    lv = live([node.url])
    view = lv.pay()
    assert_pending(view)
    assert "Node is behind" in view["detail"]


def test_a_few_transient_faults_are_retried_into_the_real_answer(nodes, live):
    (node,) = nodes()
    node.push(Fault.status(429), Fault.status(503))  # then the real answers
    lv = live([node.url])
    view = lv.pay()
    assert view["status"] == "verified", view
    # Two retried failures, then one batch: getTransaction + getSignatureStatuses.
    assert node.round_trips == 2 + 1 and node.count("getTransaction") == 3
    (att,) = lv.attempts(view["id"])
    assert att.rpc_calls == 2  # adapter calls, not HTTP retries


def test_retries_are_bounded_in_time_as_well_as_count(nodes, live):
    (node,) = nodes()
    node.always(Fault.slow(1.0))
    policy = RetryPolicy(
        attempts=100, timeout=0.2, total_seconds=1.0, backoff_initial=0.01, backoff_max=0.02
    )
    lv = live([node.url], policy=policy)
    started = time.monotonic()
    view = lv.pay()
    assert time.monotonic() - started < BOUND_S
    assert_pending(view)
    assert 1 <= node.count() < 100  # the time budget stopped it, long before the attempt budget


def test_failover_reaches_the_next_url(nodes, live):
    down, up = nodes(2)
    down.always(Fault.status(503))
    lv = live([down.url, up.url])
    view = lv.pay()
    assert view["status"] == "verified", view
    # One round trip per try (getTransaction batched with its status): it exhausted the first
    # URL, then the second answered both calls at once.
    assert down.round_trips == STEADY.attempts and up.round_trips == 1
    assert up.count() == 2


@pytest.mark.parametrize(
    "body",
    [
        b"<html>502 bad gateway</html>",
        b'{"jsonrpc": "2.0", "id": 1',
        b"[]",
        b'{"jsonrpc": "2.0", "id": 1}',
    ],
    ids=["html", "truncated", "array", "no-result"],
)
def test_malformed_answers_are_rejected_not_trusted(nodes, live, body):
    (node,) = nodes()
    node.always(Fault.malformed(body))
    lv = live([node.url])
    view = lv.pay()
    assert_pending(view)
    assert "MalformedResponse" in lv.attempts(view["id"])[0].detail


def test_a_node_answering_another_transaction_is_rejected(nodes, live):
    (node,) = nodes()
    node.behave(Behaviour.lying)
    lv = live([node.url])
    view = lv.pay()
    assert_pending(view)
    detail = lv.attempts(view["id"])[0].detail
    assert "asked for " + DEMO["signature"] in detail and "MalformedResponse" in detail
    assert node.round_trips == 1  # nothing after the lie was asked


def test_a_node_behind_says_not_found_yet_never_failed(nodes, live):
    (node,) = nodes()
    node.behave(Behaviour.behind)
    lv = live([node.url])
    view = lv.pay()
    assert_pending(view, "tx_not_found")
    node.behave(Behaviour.honest)  # it caught up
    assert proofs.verify_proof(lv.engine, view["id"]).status.value == "verified"


def test_without_a_quorum_one_forging_node_decides_alone(nodes, live):
    """Why the quorum exists: a single well-formed lie is believed (here it fails an honest
    payment as amount_mismatch; a lie can as easily invent one)."""
    (node,) = nodes()
    node.behave(Behaviour.forging)
    lv = live([node.url])
    view = lv.pay()
    assert (view["status"], view["failure_code"]) == ("failed", "amount_mismatch")


# -- RAILPROOF_RPC_QUORUM=2 ---------------------------------------------------------------------


def test_quorum_two_honest_nodes_verify(nodes, live):
    a, b = nodes(2)
    lv = live([a.url, b.url], quorum=2)
    view = lv.pay()
    assert view["status"] == "verified", view
    assert "2 of 2 RPC nodes agree" in view["detail"]
    (att,) = lv.attempts(view["id"])
    assert att.rpc_calls == 4 and att.observed["amount"] == DEMO["amount"]
    assert a.count() == b.count() == 2  # each node asked, none used as a fallback
    report = lv.dry_run(view["id"])
    assert report["would_apply"] is True, report["blockers"]


@pytest.mark.parametrize(
    "liar", [Behaviour.lying, Behaviour.forging], ids=["other-tx", "forged-amount"]
)
def test_quorum_one_honest_one_lying_node_is_not_verified(nodes, live, liar):
    honest, lying = nodes(2)
    lying.behave(liar)
    lv = live([honest.url, lying.url], quorum=2)
    view = lv.pay()
    assert_pending(view)
    if liar is Behaviour.forging:
        # Two well-formed, different stories about one transaction.
        assert "RPC nodes disagree" in view["detail"]
    lying.behave(Behaviour.honest)
    assert proofs.verify_proof(lv.engine, view["id"]).status.value == "verified"


def test_quorum_a_fabricated_payment_on_one_node_is_not_verified(nodes, live):
    """One node shows a transaction the other has never seen: not enough."""
    seen, unseen = nodes(2)
    unseen.behave(Behaviour.behind)
    lv = live([seen.url, unseen.url], quorum=2)
    view = lv.pay()
    assert_pending(view)
    assert "only 1 of the 2" in view["detail"]


def test_quorum_one_node_down_is_pending_then_verifies(nodes, live):
    up, down = nodes(2)
    down.always(Fault.status(503))
    lv = live([up.url, down.url], quorum=2)
    started = time.monotonic()
    view = lv.pay()
    assert time.monotonic() - started < BOUND_S
    assert_pending(view)
    assert down.round_trips == STEADY.attempts  # its own retries, no failover to the other node
    down.always(None)
    assert proofs.verify_proof(lv.engine, view["id"]).status.value == "verified"


def test_quorum_two_of_three_agree_with_the_third_down(nodes, live):
    a, b, c = nodes(3)
    c.always(Fault.status(503))
    lv = live([a.url, b.url, c.url], quorum=2)
    view = lv.pay()
    assert view["status"] == "verified", view
    assert "2 of 3 RPC nodes agree" in view["detail"]


def test_quorum_a_forging_third_node_blocks_even_an_agreeing_pair(nodes, live):
    a, b, c = nodes(3)
    c.behave(Behaviour.forging)
    lv = live([a.url, b.url, c.url], quorum=2)
    view = lv.pay()
    assert_pending(view)
    assert "RPC nodes disagree" in view["detail"]


def test_quorum_takes_finality_from_the_least_final_node(nodes, live):
    ahead, lagging = nodes(2)
    lagging.behave(Behaviour.lagging)
    lv = live([ahead.url, lagging.url], quorum=2)
    view = lv.pay()
    assert view["status"] == "verified", view
    assert view["settlement"]["finality"] == "confirmed"
    report = lv.dry_run(view["id"])
    assert report["would_apply"] is False
    assert [b["code"] for b in report["blockers"]] == ["settlement_final"]


def test_quorum_definitive_failures_need_the_quorum_too(nodes, live):
    a, b = nodes(2)
    lv = live([a.url, b.url], quorum=2)
    # The session asks for 1 USDC more than was paid: both nodes say amount_mismatch.
    view = lv.pay(amount=str(int(DEMO["amount"]) + 1_000_000))
    assert (view["status"], view["failure_code"]) == ("failed", "amount_mismatch"), view

    b.always(Fault.status(503))
    fresh = live([a.url, b.url], quorum=2)  # the transfer already backs the first session
    view = fresh.pay(amount=str(int(DEMO["amount"]) + 1_000_000))
    assert_pending(view)  # one node's "failed" is not a quorum
    assert "only 1 of the 2" in view["detail"]


def test_quorum_not_found_needs_the_quorum_too(nodes, live):
    a, b = nodes(2)
    a.behave(Behaviour.behind)
    b.behave(Behaviour.behind)
    lv = live([a.url, b.url], quorum=2)
    view = lv.pay()
    assert_pending(view, "tx_not_found")
    b.behave(Behaviour.honest)
    b.always(Fault.status(503))
    assert proofs.verify_proof(lv.engine, view["id"]).code.value == "rpc_unavailable"


@pytest.mark.parametrize("same_url_twice", [False, True], ids=["one-url", "same-url-twice"])
def test_quorum_with_fewer_independent_urls_than_needed_never_verifies(nodes, live, same_url_twice):
    (node,) = nodes()
    lv = live([node.url, node.url] if same_url_twice else [node.url], quorum=2)
    view = lv.pay()
    assert_pending(view)
    assert "needs 2 independent RPC URLs; 1 configured" in view["detail"]
    assert node.count() == 0
    with lv.engine.db.tx() as s:
        assert s.scalar(select(func.count()).select_from(Proof)) == 1


# -- the adapter and the gate agree on the session window at whole-second resolution ---------


def test_same_second_payment_is_verified_and_applicable(nodes, live):
    (node,) = nodes()
    lv = live([node.url])
    sess = lv.session()
    opened = datetime.fromisoformat(sess["created_at"].replace("Z", "+00:00"))
    node.block_time = lambda: int(opened.timestamp())  # mined in the second the session opened
    view = lv.submit(sess["id"])
    assert view["status"] == "verified", view
    report = lv.dry_run(view["id"])
    assert report["would_apply"] is True, report["blockers"]
