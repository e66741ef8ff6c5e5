"""With RAILPROOF_RPC_QUORUM=2, one lagging (or lying) node takes back a settlement that
a quorum made final, under an active entitlement.

README: "with RAILPROOF_RPC_QUORUM=2 one lying node can neither verify nor fail a proof, nor make
a settlement final"; verifier/core/checking.py: "Anything else leaves the stored settlement as it
is". But `decide_settlement` answers "the least final" of the nodes for the same block, and the
worker records it: a final settlement with a receipt becomes `confirmed, is_final=False` on the
word of one node. Assurance then raises a critical `active_entitlement_unsettled` for a paid,
final transfer, and when the node catches up the worker emits `settlement.finalized` a second
time (a new event id, so receivers deduplicating on webhook-id see two finalizations).
"""

from __future__ import annotations

from sqlalchemy import select

from tests.conftest import make_settings
from tests.fake_rail import ScriptedChain, catalog_with_fake, fake_rail_toml
from tests.helpers import advance
from tests.test_gate import paid_proof
from verifier.core.engine import Engine
from verifier.services.assurance import assurance_report
from verifier.storage.models import Proof, Receipt, SettlementEvidence
from verifier.storage.webhook_models import OutboxEvent
from verifier.worker import loop as worker

DEPTH = fake_rail_toml(
    "fake_depth", finality='{ mode = "depth", confirmations = 10, finalized_tag = true }'
)


def test_one_lagging_node_of_a_quorum_does_not_unfinalize_a_credited_settlement(db_url):
    e = Engine(
        make_settings(db_url, apply_rail_allowlist=["fake_depth"], rpc_quorum=2, auto_apply=True),
        catalog=catalog_with_fake(DEPTH),
    )
    try:
        e.ensure_rail_states()
        a, b = ScriptedChain(), ScriptedChain()
        b.txs = a.txs  # the same chain, two independent nodes
        e.chains.set_transport("fakenet", a)
        e.chains.set_independent_transports("fakenet", [a, b])
        assert e.chains.quorum("fakenet") == 2

        _, view = paid_proof(e, a, rail_id="fake_depth", finality="finalized")
        pid = view["id"]
        assert view["status"] == "verified" and view["settlement"]["is_final"], view
        worker.sweep(e, "w1")  # auto apply
        with e.db.tx() as s:
            assert s.scalar(select(Receipt.id).where(Receipt.proof_id == pid)) is not None
            ref = s.get(Proof, pid).ref

        # Reorg watch, ten minutes later: node A still says final, node B lags behind.
        a.statuses[ref], b.statuses[ref] = "finalized", "confirmed"
        advance(e, 11 * 60)
        worker.sweep(e, "w1")
        with e.db.tx() as s:
            latest = s.scalars(
                select(SettlementEvidence)
                .where(SettlementEvidence.proof_id == pid)
                .order_by(SettlementEvidence.id.desc())
            ).first()
            latest_final = latest.is_final
        issues = assurance_report(e)["issues"]
        unsettled = [i for i in issues if i["category"] == "active_entitlement_unsettled"]

        # Node B catches up.
        b.statuses[ref] = "finalized"
        advance(e, 11 * 60)
        worker.sweep(e, "w1")
        with e.db.tx() as s:
            finalized = s.scalars(
                select(OutboxEvent.id).where(
                    OutboxEvent.resource_id == pid, OutboxEvent.type == "settlement.finalized"
                )
            ).all()

        assert latest_final is True, "one node of a quorum of 2 took a final settlement back"
        assert unsettled == [], unsettled
        assert len(finalized) == 1, f"settlement.finalized emitted {len(finalized)} times"
    finally:
        e.db.dispose()
