"""The worker: re-verification with backoff, giving up only after expiry plus grace, finality
refresh in one batched call, reorg flagging under an active entitlement, the automatic apply
path, and several workers sharing one database without processing a proof twice."""

from __future__ import annotations

import copy
import json
import logging
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import create_engine, select, text

from rails.errors import RpcUnavailable
from tests.conftest import make_settings
from tests.fake_rail import ScriptedChain, catalog_with_fake
from tests.gates import pass_release_gates_in
from tests.helpers import FIXTURES, SwitchableTransport, advance, cassette_engine, recorded_calls
from tests.procs import Worker, base_env, migrate, wait_until
from tests.test_e2e_http import (
    EVM_CLOCK,
    EVM_USDC_AMOUNT,
    EVM_USDC_FROM,
    EVM_USDC_TO,
    EVM_USDC_TX,
)
from tests.test_gate import OP, paid_proof
from verifier.core.engine import Engine
from verifier.core.timeutil import utc
from verifier.services import gate, proofs, rails_admin
from verifier.services.assurance import assurance_report, refresh_gauges
from verifier.services.sessions import NewSession, open_session
from verifier.storage.db import head_revision
from verifier.storage.models import (
    WORKER_NAME_MAX,
    Entitlement,
    Proof,
    RailState,
    Receipt,
    VerificationAttempt,
)
from verifier.worker import loop as worker


def proof_row(engine, pid) -> Proof:
    with engine.db.tx() as s:
        return s.get(Proof, pid)


def attempts(engine, pid) -> list[VerificationAttempt]:
    with engine.db.tx() as s:
        return list(
            s.scalars(
                select(VerificationAttempt)
                .where(VerificationAttempt.proof_id == pid)
                .order_by(VerificationAttempt.id)
            ).all()
        )


def due(engine, pid) -> None:
    """Move the clock to just past the proof's next check."""
    nxt = utc(proof_row(engine, pid).next_check_at)
    engine.settings.clock = nxt + timedelta(seconds=1)


def test_pending_proofs_are_rechecked_with_growing_backoff(engine, chain):
    _, view = paid_proof(engine, chain, found=False)
    pid = view["id"]
    first = utc(proof_row(engine, pid).next_check_at)
    assert first > engine.now()

    # Not due yet: the sweep leaves it alone.
    assert worker.sweep(engine, "w1")["reverified"] == 0
    gaps = []
    for _ in range(3):
        due(engine, pid)
        now = engine.now()
        assert worker.sweep(engine, "w1")["reverified"] == 1
        p = proof_row(engine, pid)
        assert (p.status, p.failure_code, p.claimed_by) == ("pending", "tx_not_found", None)
        gaps.append((utc(p.next_check_at) - now).total_seconds())
    assert gaps[0] < gaps[1] < gaps[2]  # exponential (jitter ±20 % cannot reorder doublings)
    assert [a.worker for a in attempts(engine, pid)] == [None, "w1", "w1", "w1"]


def test_gives_up_only_after_session_expiry_plus_grace(engine, chain):
    sess, view = paid_proof(engine, chain, found=False)
    pid = view["id"]
    expires = utc(proof_row(engine, pid).created_at) + timedelta(
        seconds=engine.settings.session_ttl_seconds
    )
    grace = timedelta(seconds=engine.settings.tx_not_found_grace_seconds)
    # The worker re-checks it as it runs (a silence longer than the grace would start the
    # grace again: see tests/test_not_found_grace.py).
    while engine.settings.now() < expires + grace - timedelta(minutes=20):
        advance(engine, 600)
        worker.sweep(engine, "w1")
        assert proof_row(engine, pid).status == "pending"

    engine.settings.clock = expires + grace - timedelta(seconds=5)
    worker.sweep(engine, "w1")
    assert proof_row(engine, pid).status == "pending"  # expired, but within the grace

    due(engine, pid)  # the next re-check, past the grace
    assert engine.settings.now() > expires + grace
    worker.sweep(engine, "w1")
    p = proof_row(engine, pid)
    assert (p.status, p.failure_code, p.next_check_at) == ("failed", "tx_not_found", None)
    assert "grace" in p.detail
    # Definitive: nothing picks it up again.
    advance(engine, 3600)
    assert worker.sweep(engine, "w1")["reverified"] == 0


