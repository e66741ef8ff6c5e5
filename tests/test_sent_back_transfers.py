"""A transfer staff resolved `refunded` (the money went back to the payer) or `not_ours` in
reconciliation is never credited afterwards: not by apply, not by discovery, and not through
the session's own tenant submitting it. The proof may verify (the chain did carry the
transfer); the apply gate's `transfer_not_sent_back` blocks its receipt on every path, and
the worker's apply sweep leaves it out rather than count it blocked in every sweep. The other
way round, a transfer a receipt credits is not resolved as sent back, even while its apply is
under way, and a refund and a receipt for the same transfer never both stand, whichever of
the two commits first."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from tests.conftest import make_pg_db
from tests.test_discovery import make_engine
from tests.test_reconciliation import EXPECT, by_kind, proofs_of, req, session_for
from tests.test_reconciliation_resolve import OP
from verifier.core.errors import Conflict, EngineError, Refused
from verifier.services import gate, proofs, reconciliation
from verifier.storage.models import Entitlement, EntitlementStatus, Receipt
from verifier.storage.reconciliation_models import ReconciliationResolution
from verifier.storage.repo import proofs as proof_repo
from verifier.storage.repo import settlements as settlement_repo
from verifier.worker import loop as worker


def _bound_and_resolved(e, resolution: str) -> tuple[str, dict]:
    """The recorded transfer, its session open, found `orphan_bound` and resolved."""
    sig = EXPECT["bound"]["signature"]
    bound = session_for(e, "bound")
    dry = reconciliation.run(e, req(), "ops1")
    [f] = [x for x in by_kind(dry)["orphan_bound"] if x["subjects"]["transfer"] == sig]
    reconciliation.resolve_finding(e, f["id"], resolution, OP)
    return sig, bound


def _blocks(e) -> float:
    text = e.metrics.render().decode()
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("railproof_apply_gate_blocks_total{")
        and 'blocker="transfer_not_sent_back"' in line
    )


@pytest.mark.parametrize("resolution", ["refunded", "not_ours"])
def test_a_transfer_sent_back_is_never_credited_when_its_tenant_submits_it(db_url, resolution):
    e = make_engine(db_url)
    try:
        sig, bound = _bound_and_resolved(e, resolution)

        view, _ = proofs.submit_proof(e, bound["id"], sig, ["alice"])
        worker.sweep(e, "w1")  # finality and the automatic apply
        with e.db.tx() as s:
            receipts = s.scalars(select(Receipt.id).where(Receipt.session_id == bound["id"])).all()
            ents = s.scalars(
                select(Entitlement.status).where(Entitlement.session_id == bound["id"])
            ).all()
            waiting = proof_repo.final_unapplied(s, ["solana_usdc"], 100)
        assert receipts == [] and "active" not in ents, ents
        # The sweep leaves it out (it would be blocked every time), and never counted it.
        assert view["id"] in waiting and gate.sent_back_of(e, waiting) == {view["id"]}
        assert _blocks(e) == 0

        # Staff apply is refused by the gate, naming the resolution.
        report = gate.dry_run_apply(e, view["id"])
        [b] = [b for b in report["blockers"] if b["code"] == "transfer_not_sent_back"]
        assert resolution in b["detail"] and OP.incident_id in b["detail"]
        with pytest.raises(Refused) as refused:
            gate.apply(e, view["id"], OP, gate.Via.staff)
        assert refused.value.code == "apply_blocked"
        assert _blocks(e) == 1
        assert [p.status for p in proofs_of(e, bound["id"]) if p.ref == sig] == ["verified"]
    finally:
        e.db.dispose()


def test_an_accepted_finding_does_not_block_the_credit(db_url):
    # `accepted` leaves the transfer as it is: its session's proof applies as usual.
    e = make_engine(db_url)
    try:
        sig, bound = _bound_and_resolved(e, "accepted")
        view, _ = proofs.submit_proof(e, bound["id"], sig, ["alice"])
        worker.sweep(e, "w1")
        report = gate.dry_run_apply(e, view["id"])
        assert [c for c in report["checks"] if c["name"] == "transfer_not_sent_back"][0]["passed"]
        with e.db.tx() as s:
            assert s.scalar(select(Receipt.id).where(Receipt.session_id == bound["id"]))
    finally:
        e.db.dispose()


def test_any_log_of_an_evm_transaction_sent_back_blocks_it_and_no_other(db_url):
    # Reconciliation keys an EVM inflow by its log (`…;log_index=N`); the proof pins the
    # transaction, so a resolution of any of its logs counts (when the log's sender is the
    # proof's payer, or the finding names none), and only of that transaction.
    from verifier.storage.reconciliation_models import ReconciliationResolution

    e = make_engine(db_url)
    try:
        session_for(e, "bound")
        dry = reconciliation.run(e, req(), "ops1")
        finding = by_kind(dry)["orphan_bound"][0]["id"]
        tx = "0x" + "ab" * 32
        with e.db.tx() as s:
            for kind, key, resolution in [
                ("orphan_unbound", f"rail_id=evm_usdc;transfer={tx};log_index=7", "refunded"),
                ("orphan_bound", f"rail_id=evm_usdc;transfer={tx[:-2]};log_index=1", "not_ours"),
                ("orphan_bound", f"rail_id=base_usdc;transfer={tx};log_index=7", "accepted"),
            ]:
                s.add(
                    ReconciliationResolution(
                        kind=kind,
                        subject_key=key,
                        resolution=resolution,
                        finding_id=finding,
                        staff="ops1",
                        incident_id="INC-1",
                        operator_reason="test",
                        resolved_at=e.now(),
                    )
                )

        def claim(pid: str, rail: str, ref: str) -> reconciliation.Claimed:
            return reconciliation.Claimed(pid, rail, ref, None, None, (rail,))

        with e.db.tx() as s:
            got = reconciliation.sent_back(
                s,
                [
                    claim("p1", "evm_usdc", tx),
                    claim("p2", "evm_usdc", tx[:-4]),
                    claim("p3", "base_usdc", tx),
                ],
            )
        assert {k: r.resolution for k, r in got.items()} == {"p1": "refunded"}
        # An x402 payload's ref is no transaction: the settlement the chain showed for it is
        # matched on every rail of its network (there it is base_usdc's or evm_usdc's inflow).
        x402 = reconciliation.Claimed(
            "p4", "x402", "84532:0xasset:0xfrom:0xnonce", tx, None, ("x402", "evm_usdc")
        )
        with e.db.tx() as s:
            assert set(reconciliation.sent_back(s, [x402])) == {"p4"}
    finally:
        e.db.dispose()


def _credited_after_the_run(e) -> tuple[dict, dict, dict]:
    """The transfer found `orphan_bound`, then submitted by its session's tenant: it verifies
    and is final (the finding is now stale). Returns the finding, session and proof."""
    sig = EXPECT["bound"]["signature"]
    bound = session_for(e, "bound")
    run = reconciliation.run(e, req(), "ops1")
    [f] = [x for x in by_kind(run)["orphan_bound"] if x["subjects"]["transfer"] == sig]
    view, _ = proofs.submit_proof(e, bound["id"], sig, ["alice"])
    assert view["status"] == "verified", view
    worker.sweep(e, "w1")  # finality (and the automatic apply, where it is on)
    return f, bound, view


def _resolutions(e) -> list[tuple[int, str]]:
    with e.db.tx() as s:
        q = select(ReconciliationResolution.finding_id, ReconciliationResolution.resolution)
        return [tuple(r) for r in s.execute(q).all()]


@pytest.mark.parametrize("resolution", ["refunded", "not_ours", "attached_by_hand"])
def test_a_transfer_a_receipt_credits_is_not_resolved_as_uncredited(db_url, resolution):
    # Staff resolving a stale finding would send back (or attach again) money railproof has
    # credited: the payer would be paid twice. Refused, naming the receipt, until the credit
    # is revoked.
    e = make_engine(db_url)
    try:
        f, bound, view = _credited_after_the_run(e)
        with e.db.tx() as s:
            receipt, ent = s.execute(
                select(Receipt.id, Entitlement.id)
                .join(Entitlement, Entitlement.receipt_id == Receipt.id)
                .where(Receipt.session_id == bound["id"])
            ).one()
        with pytest.raises(Conflict) as refused:
            reconciliation.resolve_finding(e, f["id"], resolution, OP)
        assert refused.value.code == "transfer_credited"
        assert refused.value.extra == {"receipt_id": receipt, "proof_id": view["id"]}
        assert receipt in refused.value.message
        assert _resolutions(e) == []

        gate.revoke(e, ent, OP)
        out = reconciliation.resolve_finding(e, f["id"], resolution, OP)
        assert out["repair_status"] == "resolved"
    finally:
        e.db.dispose()


@pytest.fixture
def pg_url(pg_template) -> Iterator[str]:
    url, drop = make_pg_db(pg_template)
    yield url
    drop()


@pytest.mark.postgres
def test_a_refund_resolved_while_the_proof_is_applied_is_not_credited_too(pg_url, monkeypatch):
    # The gate reads the resolutions inside the apply's transaction; a refund committed
    # between that read and the apply's commit must not be recorded beside the receipt.
    e = make_engine(pg_url, auto_apply=False)
    go = threading.Event()
    try:
        f, bound, view = _credited_after_the_run(e)
        assert not gate.dry_run_apply(e, view["id"])["blockers"]

        # The apply stops right after its gate has read the resolutions (none yet).
        real = reconciliation.sent_back
        reached = threading.Event()

        def sent_back(s, claims):
            out = real(s, claims)
            if threading.current_thread().name == "apply":
                reached.set()
                assert go.wait(60), "never released"
            return out

        monkeypatch.setattr(reconciliation, "sent_back", sent_back)
        outcome: dict[str, Any] = {}

        def apply() -> None:
            outcome["apply"] = gate.apply(e, view["id"], OP, gate.Via.staff)

        def resolve() -> None:
            try:
                outcome["resolve"] = reconciliation.resolve_finding(e, f["id"], "refunded", OP)
            except EngineError as err:
                outcome["resolve"] = err.code

        a = threading.Thread(target=apply, name="apply")
        a.start()
        assert reached.wait(60)
        r = threading.Thread(target=resolve, name="resolve")
        r.start()
        r.join(1)  # the resolution waits for the proof's row the apply holds
        assert r.is_alive() and "resolve" not in outcome
        go.set()
        a.join(60)
        r.join(60)
        assert not a.is_alive() and not r.is_alive()

        assert outcome["apply"]["applied"] is True
        assert outcome["resolve"] == "transfer_credited"
        assert _resolutions(e) == []
    finally:
        go.set()
        e.db.dispose()


def _credits(e, session_id: str) -> list[str]:
    """The receipts of the session whose entitlement is not revoked."""
    with e.db.tx() as s:
        return list(
            s.scalars(
                select(Receipt.id)
                .join(Entitlement, Entitlement.receipt_id == Receipt.id)
                .where(
                    Receipt.session_id == session_id,
                    Entitlement.status != EntitlementStatus.revoked,
                )
            ).all()
        )


def _resolve_held_after_its_lookup(e, monkeypatch, finding_id: int, go: threading.Event):
    """A thread resolving the finding `refunded`, held right after it has looked up which
    proofs could hold the transfer (none yet: an orphan's), before it locks anything, until
    `go` is set. Returns the thread, the event set once it is held, and where its answer
    goes."""
    reached = threading.Event()
    real = settlement_repo.proofs_settled_in

    def proofs_settled_in(s, tx_hashes):
        out = real(s, tx_hashes)
        if threading.current_thread().name == "resolve" and not reached.is_set():
            reached.set()
            assert go.wait(60), "never released"
        return out

    monkeypatch.setattr(settlement_repo, "proofs_settled_in", proofs_settled_in)
    outcome: dict[str, Any] = {}

    def resolve() -> None:
        try:
            outcome["resolve"] = reconciliation.resolve_finding(e, finding_id, "refunded", OP)
        except EngineError as err:
            outcome["resolve"] = err.code

    return threading.Thread(target=resolve, name="resolve"), reached, outcome


def _orphan_submitted_while_its_refund_waits(e, monkeypatch, go: threading.Event):
    """The `bound` transfer's orphan finding, its refund started and held after its lookup
    (`_resolve_held_after_its_lookup`), and the transfer then submitted for its session and
    verified. Returns the finding, the session, the proof's view, the refund's thread and
    where its answer goes."""
    sig = EXPECT["bound"]["signature"]
    bound = session_for(e, "bound")
    run = reconciliation.run(e, req(), "ops1")
    [f] = [x for x in by_kind(run)["orphan_bound"] if x["subjects"]["transfer"] == sig]
    r, reached, outcome = _resolve_held_after_its_lookup(e, monkeypatch, f["id"], go)
    r.start()
    assert reached.wait(60)
    view, _ = proofs.submit_proof(e, bound["id"], sig, ["alice"])
    assert view["status"] == "verified", view
    return f, bound, view, r, outcome


@pytest.mark.postgres
def test_a_refund_of_an_orphan_is_refused_when_its_proof_is_credited_meanwhile(pg_url, monkeypatch):
    # No proof holds an orphan's transfer when its refund looks for one; the tenant submits
    # it and the worker credits it before the refund commits. The refund sees the receipt
    # once it holds the audit chain's lock, and is refused.
    e = make_engine(pg_url)
    go = threading.Event()
    try:
        _, bound, _, r, outcome = _orphan_submitted_while_its_refund_waits(e, monkeypatch, go)
        worker.sweep(e, "w1")  # finality and the automatic apply
        [receipt] = _credits(e, bound["id"])
        go.set()
        r.join(60)
        assert not r.is_alive()

        assert outcome["resolve"] == "transfer_credited"
        assert _resolutions(e) == []
        assert _credits(e, bound["id"]) == [receipt]
    finally:
        go.set()
        e.db.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("path", ["staff", "sweep"])
def test_a_credit_under_way_when_an_orphans_refund_commits_is_refused(pg_url, monkeypatch, path):
    # The other order: the credit has passed its gate (no resolution yet) when the refund,
    # which found no proof to wait for, commits. The credit reads the resolutions again once
    # it holds the audit chain's lock and is refused as the gate refuses money sent back:
    # `apply` answers `transfer_not_sent_back`; the worker's batch rolls back and its
    # proof-by-proof apply is blocked by the gate.
    e = make_engine(pg_url, auto_apply=path == "sweep")
    held, let_go = threading.Event(), threading.Event()
    go = threading.Event()
    try:
        f, bound, view, r, outcome = _orphan_submitted_while_its_refund_waits(e, monkeypatch, go)
        if path == "staff":
            worker.sweep(e, "w1")  # finality only: the automatic apply is off
            assert not gate.dry_run_apply(e, view["id"])["blockers"]

        # The credit stops once its gate has passed, before its first audit append.
        real = gate._audit_credit

        def audit_credit(*args, **kw):
            if threading.current_thread().name == "apply" and not held.is_set():
                held.set()
                assert let_go.wait(60), "never released"
            return real(*args, **kw)

        monkeypatch.setattr(gate, "_audit_credit", audit_credit)

        def credit() -> None:
            try:
                if path == "staff":
                    outcome["apply"] = gate.apply(e, view["id"], OP, gate.Via.staff)
                else:
                    outcome["apply"] = worker.sweep(e, "w1")
            except EngineError as err:
                outcome["apply"] = err

        a = threading.Thread(target=credit, name="apply")
        a.start()
        assert held.wait(60)
        go.set()
        r.join(60)
        assert not r.is_alive()
        assert outcome["resolve"]["repair_status"] == "resolved"
        let_go.set()
        a.join(60)
        assert not a.is_alive()

        assert _credits(e, bound["id"]) == []
        assert _resolutions(e) == [(f["id"], "refunded")]
        if path == "staff":
            refused = outcome["apply"]
            assert isinstance(refused, Refused) and refused.code == "apply_blocked"
            blockers = [b["code"] for b in refused.extra["report"]["blockers"]]
            assert blockers == ["transfer_not_sent_back"]
        assert _blocks(e) >= 1
        with e.db.tx() as s:
            p = proof_repo.get(s, view["id"])
            assert p is not None and p.applied_at is None
    finally:
        go.set()
        let_go.set()
        e.db.dispose()
