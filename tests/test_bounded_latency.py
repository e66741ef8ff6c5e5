"""Bounded latency when the chain or the database is slow.

Proven here (on verdicts and stored rows, never on wall-clock timings):
- a submission verifies within RAILPROOF_SUBMIT_VERIFY_BUDGET_S: against a node that accepts
  and never answers it is answered `pending rpc_unavailable` (the budget ran out), and the
  worker, which keeps the RPC policy's longer bounds, finishes it once the chain answers;
- a verification that ignores its deadline is abandoned, and the abandoned run records nothing;
- RPC timeouts, attempts and total time are read per network, and readiness shows them;
- with RAILPROOF_RPC_QUORUM=2 a single lying node cannot make a settlement final (or reorged);
- the same for the EVM (base_usdc), x402 and Tron (tron_usdt) transports: a hanging node
  answers pending at once, and the worker finishes the proof once the chain answers;
- PostgreSQL: a client holding the gate's row lock makes apply and submission answer 503
  database_busy with Retry-After once lock_timeout passes, and nothing half-done is stored;
  a timeout while a submission records its attempt answers the proof as stored (pending, or
  503 naming the stored proof when even that read times out), and the worker finishes it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import create_engine, select, text, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from rails.base import Settlement, Terms
from rails.transport.cassette import Call, CassetteTransport, read_cassette
from rails.transport.rpc_policy import RpcPolicy
from rails.transport.solana_http import SolanaRpcTransport
from tests.conftest import STAFF_TOKEN, auth, make_pg_db, make_settings
from tests.fake_rail import ScriptedChain, catalog_with_fake
from tests.fault_rpc import DEMO_CASSETTE, Behaviour, FaultRpcNode, now_block_time
from tests.jsonrpc_server import Fault
from tests.test_engine_proofs import pay
from tests.test_gate import paid_proof
from tests.test_transfer_identity import HEADER, OPENED_AT, PAY_TO, PAYER, VALUE, Settled
from tests.test_tron_adapter import AMOUNT as TRON_AMOUNT
from tests.test_tron_adapter import BLOCK_TIME as TRON_BLOCK_TIME
from tests.test_tron_adapter import OK_TX as TRON_TX
from tests.test_tron_adapter import RECIPIENT as TRON_RECIPIENT
from tests.test_tron_adapter import SENDER as TRON_SENDER
from tests.test_tron_adapter import recorded as tron_recorded
from verifier.core.chains import Chains
from verifier.core.checking import decide_settlement
from verifier.core.config import Settings
from verifier.core.engine import Engine
from verifier.http.api import create_app
from verifier.storage.db import Database, is_busy, upgrade
from verifier.storage.models import (
    AuditEvent,
    Entitlement,
    IdempotencyClaim,
    PaymentSession,
    Proof,
    RailState,
    Receipt,
    VerificationAttempt,
)
from verifier.tools.bench import SilentNode
from verifier.worker import loop as worker

DEMO = json.loads(DEMO_CASSETTE.read_text())["demo"]
NETWORK = "solana-mainnet"
SERVICE = "svc-alice"


# -- a live engine whose transports come from settings --------------------------------------------


class Live:
    """Live mode on its own SQLite file, with the default Chains: the transports and their RPC
    policy come from settings, as in a deployment."""

    def __init__(self, url: str, urls: list[str], **settings: Any):
        env = {"RAILPROOF_RPC_SOLANA_MAINNET": ",".join(urls), **settings.pop("env", {})}
        self.settings = Settings(
            database_url=url,
            chain="live",
            env=env,
            service_tokens={SERVICE: ["alice"]},
            staff_tokens={STAFF_TOKEN: "ops1"},
            **settings,
        )
        self.engine = Engine(self.settings)
        self.engine.ensure_rail_states()
        self.client = TestClient(create_app(self.engine), raise_server_exceptions=False)
        self.extra: list[Any] = []

    def close(self) -> None:
        self.client.close()
        chains = self.engine.chains
        for t in [
            *chains._by_network.values(),
            *sum(chains._independent.values(), []),
            *self.extra,
        ]:
            if hasattr(t, "close"):
                t.close()
        self.engine.db.dispose()

    def pay(self, **over: Any) -> dict[str, Any]:
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
        r = self.client.post("/v1/payment-sessions", headers=auth(SERVICE), json=body)
        assert r.status_code == 201, r.text
        r = self.client.post(
            "/v1/proofs",
            headers=auth(SERVICE),
            json={"session_id": r.json()["id"], "proof": DEMO["signature"]},
        )
        assert r.status_code == 201, r.text
        return r.json()

    def proof(self, pid: str) -> dict[str, Any]:
        r = self.client.get(f"/v1/proofs/{pid}", headers=auth(SERVICE))
        assert r.status_code == 200, r.text
        return r.json()

    def attempts(self, pid: str) -> list[str]:
        with self.engine.db.tx() as s:
            return list(
                s.scalars(
                    select(VerificationAttempt.status)
                    .where(VerificationAttempt.proof_id == pid)
                    .order_by(VerificationAttempt.id)
                )
            )

    def make_due(self, pid: str) -> None:
        """The worker's next look at the proof is now (live mode runs on the real clock)."""
        with self.engine.db.tx() as s:
            s.execute(
                update(Proof)
                .where(Proof.id == pid)
                .values(next_check_at=self.engine.now() - timedelta(seconds=1))
            )