def test_rpc_errors_keep_proofs_pending(engine, chain):
    sess, view = paid_proof(engine, chain, found=False)
    pid = view["id"]
    chain.fail_with = RpcUnavailable("node down")
    for _ in range(2):
        due(engine, pid)
        worker.sweep(engine, "w1")
    p = proof_row(engine, pid)
    assert (p.status, p.failure_code) == ("pending", "rpc_unavailable")
    assert p.next_check_at is not None
    # Long past the session's expiry: an unavailable RPC still never turns into `failed`.
    advance(engine, 10 * 24 * 3600)
    worker.sweep(engine, "w1")
    assert proof_row(engine, pid).status == "pending"
    assert b'railproof_rpc_errors_total{kind="verify",network="fakenet"}' in engine.metrics.render()

    chain.fail_with = None
    chain.txs[p.ref] = {
        "status": "ok",
        "to": "fatreasury",
        "amount": 1_500_000,
        "asset": "fusd",
        "refs": [sess["reference"]],
        "time": int(utc(p.created_at).timestamp()) + 30,
    }
    due(engine, pid)
    worker.sweep(engine, "w1")
    # The session is long expired by now, but the transfer was inside its window: verified.
    assert proof_row(engine, pid).status == "verified"


def test_finality_refresh_is_one_batched_call_per_sweep(engine, chain, monkeypatch):
    ids = [paid_proof(engine, chain, finality="confirmed")[1]["id"] for _ in range(7)]
    assert all(proof_row(engine, i).status == "verified" for i in ids)
    for i in ids:
        chain.statuses[proof_row(engine, i).ref] = "finalized"
    advance(engine, 60)
    calls = chain.calls
    # A batch that fails is recorded again proof by proof: the answers would still land, so
    # only this tells that the batch itself went through.
    one_by_one: list[object] = []
    monkeypatch.setattr(worker, "_record_finality", lambda *a: one_by_one.append(a))
    out = worker.sweep(engine, "w1")
    assert out == {"reverified": 0, "finality_refreshed": 7}
    assert chain.calls - calls == 1
    assert one_by_one == []
    for i in ids:
        assert gate.dry_run_apply(engine, i)["would_apply"] is True


def test_finality_refresh_rpc_error_keeps_proofs_for_later(engine, chain):
    pid = paid_proof(engine, chain, finality="confirmed")[1]["id"]
    advance(engine, 60)
    chain.fail_with = RpcUnavailable("down")
    assert worker.refresh_finality(engine, "w1", 10) == 1
    p = proof_row(engine, pid)
    assert p.claimed_by is None and utc(p.next_check_at) > engine.now()
    chain.fail_with = None
    chain.statuses[p.ref] = "finalized"
    due(engine, pid)
    worker.refresh_finality(engine, "w1", 10)
    assert gate.dry_run_apply(engine, pid)["would_apply"] is True


def test_a_finality_error_leaves_a_claim_another_worker_took_meanwhile(engine, chain):
    """The lease ran out while the node hung, and a second worker claimed the proof: the first
    worker's error does not free that claim (two workers would ask the chain at once)."""
    pid = paid_proof(engine, chain, finality="confirmed")[1]["id"]
    advance(engine, 60)
    plain_call = chain.call

    def hang_then_fail(method, params):
        if method == "fake_getStatuses":
            with engine.db.tx() as s:
                row = s.get(Proof, pid)
                row.claimed_by, row.claimed_until = "w2", engine.now() + timedelta(minutes=5)
            raise RpcUnavailable("down")
        return plain_call(method, params)

    chain.call = hang_then_fail
    assert worker.refresh_finality(engine, "w1", 10) == 1
    p = proof_row(engine, pid)
    assert p.claimed_by == "w2" and utc(p.claimed_until) > engine.now()


