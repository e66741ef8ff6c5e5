"""An x402 payment verified before its settlement was on chain, then settled, then sent back by
staff in reconciliation, is never credited. Verification saw no transaction (the nonce was
still unused); the worker's finality sweep found the settlement afterwards and kept its hash
only in the evidence's text, so `transfer_not_sent_back` had no transaction to match the
resolution of that transaction's inflow against, and the proof applied. The evidence now names
the settling transaction, and the gate reads it when the verified attempt names none."""

from __future__ import annotations

from sqlalchemy import select

from tests.helpers import advance
from tests.test_x402_adapter import TX, live_chain, settlement_logs
from tests.test_x402_engine import SIGNER, _verified_unsettled, x402_engine  # noqa: F401
from verifier.services import gate, proofs
from verifier.storage.models import SettlementEvidence
from verifier.storage.reconciliation_models import (
    ReconciliationFinding,
    ReconciliationResolution,
    ReconciliationRun,
)
from verifier.worker import loop as worker


def _sent_back(engine, tx: str, resolution: str = "refunded") -> None:
    """What staff resolving the settlement's inflow leave: a run, its finding, the resolution."""
    now = engine.now()
    key = f"rail_id=x402;transfer={tx};log_index=1"
    with engine.db.tx() as s:
        run = ReconciliationRun(
            scope="chain_inflows",
            rail_id="x402",
            dry_run=False,
            incident_id="INC-7",
            operator_reason="payer asked for the money back",
            staff="ops1",
            started_at=now,
            finished_at=now,
            status="complete",
        )
        s.add(run)
        s.flush()
        finding = ReconciliationFinding(
            run_id=run.id,
            kind="orphan_unbound",
            severity="warning",
            subjects={"transfer": tx, "rail_id": "x402"},
            subject_key=key,
        )
        s.add(finding)
        s.flush()
        s.add(
            ReconciliationResolution(
                kind="orphan_unbound",
                subject_key=key,
                resolution=resolution,
                finding_id=finding.id,
                staff="ops1",
                incident_id="INC-7",
                operator_reason="refunded to the payer",
                resolved_at=now,
            )
        )


def test_an_x402_payment_settled_after_verification_and_sent_back_is_never_credited(
    x402_engine,  # noqa: F811
):
    pid = _verified_unsettled(x402_engine)
    chain = live_chain(used=True, logs=settlement_logs(), head=200, finalized=150)
    x402_engine.chains.set_transport("base-sepolia", chain)
    advance(x402_engine, 20)
    assert worker.refresh_finality(x402_engine, "w1", 10) == 1
    view = proofs.get_proof(x402_engine, pid, ["alice"])
    assert view["settlement"]["is_final"], view["settlement"]
    assert view["settlement"]["tx_hash"] == TX.lower()  # shown where the proof names none
    assert len(proofs.list_attempts(x402_engine, pid)) == 1  # verification saw no transaction
    with x402_engine.db.tx() as s:
        ev = s.scalars(
            select(SettlementEvidence)
            .where(SettlementEvidence.proof_id == pid)
            .order_by(SettlementEvidence.id.desc())
        ).first()
        assert ev is not None and ev.tx_hash == TX.lower()

    before = gate.dry_run_apply(x402_engine, pid)
    assert "transfer_not_sent_back" not in {b["code"] for b in before["blockers"]}, before

    _sent_back(x402_engine, TX)
    report = gate.dry_run_apply(x402_engine, pid)
    [b] = [b for b in report["blockers"] if b["code"] == "transfer_not_sent_back"]
    assert "refunded" in b["detail"] and "INC-7" in b["detail"]
    assert not report["would_apply"]
    # The worker's apply sweep leaves it out as well.
    assert gate.sent_back_of(x402_engine, [pid]) == {pid}
