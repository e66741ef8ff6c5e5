"""A transfer staff resolved `refunded` (the money went back to the payer) or `not_ours` in
reconciliation is never credited afterwards: not by apply, not by discovery, and not through
the session's own tenant submitting it. The proof may verify (the chain did carry the
transfer); the apply gate's `transfer_not_sent_back` blocks its receipt on every path, and
the worker's apply sweep leaves it out rather than count it blocked in every sweep. The other
way round, a transfer a receipt credits is not resolved as sent back, even while its apply is
under way."""

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
from verifier.storage.models import Entitlement, Receipt
from verifier.storage.reconciliation_models import ReconciliationResolution
from verifier.storage.repo import proofs as proof_repo
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