def _activate_evm_usdc(e: Engine) -> tuple[str, str]:
    """The real Ethereum USDC transfer through the gated staff path to an active entitlement."""
    e.settings.live_apply = True
    e.settings.apply_rail_allowlist = ["evm_usdc"]
    e.settings.receipt_creation_rails = ["evm_usdc"]
    a = rails_admin.request_change(e, "evm_usdc", "production", "true", OP)
    pass_release_gates_in(e, "evm_usdc")
    rails_admin.approve(e, a["approval_id"], OP.__class__("ops2", "INC-1", "second pair of eyes"))
    sess = open_session(
        e,
        NewSession(
            owner_id="alice",
            rail_id="evm_usdc",
            access_product_id="pro",
            amount=EVM_USDC_AMOUNT,
            recipient=EVM_USDC_TO,
            payer=EVM_USDC_FROM,
        ),
        actor="svc",
    )
    view, _ = proofs.submit_proof(e, sess["id"], EVM_USDC_TX, ["alice"])
    assert view["status"] == "verified" and view["settlement"]["is_final"], view
    out = gate.apply(e, view["id"], OP, gate.Via.staff_receipt)
    return view["id"], out["entitlement_id"]


def test_reorg_under_active_entitlement_is_flagged_not_revoked(db_url):
    e = cassette_engine(db_url, clock=EVM_CLOCK)
    try:
        calls = recorded_calls(FIXTURES / "evm" / "eth_usdc_transfer.json")
        chain = SwitchableTransport(calls)
        e.chains.set_transport("ethereum", chain)
        pid, ent_id = _activate_evm_usdc(e)
        assert assurance_report(e)["summary"]["status"] == "ok"

        # The worker keeps watching a depth-final settlement while the chain is stable...
        advance(e, 3600)
        worker.sweep(e, "w1")
        with e.db.tx() as s:
            assert s.get(Entitlement, ent_id).reorg_flagged is False

        # ...then the block at the receipt's height is replaced.
        for c in calls:
            if c["method"] == "eth_getBlockByNumber" and c["params"][0] == "0x14e6867":
                c["result"]["hash"] = "0x" + "cd" * 32
        chain.load(calls)
        advance(e, 3600)
        worker.sweep(e, "w1")

        with e.db.tx() as s:
            ent = s.get(Entitlement, ent_id)
            assert (ent.status, ent.reorg_flagged) == ("active", True)  # flagged, not revoked
            assert s.scalar(select(Receipt).where(Receipt.proof_id == pid)) is not None
        rep = assurance_report(e)
        assert rep["summary"]["status"] == "critical"
        assert any(
            i["category"] == "active_entitlement_unsettled"
            and ent_id in i["subject"]
            and "reorged" in i["repair"]
            for i in rep["issues"]
        )
        refresh_gauges(e)
        text = e.metrics.render().decode()
        assert 'railproof_reorgs_total{rail_id="evm_usdc"} 1.0' in text
        assert "railproof_reorged_active_entitlements 1.0" in text
        # The proof is back to pending (`reorged`, through an attempt of its own) and is
        # verified again by the next sweep; the gate blocks on both counts meanwhile.
        blockers = {b["code"] for b in gate.dry_run_apply(e, pid)["blockers"]}
        assert {"proof_verified", "settlement_final"} <= blockers
        assert proofs.get_proof(e, pid, None)["failure_code"] == "reorged"
        assert proofs.list_attempts(e, pid)[-1]["failure_code"] == "reorged"
    finally:
        e.db.dispose()


def test_a_failure_read_from_a_block_not_final_is_asked_again_and_fails_once_final(db_url):
    # An underpayment read from a block not final yet is `pending not_final`: the worker asks
    # again like any pending proof, and only the chain's final word fails it.
    e = cassette_engine(db_url, clock=EVM_CLOCK)
    try:
        final = recorded_calls(FIXTURES / "evm" / "eth_usdc_transfer.json")
        # The same answers while the node's head is the transfer's own block, above its
        # `finalized` block: one confirmation of 64.
        mined = next(c for c in final if c["method"] == "eth_getTransactionReceipt")
        number = int(mined["result"]["blockNumber"], 16)
        unfinal = copy.deepcopy(final)
        for c in unfinal:
            if c["method"] == "eth_blockNumber":
                c["result"] = hex(number)
            elif c["params"][:1] == ["finalized"]:
                c["result"] = {"number": hex(number - 40), "hash": "0x" + "ee" * 32}
        chain = SwitchableTransport(unfinal)
        e.chains.set_transport("ethereum", chain)
        sess = open_session(
            e,
            NewSession(
                owner_id="alice",
                rail_id="evm_usdc",
                access_product_id="pro",
                amount=EVM_USDC_AMOUNT + 1,
                recipient=EVM_USDC_TO,
                payer=EVM_USDC_FROM,
            ),
            actor="svc",
        )
        view, _ = proofs.submit_proof(e, sess["id"], EVM_USDC_TX, ["alice"])
        pid = view["id"]
        assert (view["status"], view["failure_code"]) == ("pending", "not_final"), view
        assert view["detail"].startswith("amount_mismatch: ")

        # Still not final: asked again, still pending.
        due(e, pid)
        assert worker.sweep(e, "w1")["reverified"] == 1
        p = proof_row(e, pid)
        assert (p.status, p.failure_code) == ("pending", "not_final")

        # The block is final now: the next re-check fails it for good.
        chain.load(final)
        due(e, pid)
        assert worker.sweep(e, "w1")["reverified"] == 1
        p = proof_row(e, pid)
        assert (p.status, p.failure_code) == ("failed", "amount_mismatch")
        again, created = proofs.submit_proof(e, sess["id"], EVM_USDC_TX, ["alice"])
        assert not created and (again["status"], again["failure_code"]) == (
            "failed",
            "amount_mismatch",
        )
    finally:
        e.db.dispose()


