"""A transfer staff resolved `refunded` (the money went back to the payer) or `not_ours` in
reconciliation is never credited afterwards: not by apply, not by discovery, and not through
the session's own tenant submitting it. The proof may verify (the chain did carry the
transfer); the apply gate's `transfer_not_sent_back` blocks its receipt on every path, and
the worker's apply sweep leaves it out rather than count it blocked in every sweep."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from tests.test_discovery import make_engine
from tests.test_reconciliation import EXPECT, by_kind, proofs_of, req, session_for
from tests.test_reconciliation_resolve import OP
from verifier.core.errors import Refused
from verifier.services import gate, proofs, reconciliation
from verifier.storage.models import Entitlement, Receipt
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