@pytest.fixture
def live(tmp_path) -> Iterator[Any]:
    made: list[Live] = []

    def make(urls: list[str], **settings: Any) -> Live:
        url = f"sqlite:///{tmp_path}/live-{len(made)}.db"
        upgrade(url)
        made.append(Live(url, urls, **settings))
        return made[-1]

    yield make
    for lv in made:
        lv.close()


@pytest.fixture
def nodes() -> Iterator[Any]:
    started: list[FaultRpcNode] = []

    def start(n: int = 1) -> list[FaultRpcNode]:
        for _ in range(n):
            started.append(FaultRpcNode([DEMO_CASSETTE], block_time=now_block_time).start())
        return started[-n:]

    yield start
    for node in started:
        node.release()
        node.stop()


@pytest.fixture
def silent() -> Iterator[SilentNode]:
    with SilentNode() as node:
        yield node


# -- the submission budget ------------------------------------------------------------------------


def test_a_hanging_node_is_answered_pending_and_the_worker_finishes_it(live, silent, nodes):
    lv = live([silent.url], submit_verify_budget_s=0.5)
    view = lv.pay()
    assert (view["status"], view["failure_code"]) == ("pending", "rpc_unavailable"), view
    assert "verification budget of 0.5s ran out" in view["detail"]
    assert silent.accepted >= 1  # the node was asked, and never answered
    assert lv.attempts(view["id"]) == ["pending"]

    # The chain answers again (here: another node, serving the recorded payment).
    (honest,) = nodes()
    answering = SolanaRpcTransport([honest.url], NETWORK)
    lv.extra.append(answering)
    lv.engine.chains.set_transport(NETWORK, answering)
    lv.make_due(view["id"])
    assert worker.sweep(lv.engine, "w1")["reverified"] == 1
    done = lv.proof(view["id"])
    assert done["status"] == "verified", done
    assert lv.attempts(view["id"]) == ["pending", "verified"]


def test_the_worker_is_not_held_to_the_submission_budget(live, nodes):
    """A node slower than the submission budget but inside the RPC policy: the submission
    answers pending at once, the worker's own verification of the same proof succeeds."""
    (slow,) = nodes()
    slow.always(Fault.slow(1.0))
    lv = live([slow.url], submit_verify_budget_s=0.3)
    view = lv.pay()
    assert (view["status"], view["failure_code"]) == ("pending", "rpc_unavailable"), view
    assert "budget of 0.3s ran out" in view["detail"]

    lv.make_due(view["id"])
    assert worker.sweep(lv.engine, "w1")["reverified"] == 1
    assert lv.proof(view["id"])["status"] == "verified"


class _Case(NamedTuple):
    """A rail's recorded payment: the session, the proof, and the chain once it answers."""

    family: str
    network: str
    clock: datetime
    session: dict[str, Any]
    proof: str
    answering: Callable[[], Any]
    finished: str  # the proof's status once the worker has verified it