def test_auto_apply_applies_live_proofs_only(engine, chain):
    engine.settings.auto_apply = True
    # Every flag a gated or review-only rail could want is on: the automatic path still
    # never creates their receipts.
    engine.settings.live_apply = True
    engine.settings.apply_rail_allowlist = ["fake_live", "fake_gated", "fake_review"]
    engine.settings.receipt_creation_rails = ["fake_gated", "fake_review"]
    with engine.db.tx() as s:
        for r in ("fake_gated", "fake_review"):
            s.get(RailState, r).production_enabled = True
    live = paid_proof(engine, chain, rail_id="fake_live")[1]["id"]
    later = paid_proof(engine, chain, rail_id="fake_live", finality="confirmed")[1]["id"]
    gated = paid_proof(engine, chain, rail_id="fake_gated")[1]["id"]
    review = paid_proof(engine, chain, rail_id="fake_review")[1]["id"]

    out = worker.sweep(engine, "w1")
    assert out["applied"] == 1

    def receipt(pid):
        with engine.db.tx() as s:
            return s.scalar(select(Receipt.id).where(Receipt.proof_id == pid))

    assert receipt(live) is not None
    assert receipt(later) is None and receipt(gated) is None and receipt(review) is None

    chain.statuses[proof_row(engine, later).ref] = "finalized"
    advance(engine, 60)
    worker.sweep(engine, "w1")
    assert receipt(later) is not None
    assert receipt(gated) is None and receipt(review) is None
    with engine.db.tx() as s:
        assert len(s.scalars(select(Receipt)).all()) == 2


def test_auto_apply_off_applies_nothing(engine, chain):
    pid = paid_proof(engine, chain)[1]["id"]
    assert "applied" not in worker.sweep(engine, "w1")
    assert gate.dry_run_apply(engine, pid)["would_apply"] is True


def test_the_apply_sweep_leaves_a_test_network_backlog_after_the_switch_to_mainnet(db_url, chain):
    """Staging verified test-network payments on a live rail outside the apply allowlist; at
    launch the network override goes and the rail joins the allowlist. The sweep credits
    none of that backlog (rail_network_current), and does not try it: being older, it would
    fill every batch ahead of the rail's real payments."""
    from tests.test_gate import pay_on, two_network_engine

    staging = two_network_engine(
        db_url,
        chain,
        env={"RAILPROOF_NETWORK_FAKE_MULTI_LIVE": "fakenet-test"},
        apply_rail_allowlist=["solana_usdc"],
    )
    backlog = [
        pay_on(staging, chain, "fake_multi_live", f"old-{i}", asset="fusd-test") for i in range(3)
    ]
    assert worker.auto_apply(staging, 100) == 0  # not allowlisted in staging
    staging.db.dispose()

    prod = two_network_engine(db_url, chain, apply_rail_allowlist=["fake_multi_live"])
    try:
        good = pay_on(prod, chain, "fake_multi_live", "new")
        assert worker.auto_apply(prod, 2) == 1
        with prod.db.tx() as s:
            assert s.scalars(select(Receipt.proof_id)).all() == [good]
        blocks = prod.metrics.registry.get_sample_value(
            "railproof_apply_gate_blocks_total",
            {"rail_id": "fake_multi_live", "blocker": "rail_network_current"},
        )
        assert not blocks  # never tried
        for pid in backlog:
            rep = gate.dry_run_apply(prod, pid)
            assert [b["code"] for b in rep["blockers"]] == ["rail_network_current"], rep
    finally:
        prod.db.dispose()


