"""A transfer under a receipt is reorged, re-included and re-verified final at once; then
its new block is reorged out too: the reorg watch must see it.

README: "Reorg watch: depth-final EVM/Tron settlements under a receipt are re-checked every 10
minutes for 6 hours". The watch is armed only by the apply (`gate._activate`) and by the
finality refresh (`loop._reorg_watch`). A proof sent back by a reorg is verified again by
`verify_proof`, whose `_next_check` gives a verified, final proof no next check at all
(verifier/services/proofs.py `_next_check`): the credited proof leaves the watch an hour into
it. Assurance meanwhile counts its flagged entitlement as backed again ("re-included and final"),
so a second reorg leaves an active entitlement on a transfer that is gone, with no flag, no
reorg count and no finding.
"""

from __future__ import annotations

from sqlalchemy import select

from tests.conftest import make_settings
from tests.fake_rail import ScriptedChain, catalog_with_fake, fake_rail_toml
from tests.helpers import advance
from tests.test_gate import paid_proof
from verifier.core.engine import Engine
from verifier.storage.models import Proof, Receipt, SettlementEvidence
from verifier.worker import loop as worker

DEPTH = fake_rail_toml(
    "fake_depth", finality='{ mode = "depth", confirmations = 10, finalized_tag = true }'
)


def _latest(e: Engine, pid: str) -> SettlementEvidence:
    with e.db.tx() as s:
        return s.scalars(
            select(SettlementEvidence)
            .where(SettlementEvidence.proof_id == pid)
            .order_by(SettlementEvidence.id.desc())
        ).first()


def test_a_reverified_credited_proof_stays_under_the_reorg_watch(db_url):
    e = Engine(
        make_settings(db_url, apply_rail_allowlist=["fake_depth"], auto_apply=True),
        catalog=catalog_with_fake(DEPTH),
    )
    try:
        e.ensure_rail_states()
        chain = ScriptedChain()
        e.chains.set_transport("fakenet", chain)
        _, view = paid_proof(e, chain, rail_id="fake_depth", finality="finalized")
        pid = view["id"]
        worker.sweep(e, "w1")  # auto apply: the receipt arms the reorg watch
        with e.db.tx() as s:
            assert s.scalar(select(Receipt.id).where(Receipt.proof_id == pid)) is not None
            ref = s.get(Proof, pid).ref

        # First reorg, caught by the watch: back to pending, flagged.
        chain.statuses[ref] = "reorged"
        advance(e, 11 * 60)
        worker.sweep(e, "w1")
        assert _latest(e, pid).reorged
        # The transaction is re-included and final: verified again (next sweep).
        chain.statuses[ref] = "finalized"
        advance(e, 5)
        worker.sweep(e, "w1")
        with e.db.tx() as s:
            p = s.get(Proof, pid)
            status, next_check = p.status, p.next_check_at
        assert status == "verified" and _latest(e, pid).is_final

        # Well inside the 6-hour watch, the new block is reorged out as well.
        chain.statuses[ref] = "reorged"
        for _ in range(3):
            advance(e, 11 * 60)
            worker.sweep(e, "w1")
        assert next_check is not None, "credited proof left the reorg watch after re-verification"
        assert _latest(e, pid).reorged, "second reorg under an active entitlement went unseen"
    finally:
        e.db.dispose()