def _case(rail_id: str) -> _Case:
    if rail_id == "tron_usdt":  # review-only: the worker's verdict is requires_review
        return _Case(
            "tron",
            "tron-mainnet",
            TRON_BLOCK_TIME - timedelta(minutes=1),
            {"amount": TRON_AMOUNT, "recipient": TRON_RECIPIENT, "payer": TRON_SENDER},
            TRON_TX,
            tron_recorded,
            "requires_review",
        )
    # The x402 payload and its settlement on the local Base Sepolia chain (py-evm).
    settled = Settled()
    session = {"amount": VALUE, "recipient": PAY_TO}
    if rail_id == "base_usdc":
        session["payer"] = PAYER
    proof = HEADER if rail_id == "x402" else settled.settlement
    clock = datetime.fromtimestamp(OPENED_AT, tz=UTC)
    return _Case("evm", "base-sepolia", clock, session, proof, lambda: settled.chain, "verified")


@pytest.mark.parametrize("rail_id", ["base_usdc", "x402", "tron_usdt"])
def test_every_familys_hanging_node_is_answered_pending_and_the_worker_finishes_it(
    tmp_path, silent, rail_id
):
    case = _case(rail_id)
    url = f"sqlite:///{tmp_path}/family.db"
    upgrade(url)
    env = {"RAILPROOF_NETWORK_X402": case.network, "RAILPROOF_NETWORK_BASE_USDC": case.network}
    # A pinned clock (the recorded payments' time) needs recorded mode, so the network's live
    # transport is built here, as a live deployment builds it (its RPC policy from settings).
    e = Engine(make_settings(url, clock=case.clock, env=env, submit_verify_budget_s=0.5))
    hanging = e.chains._default_live(case.family, [silent.url], case.network)
    e.chains.set_transport(case.network, hanging)
    e.ensure_rail_states()
    try:
        with TestClient(create_app(e), raise_server_exceptions=False) as client:
            body = {"owner_id": "alice", "rail_id": rail_id, "access_product_id": "api"}
            r = client.post("/v1/payment-sessions", headers=auth(), json=body | case.session)
            assert r.status_code == 201, r.text
            r = client.post(
                "/v1/proofs",
                headers=auth(),
                json={"session_id": r.json()["id"], "proof": case.proof},
            )
            assert r.status_code == 201, r.text
            view = r.json()
            assert (view["status"], view["failure_code"]) == ("pending", "rpc_unavailable"), view
            assert "verification budget of 0.5s ran out" in view["detail"]
            assert silent.accepted >= 1  # the node was asked, and never answered
            assert _attempts(e, view["id"]) == ["pending"]

            # The chain answers again: the worker (without the submission's budget) finishes it.
            e.chains.set_transport(case.network, case.answering())
            _make_due(e, view["id"])
            assert worker.sweep(e, "w1")["reverified"] == 1
            r = client.get(f"/v1/proofs/{view['id']}", headers=auth())
            assert r.json()["status"] == case.finished, r.text
            assert _attempts(e, view["id"]) == ["pending", case.finished]
    finally:
        if hasattr(hanging, "close"):
            hanging.close()
        e.db.dispose()


def _attempts(e: Engine, pid: str) -> list[str]:
    with e.db.tx() as s:
        return list(
            s.scalars(
                select(VerificationAttempt.status)
                .where(VerificationAttempt.proof_id == pid)
                .order_by(VerificationAttempt.id)
            )
        )


def _make_due(e: Engine, pid: str) -> None:
    with e.db.tx() as s:
        s.execute(
            update(Proof)
            .where(Proof.id == pid)
            .values(next_check_at=e.now() - timedelta(seconds=1))
        )


class _Stuck:
    """A live transport whose calls ignore any deadline: the first blocks until released, then
    it answers from the recorded demo payment."""

    source = "live"

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.release = threading.Event()
        self._recorded = CassetteTransport(
            [Call(c) for c in read_cassette(DEMO_CASSETTE)["calls"]], NETWORK
        )

    def call(self, method: str, params: list[Any]) -> Any:
        self.calls.append(method)
        self.release.wait(30)
        return self._recorded.call(method, params)


def _budget_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "verify-budget"]