def test_proofs_of_a_retired_network_do_not_stop_the_apply_sweep(db_url, chain):
    """A release retires a test network from the catalog while verified, final proofs of it
    wait on a live rail. They are older than the rail's real payments: taken into the
    sweep's batches they would fail each batch and fill it again on every sweep. They are
    left out, and a payment behind them is credited."""
    from tests.test_gate import TEST_NETWORK_RETIRED, pay_on, two_network_engine

    staging = two_network_engine(
        db_url,
        chain,
        env={"RAILPROOF_NETWORK_FAKE_MULTI_LIVE": "fakenet-test"},
        apply_rail_allowlist=["solana_usdc"],
    )
    old = [pay_on(staging, chain, "fake_multi_live", f"old-{i}", "fusd-test") for i in range(2)]
    staging.db.dispose()

    prod = two_network_engine(
        db_url, chain, fragment=TEST_NETWORK_RETIRED, apply_rail_allowlist=["fake_multi_live"]
    )
    try:
        good = pay_on(prod, chain, "fake_multi_live", "new")
        assert worker.auto_apply(prod, 2) == 1
        with prod.db.tx() as s:
            assert s.scalars(select(Receipt.proof_id)).all() == [good]
        assert gate.dry_run_apply(prod, old[0])["would_apply"] is False
    finally:
        prod.db.dispose()


def test_an_unfinished_proof_of_a_retired_network_does_not_fail_the_sweep(db_url, chain, caplog):
    """A proof verified on a test network, not final yet, when a release retires that network
    from the catalog: its finality cannot be asked any more. The sweep gives it back for a
    long while, with one warning, and goes on: another proof's apply is not skipped."""
    from tests.test_gate import TEST_NETWORK_RETIRED, pay_on, two_network_engine

    staging = two_network_engine(
        db_url, chain, env={"RAILPROOF_NETWORK_FAKE_MULTI_LIVE": "fakenet-test"}
    )
    old = pay_on(staging, chain, "fake_multi_live", "pro", "fusd-test", finality="confirmed")
    staging.db.dispose()
    prod = two_network_engine(
        db_url,
        chain,
        fragment=TEST_NETWORK_RETIRED,
        apply_rail_allowlist=["fake_multi_live"],
        auto_apply=True,
    )
    try:
        with prod.db.tx() as s:
            s.get(Proof, old).next_check_at = prod.now() - timedelta(seconds=1)  # due
        good = pay_on(prod, chain, "fake_multi_live", "pro-2")
        with caplog.at_level(logging.WARNING, logger="railproof.worker"):
            out = worker.sweep(prod, "w1", deliveries=False)
        assert out["applied"] == 1, out
        with prod.db.tx() as s:
            assert s.scalars(select(Receipt.proof_id)).all() == [good]
        row = proof_row(prod, old)
        assert row.status == "verified" and row.claimed_by is None
        assert utc(row.next_check_at) - prod.now() > timedelta(minutes=8)
        unasked = [r for r in caplog.records if "left unasked" in r.getMessage()]
        assert len(unasked) == 1 and "fakenet-test" in unasked[0].getMessage()
    finally:
        prod.db.dispose()


