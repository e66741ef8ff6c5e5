"""The apply gate's `transfer_not_sent_back` on the money it must block and the money it must
not: another payer's transfer sent back in the same EVM transaction is not this proof's; a
proof staff refunded through a finding about the proof itself is."""

from __future__ import annotations

from tests.test_evm_batched_transfers import PRICE, batch
from tests.test_reconciliation import evm, evm_session, req  # noqa: F401  (local EVM chain)
from tests.test_reconciliation_resolve import OP
from verifier.services import gate, proofs, reconciliation


def test_another_payers_refunded_log_does_not_block_the_payers_own_transfer(evm):  # noqa: F811
    # README: two payers' payments in one transaction (a bundle): the first verified proof
    # holds the transaction (counting only its payer's transfer), and reconciliation reports
    # the second payer's transfer for staff. Staff refund the second payer (their log,
    # `;log_index=N`): the first payer's own payment, never sent back, must still be
    # creditable. The gate blocked it for good, since a resolution of *any* log of the
    # transaction counts (and the apply sweep leaves it out).
    e, payer, other = evm["engine"], evm["payer"], evm["other"]
    first = evm_session(e, payer, PRICE)
    evm_session(e, other, PRICE)
    tx = batch(evm, (payer, PRICE), (other, PRICE))
    view, _ = proofs.submit_proof(e, first["id"], tx, ["alice"])
    assert view["status"] == "verified", view["detail"]
    run = reconciliation.run(e, req(rail_id="evm_usdc"), "ops1")
    [f] = [x for x in run["findings"] if x["subjects"].get("transfer") == tx.lower()]
    assert f["subjects"]["sender"] == other
    reconciliation.resolve_finding(e, f["id"], "refunded", OP)  # the other payer got it back

    report = gate.dry_run_apply(e, view["id"])
    [check] = [c for c in report["checks"] if c["name"] == "transfer_not_sent_back"]
    assert check["passed"], check["detail"]


def test_a_verified_proof_staff_refunded_is_never_credited_afterwards(db_url):
    # README: "Money resolved `refunded` or `not_ours` is never credited afterwards on any
    # path". A verified proof left without a receipt (the rail paused, not allowlisted...) is
    # reported `verified_without_receipt`, which takes `refunded`: staff send the payer's money
    # back. The gate's `transfer_not_sent_back` reads only inflow findings' resolutions, so
    # the refunded proof is credited by the next apply (staff's, or the worker's sweep once
    # the rail is ready again): the payer keeps the refund and the access.
    import pytest

    from tests.test_discovery import make_engine
    from tests.test_reconciliation import EXPECT, by_kind, session_for
    from tests.test_reconciliation import req as rreq
    from verifier.core.errors import Refused
    from verifier.worker import loop as worker

    e = make_engine(db_url, auto_apply=False)
    try:
        s = session_for(e, "bound")
        view, _ = proofs.submit_proof(e, s["id"], EXPECT["bound"]["signature"], ["alice"])
        assert view["status"] == "verified", view["detail"]
        worker.sweep(e, "w1")  # finality (no automatic apply)
        e.settings.clock = e.settings.now().replace(hour=2)  # past the SLA
        run = reconciliation.run(e, rreq("rail_proofs"), "ops1")
        [f] = by_kind(run)["verified_without_receipt"]
        assert f["subjects"]["proof_id"] == view["id"]
        reconciliation.resolve_finding(e, f["id"], "refunded", OP)

        report = gate.dry_run_apply(e, view["id"])
        [check] = [c for c in report["checks"] if c["name"] == "transfer_not_sent_back"]
        assert not check["passed"], report
        with pytest.raises(Refused):
            gate.apply(e, view["id"], OP, gate.Via.staff)
    finally:
        e.db.dispose()