def test_a_call_that_cannot_be_cut_short_is_abandoned_and_records_nothing(live, silent):
    lv = live([silent.url], submit_verify_budget_s=0.2)
    stuck = _Stuck()
    lv.engine.chains.set_transport(NETWORK, stuck)
    try:
        view = lv.pay()
    finally:
        stuck.release.set()
    assert (view["status"], view["failure_code"]) == ("pending", "rpc_unavailable"), view
    assert "budget of 0.2s ran out" in view["detail"]

    for t in _budget_threads():  # let the abandoned run finish
        t.join(10)
    # It got its first answer late: its next chain call was refused, and nothing it concluded
    # reached the database.
    assert stuck.calls == ["getTransaction"]
    assert lv.attempts(view["id"]) == ["pending"]
    assert lv.proof(view["id"])["status"] == "pending"


def test_a_recorded_chain_is_not_budgeted(tmp_path):
    """Cassette replay answers from memory: no thread, and the budget never cuts it."""
    url = f"sqlite:///{tmp_path}/c.db"
    upgrade(url)
    settings = make_settings(url, submit_verify_budget_s=0.001)
    e = Engine(settings)
    try:
        adapter = e.adapter(e.rail("solana_usdc"))
        terms = Terms(
            recipient=DEMO["recipient"],
            amount=int(DEMO["amount"]),
            reference=DEMO["reference"],
            memo=DEMO["memo"],
            now=settings.now(),
        )
        e.chains.set_transport(
            NETWORK,
            CassetteTransport([Call(c) for c in read_cassette(DEMO_CASSETTE)["calls"]], NETWORK),
        )
        before = len(_budget_threads())
        checked = e.chains.verify(adapter, DEMO["signature"], terms, budget_s=0.001)
        assert checked.rpc_calls == 2 and "budget" not in checked.verdict.detail
        assert len(_budget_threads()) == before
    finally:
        e.db.dispose()


# -- the RPC policy, per network ------------------------------------------------------------------


def test_rpc_policy_is_read_per_network():
    s = Settings(
        rpc_total_s=7,
        env={
            "RAILPROOF_RPC_TIMEOUT_S_SOLANA_MAINNET": "1.5",
            "RAILPROOF_RPC_ATTEMPTS_SOLANA_MAINNET": "5",
            "RAILPROOF_RPC_TOTAL_S_BASE": "4",
        },
    )
    assert s.rpc_policy("solana-mainnet") == RpcPolicy(timeout_s=1.5, attempts=5, total_s=7)
    assert s.rpc_policy("solana-devnet") == RpcPolicy(timeout_s=8, attempts=3, total_s=7)
    assert s.rpc_policy("base") == RpcPolicy(timeout_s=8, attempts=3, total_s=4)
    assert Settings(env={}).rpc_policy("base") == RpcPolicy()


def test_global_rpc_policy_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("RAILPROOF_RPC_TIMEOUT_S", "2.5")
    monkeypatch.setenv("RAILPROOF_RPC_ATTEMPTS", "2")
    monkeypatch.setenv("RAILPROOF_SUBMIT_VERIFY_BUDGET_S", "1.5")
    s = Settings()
    assert s.rpc_policy("ethereum") == RpcPolicy(timeout_s=2.5, attempts=2, total_s=20)
    assert s.submit_verify_budget_s == 1.5


@pytest.mark.parametrize(
    "key,value",
    [("RAILPROOF_RPC_TIMEOUT_S_BASE", "0"), ("RAILPROOF_RPC_ATTEMPTS_ETHEREUM", "many")],
)
def test_a_bad_per_network_bound_is_refused_at_startup(key, value):
    with pytest.raises(ValidationError) as e:
        Settings(env={key: value})
    assert key.rsplit("_", 1)[-1] in str(e.value)


def test_live_transports_get_their_networks_policy():
    s = Settings(
        chain="live",
        env={
            "RAILPROOF_RPC_SOLANA_MAINNET": "http://127.0.0.1:9/",
            "RAILPROOF_RPC_ETHEREUM": "http://127.0.0.1:9/",
            "RAILPROOF_RPC_TIMEOUT_S_SOLANA_MAINNET": "1.5",
            "RAILPROOF_RPC_ATTEMPTS_ETHEREUM": "7",
        },
    )
    chains = Chains(s)
    sol = chains.transport("solana", "solana-mainnet")  # built, never called
    evm = chains.transport("evm", "ethereum")
    try:
        assert (sol.policy.timeout, sol.policy.attempts) == (1.5, 3)
        assert (evm.policy.timeout, evm.policy.attempts) == (8.0, 7)
    finally:
        sol.close()


