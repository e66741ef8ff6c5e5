"""A worker whose lease on a verified proof ran out during a slow finality call still
records its (stale) answer, over the answer of the worker that took the proof over.

`verify_proof` drops a run whose lease another worker took (`locked.claimed_by != worker`), but
`refresh_finality` -> `_record_finality_batch` records whatever the chain told it, whoever holds
the proof now and whatever its status has become. Here the second worker saw the transfer
reorged out (proof back to `pending reorged`, `settlement.reorged` sent); the first one then
writes "finalized" on top of it: the latest settlement is final again, a `settlement.finalized`
webhook follows the `settlement.reorged` one, and the pending proof gets next_check_at = NULL, so
the worker never verifies it again.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from tests.helpers import advance
from tests.test_gate import paid_proof
from verifier.core import timeutil
from verifier.storage.models import Proof, SettlementEvidence
from verifier.storage.webhook_models import OutboxEvent
from verifier.worker import loop as worker


def test_stale_finality_answer_is_not_recorded_over_a_reorg(engine, chain, monkeypatch):
    _, view = paid_proof(engine, chain, finality="confirmed")
    pid = view["id"]
    with engine.db.tx() as s:
        ref = s.get(Proof, pid).ref
    advance(engine, 60)
    chain.statuses[ref] = "finalized"  # what w1 is told

    real = engine.chains.finality
    state = {"w1": True}

    def slow_w1(adapter, refs, expected=None):
        answer = real(adapter, refs, expected)
        if state.pop("w1", False):
            # w1's call outlived its lease (process time moves on; the business clock does not)
            at = timeutil.process_now() + timedelta(seconds=engine.settings.claim_lease_seconds + 1)
            monkeypatch.setattr(timeutil, "process_now", lambda: at)
            # ... meanwhile the block left the canonical chain, and w2 takes the proof over.
            chain.statuses[ref] = "reorged"
            chain.txs[ref] = None
            assert worker.refresh_finality(engine, "w2", 10) == 1
            with engine.db.tx() as s:
                p = s.get(Proof, pid)
                assert (p.status, p.failure_code) == ("pending", "reorged")
        return answer

    monkeypatch.setattr(engine.chains, "finality", slow_w1)
    assert worker.refresh_finality(engine, "w1", 10) == 1

    with engine.db.tx() as s:
        p = s.get(Proof, pid)
        latest = s.scalars(
            select(SettlementEvidence)
            .where(SettlementEvidence.proof_id == pid)
            .order_by(SettlementEvidence.id.desc())
        ).first()
        types = [
            e.type
            for e in s.scalars(
                select(OutboxEvent)
                .where(OutboxEvent.resource_id == pid)
                .order_by(OutboxEvent.sequence)
            )
        ]
        status, next_check = p.status, p.next_check_at
        latest_final, latest_reorged = latest.is_final, latest.reorged

    assert status == "pending"
    # The reorg stands: w1's answer came from before it, under a lease it no longer held.
    assert (latest_final, latest_reorged) == (False, True), "stale 'finalized' recorded over reorg"
    assert types[-1] == "settlement.reorged", types
    # And the pending proof is still due for re-verification.
    assert next_check is not None