def test_a_pending_proof_of_a_retired_network_is_given_back_not_retried_each_lease(
    db_url, chain, caplog
):
    """A proof waiting on a test network (its transaction not found yet) when a release
    retires that network from the catalog: nothing can verify it now. The pending re-check
    gives it back for a long while, with one warning, as the finality refresh does: not left
    claimed, taken again at every lease with an internal error each time."""
    from tests.test_gate import TEST_NETWORK_RETIRED, two_network_engine

    staging = two_network_engine(
        db_url, chain, env={"RAILPROOF_NETWORK_FAKE_MULTI_LIVE": "fakenet-test"}
    )
    sess = open_session(
        staging,
        NewSession(
            owner_id="alice",
            rail_id="fake_multi_live",
            access_product_id="pro",
            amount=1_500_000,
            recipient="fatreasury",
        ),
        actor="svc",
    )
    view, _ = proofs.submit_proof(staging, sess["id"], "fxdeadbeef00", ["alice"])
    assert view["status"] == "pending", view
    staging.db.dispose()

    prod = two_network_engine(db_url, chain, fragment=TEST_NETWORK_RETIRED)
    try:
        with prod.db.tx() as s:
            s.get(Proof, view["id"]).next_check_at = prod.now() - timedelta(seconds=1)  # due
        with caplog.at_level(logging.WARNING, logger="railproof.worker"):
            out = worker.sweep(prod, "w1", deliveries=False)
        assert out["reverified"] == 0, out
        row = proof_row(prod, view["id"])
        assert (row.status, row.attempts, row.claimed_by) == ("pending", 1, None)
        assert utc(row.next_check_at) - prod.now() > timedelta(minutes=8)
        assert not [r for r in caplog.records if r.exc_info], caplog.text
        unasked = [r for r in caplog.records if "left unasked" in r.getMessage()]
        assert len(unasked) == 1 and "fakenet-test" in unasked[0].getMessage()
    finally:
        prod.db.dispose()