def test_readiness_shows_each_rails_rpc_policy(live, silent):
    lv = live(
        [silent.url],
        submit_verify_budget_s=2.0,
        rpc_attempts=2,
        env={"RAILPROOF_RPC_TIMEOUT_S_SOLANA_MAINNET": "1.5"},
    )
    r = lv.client.get("/v1/admin/rails/readiness", headers=auth(STAFF_TOKEN))
    assert r.status_code == 200, r.text
    rails = {row["rail_id"]: row for row in r.json()}
    assert rails["solana_usdc"]["rpc_policy"] == {
        "timeout_s": 1.5,
        "attempts": 2,
        "total_s": 20.0,
        "submit_budget_s": 2.0,
    }
    assert rails["evm_usdc"]["rpc_policy"] == {
        "timeout_s": 8.0,
        "attempts": 2,
        "total_s": 20.0,
        "submit_budget_s": 2.0,
    }
    # Added, nothing taken away.
    assert {"blockers", "ready", "live_verifier_configured"} <= set(rails["solana_usdc"])


# -- finality under the quorum --------------------------------------------------------------------


def test_a_lying_node_cannot_make_a_settlement_final(live, nodes):
    truth, liar = nodes(2)
    truth.behave(Behaviour.lagging)
    liar.behave(Behaviour.lagging)
    lv = live([truth.url, liar.url], rpc_quorum=2)
    view = lv.pay()
    assert view["status"] == "verified" and view["settlement"]["is_final"] is False, view

    # The chain has not finalized it (the honest node says confirmed); one node says finalized.
    liar.behave(Behaviour.honest)
    lv.make_due(view["id"])
    assert worker.refresh_finality(lv.engine, "w1", 10) == 1
    assert lv.proof(view["id"])["settlement"]["is_final"] is False
    # Nor can a node that says it never saw the transaction move it anywhere.
    liar.behave(Behaviour.behind)
    truth.behave(Behaviour.honest)
    lv.make_due(view["id"])
    worker.refresh_finality(lv.engine, "w1", 10)
    assert lv.proof(view["id"])["settlement"]["finality"] == "confirmed"

    # Both nodes see it finalized: now it is final.
    liar.behave(Behaviour.honest)
    lv.make_due(view["id"])
    worker.refresh_finality(lv.engine, "w1", 10)
    settled = lv.proof(view["id"])["settlement"]
    assert settled["is_final"] is True and settled["finality"] == "finalized", settled


def _st(
    finality: str, *, final: bool = False, reorged: bool = False, block: str = "0xa"
) -> Settlement:
    return Settlement(
        ref="0x1",
        finality=finality,
        is_final=final,
        reorged=reorged,
        block_number=7,
        block_hash=block,
    )


def test_decide_settlement_needs_a_quorum_for_final_and_for_reorged():
    final, confirmed = _st("finalized", final=True), _st("confirmed")
    reorged = _st("reorged", reorged=True)
    assert decide_settlement([final, final], 2).is_final
    assert decide_settlement([final, None], 2) is None  # one answer is not a quorum
    assert decide_settlement([final, confirmed], 2).finality == "confirmed"  # least final
    assert decide_settlement([final, _st("finalized", final=True, block="0xb")], 2) is None
    assert decide_settlement([final, reorged], 2) is None  # one node alone cannot undo it
    assert decide_settlement([final, final, reorged], 2) is None  # nor be outvoted into final
    assert decide_settlement([reorged, reorged, final], 2).reorged
    # The block's time (x402: the apply gate's window reads it) is agreed on like the block.
    at = datetime(2026, 12, 7, tzinfo=UTC)
    timed = final.model_copy(update={"block_time": at})
    later = final.model_copy(update={"block_time": at + timedelta(hours=1)})
    assert decide_settlement([timed, timed], 2).block_time == at
    assert decide_settlement([later, timed], 2) is None  # one node does not pick it
    assert decide_settlement([final, timed], 2) is None


# -- PostgreSQL: lock and statement timeouts -------------------------------------------------------


@pytest.fixture
def pg_url(pg_template) -> Iterator[str]:
    url, drop = make_pg_db(pg_template)
    yield url
    drop()


@pytest.fixture
def pg(pg_url) -> Iterator[tuple[Engine, ScriptedChain, TestClient]]:
    db = Database(pg_url, pg_lock_timeout_ms=300, pg_statement_timeout_ms=20_000)
    e = Engine(make_settings(pg_url), db=db, catalog=catalog_with_fake())
    chain = ScriptedChain()
    e.chains.set_transport("fakenet", chain)
    e.ensure_rail_states()
    with TestClient(create_app(e), raise_server_exceptions=False) as client:
        yield e, chain, client
    e.db.dispose()


class _RowLock:
    """Another client holding the rail's state row FOR UPDATE in an open transaction."""

    def __init__(self, url: str, rail_id: str):
        self._engine = create_engine(url)
        self._conn = self._engine.connect()
        self._conn.execute(
            text(f"SELECT rail_id FROM {RailState.__tablename__} WHERE rail_id = :r FOR UPDATE"),
            {"r": rail_id},
        )

    def release(self) -> None:
        self._conn.rollback()
        self._conn.close()
        self._engine.dispose()


def _busy(r: Any) -> None:
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "database_busy" and "Traceback" not in r.text
    assert int(r.headers["Retry-After"]) > 0


@pytest.mark.postgres
def test_connections_carry_the_timeouts(pg):
    e, _, _ = pg
    with e.db.tx() as s:
        assert s.scalar(text("SHOW lock_timeout")) == "300ms"
        assert s.scalar(text("SHOW statement_timeout")) == "20s"


@pytest.mark.postgres
def test_a_held_lock_makes_apply_answer_503_and_change_nothing(pg, pg_url):
    e, chain, client = pg
    sess, view = paid_proof(e, chain)
    lock = _RowLock(pg_url, "fake_live")
    try:
        r = client.post(
            f"/v1/admin/proofs/{view['id']}/apply",
            headers=auth(STAFF_TOKEN),
            json={"confirm": True, "incident_id": "INC-1", "operator_reason": "busy row"},
        )
    finally:
        lock.release()
    _busy(r)
    with e.db.tx() as s:
        assert s.scalars(select(Receipt)).all() == []
        ent = s.scalar(select(Entitlement).where(Entitlement.session_id == sess["id"]))
        assert (ent.status, ent.receipt_id) == ("pending", None)
        assert s.get(PaymentSession, sess["id"]).status == "open"
        assert not s.scalars(select(AuditEvent).where(AuditEvent.action == "proof.applied")).all()

    r = client.post(
        f"/v1/admin/proofs/{view['id']}/apply",
        headers=auth(STAFF_TOKEN),
        json={"confirm": True, "incident_id": "INC-1", "operator_reason": "busy row"},
    )
    assert r.status_code == 200 and r.json()["applied"] is True, r.text


@pytest.mark.postgres
def test_a_held_lock_makes_a_submission_answer_503_and_store_nothing(pg, pg_url):
    e, chain, client = pg
    sess = _funded_session(client, chain, "fx00b05e01")
    body = {"session_id": sess["id"], "proof": "fx00b05e01"}
    headers = {**auth(), "Idempotency-Key": "busy-1"}

    lock = _RowLock(pg_url, "fake_live")
    try:
        r = client.post("/v1/proofs", headers=headers, json=body)
    finally:
        lock.release()
    _busy(r)
    with e.db.tx() as s:
        assert s.scalars(select(Proof).where(Proof.session_id == sess["id"])).all() == []
        assert not s.scalars(select(AuditEvent).where(AuditEvent.action == "proof.submitted")).all()
        assert s.scalars(select(IdempotencyClaim)).all() == []  # released for the retry

    r = client.post("/v1/proofs", headers=headers, json=body)  # the client's retry
    assert r.status_code == 201 and r.json()["status"] == "verified", r.text