def test_three_workers_share_the_work_and_never_process_a_proof_twice(db_url, chain):
    main = Engine(make_settings(db_url), catalog=catalog_with_fake())
    main.chains.set_transport("fakenet", chain)
    main.ensure_rail_states()
    n = 30
    made = [paid_proof(main, chain, found=False) for _ in range(n)]
    pending = [view["id"] for _, view in made]
    assert not chain.txs  # nothing was found at submit: every proof waits for the worker
    # The transfers land on chain before the workers look again.
    for sess, view in made:
        chain.txs[view["reference"]] = {
            "status": "ok",
            "to": "fatreasury",
            "amount": 1_500_000,
            "asset": "fusd",
            "refs": [sess["reference"]],
        }
    latest = max(utc(proof_row(main, pid).next_check_at) for pid in pending)
    clock = latest + timedelta(seconds=1)

    workers = []
    for _ in range(3):
        e = Engine(make_settings(db_url, clock=clock), catalog=catalog_with_fake())
        e.chains.set_transport("fakenet", _Slow(chain))
        workers.append(e)
    start = threading.Barrier(3)
    errors: list[BaseException] = []

    def run(e: Engine, name: str) -> None:
        try:
            start.wait()
            while worker.sweep(e, name, batch=4)["reverified"]:
                pass
        except BaseException as ex:  # surfaced below; a thread's exception is otherwise lost
            errors.append(ex)

    threads = [threading.Thread(target=run, args=(e, f"worker-{i}")) for i, e in enumerate(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for e in workers:
        e.db.dispose()
    assert not errors, errors

    by_worker: dict[str, int] = {}
    for pid in pending:
        named = [a.worker for a in attempts(main, pid) if a.worker is not None]
        assert len(named) == 1, (pid, named)
        by_worker[named[0]] = by_worker.get(named[0], 0) + 1
        assert proof_row(main, pid).status == "verified"
    assert sum(by_worker.values()) == n
    assert len(by_worker) >= 2, by_worker  # the work was shared
    main.db.dispose()


class _Slow:
    """The shared scripted chain with a little latency, so workers overlap for real."""

    source = "cassette"

    def __init__(self, inner: ScriptedChain):
        self.inner = inner
        self._lock = threading.Lock()

    def call(self, method, params):
        time.sleep(0.005)
        with self._lock:
            return self.inner.call(method, params)


def _migrated_to(url: str, revision: str) -> None:
    """What another version's `db upgrade` (a replica of the next deploy) leaves."""
    raw = create_engine(url)
    with raw.begin() as c:
        c.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": revision})
    raw.dispose()


def _receipt(engine, pid):
    with engine.db.tx() as s:
        return s.scalar(select(Receipt.id).where(Receipt.proof_id == pid))


def test_a_worker_writes_nothing_once_the_database_is_migrated_past_its_code(
    engine, chain, db_url, caplog
):
    """A deploy migrates while the previous version's workers still run: `serve` and `worker`
    refuse such a database at start, and a running worker checks at every sweep. On a schema
    this code does not know (whose rules it does not keep) it claims, verifies and credits
    nothing, says why, and stops."""
    engine.settings.auto_apply = True
    paid = paid_proof(engine, chain)[1]["id"]  # verified and final: the apply would credit it
    waiting = paid_proof(engine, chain, found=False)[1]["id"]
    due(engine, waiting)
    _migrated_to(db_url, "0099")

    with pytest.raises(worker.SchemaMoved, match="revision 0099, this worker's code at"):
        worker.sweep(engine, "old-worker")
    assert _receipt(engine, paid) is None
    assert proof_row(engine, waiting).claimed_by is None and len(attempts(engine, waiting)) == 1

    # The loop stops (its webhook thread with it) instead of sweeping on, and logs why.
    stop = threading.Event()
    raised: list[BaseException] = []

    def run() -> None:
        try:
            worker.run_worker(engine, interval=0.05, name="old-worker", stop=stop)
        except BaseException as e:  # surfaced below; a thread's exception is otherwise lost
            raised.append(e)

    with caplog.at_level(logging.ERROR, logger="railproof.worker"):
        t = threading.Thread(target=run, daemon=True)
        t.start()
        t.join(timeout=10)
    assert not t.is_alive() and stop.is_set()
    assert [type(e) for e in raised] == [worker.SchemaMoved]
    assert any("worker stopped" in r.getMessage() for r in caplog.records)
    assert _receipt(engine, paid) is None

    # At this code's head again, the same sweep credits it: the schema was all that stopped it.
    _migrated_to(db_url, head_revision(db_url))
    assert worker.sweep(engine, "w1")["applied"] == 1
    assert _receipt(engine, paid) is not None


def test_the_worker_process_exits_2_once_the_database_is_migrated_past_its_code(tmp_path):
    """`railproof worker` exits 2, as it does at start on such a database, so the process
    supervisor starts it again (as the version that matches, once deployed)."""
    url = f"sqlite:///{tmp_path}/railproof.db"
    env = base_env(
        database_url=url,
        chain="cassette",
        service_tokens=json.dumps({"svc-token-alice": ["alice"]}),
    )
    migrate(env)
    proc = Worker(env, tmp_path, "old-worker", interval=0.05)
    try:
        wait_until("a sweep", lambda: "sweep" in proc.output() or not proc.alive(), 30)
        assert proc.alive(), proc.output()
        _migrated_to(url, "0099")
        code = proc.wait(30)
        out = proc.log.read_text(errors="replace")
        assert code == 2, out
        assert "revision 0099, this worker's code at" in out
    finally:
        proc.stop()


POD_HOSTNAME = "payments-railproof-worker-production-eu-west-1a-7d9f8c6b5-x2k9p"  # 63 chars


def test_the_default_name_fits_the_claim_column_and_keeps_the_pid(monkeypatch):
    """`<hostname>:<pid>` passes 64 characters on a long hostname (a pod's is up to 63)."""
    import os
    import socket

    monkeypatch.setattr(socket, "gethostname", lambda: POD_HOSTNAME)
    name = worker.default_name()
    assert len(name) == WORKER_NAME_MAX and name.endswith(f":{os.getpid()}")
    assert POD_HOSTNAME.startswith(name.rpartition(":")[0])
    monkeypatch.setattr(socket, "gethostname", lambda: "host-1")
    assert worker.default_name() == f"host-1:{os.getpid()}"


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_the_default_worker_name_on_a_long_hostname_still_claims_proofs(engine, chain, monkeypatch):
    """On PostgreSQL a name past the column failed every claim: nothing was re-checked,
    finalized or credited, and the loop logged 'sweep failed' forever."""
    import socket

    pid = paid_proof(engine, chain, found=False)[1]["id"]
    due(engine, pid)
    monkeypatch.setattr(socket, "gethostname", lambda: POD_HOSTNAME)
    worker.run_worker(engine, once=True)  # the name `railproof worker` uses without --name
    tries = attempts(engine, pid)
    assert len(tries) == 2, "the due proof was not re-checked"
    assert len(tries[-1].worker) == WORKER_NAME_MAX
    assert proof_row(engine, pid).claimed_by is None


def test_run_worker_refuses_a_name_the_claim_column_cannot_hold(engine):
    with pytest.raises(ValueError, match="longer than 64"):
        worker.run_worker(engine, once=True, name="w" * (WORKER_NAME_MAX + 1))