class _LockingChain(ScriptedChain):
    """The scripted chain, which lets another client take a lock (`sql`, given the session
    id) and hold it in an open transaction before answering: between the submission's first
    transaction (the proof row, committed) and the one that records its attempt."""

    def __init__(self, url: str, sql: str, txs: dict[str, Any]):
        super().__init__()
        self.txs = txs
        self._engine = create_engine(url)
        self._sql = sql
        self._conn: Any = None

    def call(self, method: str, params: list[Any]) -> Any:
        if method == "fake_getTransfer" and self._conn is None:
            self._conn = self._engine.connect()
            self._conn.execute(text(self._sql))
        return super().call(method, params)

    def release(self) -> None:
        if self._conn is not None:
            self._conn.rollback()
            self._conn.close()
        self._engine.dispose()


_ALICES_SESSION = {
    "owner_id": "alice",
    "rail_id": "fake_live",
    "access_product_id": "pro",
    "amount": 1_500_000,
    "recipient": "fatreasury",
}


def _funded_session(client: TestClient, chain: ScriptedChain, tx: str) -> dict[str, Any]:
    """A session on the fake rail, and a transfer `tx` on the chain that pays it."""
    r = client.post("/v1/payment-sessions", headers=auth(), json=_ALICES_SESSION)
    assert r.status_code == 201, r.text
    sess = r.json()
    pay(chain, tx, sess, finality="finalized")
    return sess


def _stored_proof(e: Engine, session_id: str) -> Proof:
    with e.db.tx() as s:
        (p,) = s.scalars(select(Proof).where(Proof.session_id == session_id)).all()
        s.expunge(p)
        return p


def _submitted_audited(e: Engine, proof_id: str) -> bool:
    with e.db.tx() as s:
        return (
            s.scalar(
                select(AuditEvent.id).where(
                    AuditEvent.action == "proof.submitted", AuditEvent.subject_id == proof_id
                )
            )
            is not None
        )


@pytest.mark.postgres
def test_a_timeout_while_recording_the_attempt_answers_the_stored_pending_proof(pg, pg_url):
    """The proof row is committed before the chain is asked; another client then holds it
    past lock_timeout, so the attempt cannot be recorded. The answer is the proof as stored
    (pending, as any pending proof), never "nothing was changed"; the worker verifies it."""
    e, chain, client = pg
    sess = _funded_session(client, chain, "fx00b05e02")
    locking = _LockingChain(
        pg_url,
        f"SELECT id FROM {Proof.__tablename__} WHERE session_id = '{sess['id']}' FOR UPDATE",
        chain.txs,
    )
    e.chains.set_transport("fakenet", locking)
    body = {"session_id": sess["id"], "proof": "fx00b05e02"}
    headers = {**auth(), "Idempotency-Key": "busy-step-3"}
    try:
        r = client.post("/v1/proofs", headers=headers, json=body)
    finally:
        locking.release()
    assert r.status_code == 201, r.text
    view = r.json()
    stored = _stored_proof(e, sess["id"])
    assert (view["id"], view["status"], view["failure_code"]) == (stored.id, "pending", None)
    assert (stored.status, stored.attempts) == ("pending", 0)
    assert _attempts(e, stored.id) == []  # the chain's answer was not recorded
    assert _submitted_audited(e, stored.id)
    # The client's retry gets the same answer (a success, kept by its Idempotency-Key).
    again = client.post("/v1/proofs", headers=headers, json=body)
    assert (again.status_code, again.json()["id"]) == (201, stored.id), again.text

    e.chains.set_transport("fakenet", chain)
    assert worker.sweep(e, "w1")["reverified"] == 1
    assert _stored_proof(e, sess["id"]).status == "verified"
    assert _attempts(e, stored.id) == ["verified"]


@pytest.mark.postgres
def test_a_timeout_that_blocks_even_the_read_back_names_the_stored_proof(pg, pg_url):
    """The proofs table itself is locked, so the stored proof cannot be read back either: a
    503 database_busy with Retry-After that names the stored pending proof."""
    e, chain, client = pg
    sess = _funded_session(client, chain, "fx00b05e03")
    locking = _LockingChain(
        pg_url, f"LOCK TABLE {Proof.__tablename__} IN ACCESS EXCLUSIVE MODE", chain.txs
    )
    e.chains.set_transport("fakenet", locking)
    body = {"session_id": sess["id"], "proof": "fx00b05e03"}
    headers = {**auth(), "Idempotency-Key": "busy-read-back"}
    try:
        r = client.post("/v1/proofs", headers=headers, json=body)
    finally:
        locking.release()
    _busy(r)
    stored = _stored_proof(e, sess["id"])
    err = r.json()["error"]
    assert (err["proof_id"], err["proof_status"]) == (stored.id, "pending"), err
    assert f"proof {stored.id} is stored pending" in err["message"]
    assert "nothing was changed" not in err["message"]
    assert (stored.status, stored.attempts) == ("pending", 0)
    assert _submitted_audited(e, stored.id)
    # The client's retry answers the stored proof.
    again = client.post("/v1/proofs", headers=headers, json=body)
    assert (again.status_code, again.json()["id"]) == (200, stored.id), again.text

    e.chains.set_transport("fakenet", chain)
    assert worker.sweep(e, "w1")["reverified"] == 1
    assert _stored_proof(e, sess["id"]).status == "verified"


def test_busy_means_a_timeout_not_any_database_error():
    locked = OperationalError("INSERT", {}, sqlite3.OperationalError("database is locked"))
    other = OperationalError("INSERT", {}, sqlite3.OperationalError("no such table: proofs"))
    assert is_busy(locked) and not is_busy(other)
    psycopg = pytest.importorskip("psycopg")
    assert is_busy(OperationalError("SELECT", {}, psycopg.errors.LockNotAvailable()))
    assert is_busy(OperationalError("SELECT", {}, psycopg.errors.QueryCanceled()))
    assert not is_busy(OperationalError("SELECT", {}, psycopg.errors.UndefinedTable()))


def _pool_timeout(*_a: Any, **_k: Any) -> Any:
    raise PoolTimeout("QueuePool limit of size 10 overflow 20 reached, connection timed out")


def test_no_pooled_connection_in_time_is_busy_not_an_internal_error(engine, client, monkeypatch):
    """Every pooled connection in use past the pool's timeout (a long write lock elsewhere,
    more waiting requests than connections): 503 database_busy with Retry-After, never 500."""
    from verifier.services import sessions

    assert is_busy(PoolTimeout("QueuePool limit reached"))
    monkeypatch.setattr(sessions, "open_session", _pool_timeout)
    r = client.post(
        "/v1/payment-sessions",
        headers={**auth(), "Idempotency-Key": "pool-timeout"},
        json=_ALICES_SESSION,
    )
    _busy(r)


def test_no_connection_for_the_attempt_answers_the_stored_pending_proof(
    engine, client, chain, monkeypatch
):
    """The proof row committed, then no connection came free to record the attempt: the
    answer is the stored pending proof, as for a lock timeout there, and the worker verifies
    it."""
    from verifier.services import proofs

    sess = _funded_session(client, chain, "fx00b05e04")
    monkeypatch.setattr(proofs, "_record_attempt", _pool_timeout)
    r = client.post(
        "/v1/proofs", headers=auth(), json={"session_id": sess["id"], "proof": "fx00b05e04"}
    )
    assert r.status_code == 201, r.text
    stored = _stored_proof(engine, sess["id"])
    assert (r.json()["id"], r.json()["status"]) == (stored.id, "pending")
    monkeypatch.undo()
    assert worker.sweep(engine, "w1")["reverified"] == 1
    assert _stored_proof(engine, sess["id"]).status == "verified"


def test_bench_measures_submission_against_a_hanging_node(tmp_path):
    from verifier.tools import bench

    url = f"sqlite:///{tmp_path}/bench.db"
    upgrade(url)
    settings = Settings(
        database_url=url,
        chain="cassette",
        clock=bench.CLOCK,
        env={},
        cassette_dir=tmp_path / "none",
    )
    e = Engine(settings)
    e.ensure_rail_states()
    e.db.dispose()
    out = bench.bench_submit_hanging_node(settings, samples=2, budget_s=0.1)
    assert out["hanging_node_statuses"] == {"pending": 2}
    assert (out["hanging_node_budget_s"], out["hanging_node_default_budget_s"]) == (0.1, 3.0)
    assert isinstance(out["submit_p99_ms_hanging_node"], float)
