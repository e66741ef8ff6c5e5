"""The reorg alert (RailproofReorgedActiveEntitlement, gauge railproof_reorged_active_entitlements)
against assurance: the gauge counts flagged active entitlements whose payment does not stand,
and assurance names each of them (the runbook's first step). A transfer reorged out and then
re-included, final again, backs its entitlement again: the alert ends, and nothing is named."""

from __future__ import annotations

from tests.conftest import make_settings
from tests.fake_rail import ScriptedChain, catalog_with_fake, fake_rail_toml
from tests.helpers import advance
from verifier.core.engine import Engine
from verifier.services import audit, gate, proofs, sessions
from verifier.services.assurance import assurance_report, refresh_gauges
from verifier.storage.models import Entitlement
from verifier.worker import loop as worker

OP = audit.Operator("ops1", "INC-1", "reorg alert test")
DEPTH_RAIL = fake_rail_toml("fake_depth", finality='{ mode = "depth", confirmations = 10 }')


def _alert(e: Engine) -> float:
    refresh_gauges(e)
    for line in e.metrics.render().decode().splitlines():
        if line.startswith("railproof_reorged_active_entitlements "):
            return float(line.split()[1])
    raise AssertionError("gauge not exposed")


def _named(e: Engine, ent_id: str) -> list[str]:
    return [i["category"] for i in assurance_report(e)["issues"] if ent_id in i["subject"]]


def _engine(db_url) -> tuple[Engine, ScriptedChain]:
    e = Engine(
        make_settings(db_url, apply_rail_allowlist=["fake_depth"]),
        catalog=catalog_with_fake(DEPTH_RAIL),
    )
    chain = ScriptedChain()
    e.chains.set_transport("fakenet", chain)
    e.ensure_rail_states()
    return e, chain


def _credited(e: Engine, chain: ScriptedChain, tx: str) -> tuple[dict, str]:
    """Alice's payment on the depth-finality rail, final and applied: (its proof's view, the
    active entitlement's id)."""
    sess = sessions.open_session(
        e,
        sessions.NewSession(
            owner_id="alice",
            rail_id="fake_depth",
            access_product_id="pro",
            amount=1000,
            recipient="fatreasury",
        ),
        actor="test",
    )
    chain.txs[tx] = {
        "status": "ok",
        "to": "fatreasury",
        "amount": 1000,
        "asset": "fusd",
        "time": int(e.now().timestamp()) + 5,
        "finality": "finalized",
        "refs": [sess["reference"]],
        "slot": 1,
    }
    chain.statuses[tx] = "finalized"
    advance(e, 10)
    view, _ = proofs.submit_proof(e, sess["id"], tx, ["alice"])
    return view, gate.apply(e, view["id"], OP, gate.Via.staff)["entitlement_id"]


def test_a_reorged_then_reincluded_payment_ends_the_alert(db_url):
    e, chain = _engine(db_url)
    try:
        tx = "fx00000000000000a1"
        view, ent_id = _credited(e, chain, tx)
        assert _alert(e) == 0

        chain.statuses[tx] = "reorged"  # the block is replaced: alert, and named
        advance(e, 3600)
        worker.sweep(e, "w1")
        with e.db.tx() as s:
            assert s.get(Entitlement, ent_id).reorg_flagged is True
        assert _alert(e) == 1
        assert _named(e, ent_id) == ["active_entitlement_unsettled"]

        chain.statuses[tx] = "finalized"  # re-included, final again
        advance(e, 60)
        worker.sweep(e, "w1")
        advance(e, 60)
        worker.sweep(e, "w1")
        got = proofs.get_proof(e, view["id"], None)
        assert (got["status"], got["settlement"]["is_final"]) == ("verified", True), got
        assert _named(e, ent_id) == []
        assert _alert(e) == 0
        with e.db.tx() as s:  # the flag stays, as the entitlement's history
            ent = s.get(Entitlement, ent_id)
            assert (ent.status, ent.reorg_flagged) == ("active", True)
    finally:
        e.db.dispose()


def test_a_reorg_under_an_active_entitlement_is_an_entitlement_event(db_url):
    """A backend granting access by events (or by `updated_at`) hears of the flag itself, not
    only of the proof's `settlement.reorged`; once."""
    from sqlalchemy import select

    from verifier.services import queries
    from verifier.storage.webhook_models import OutboxEvent

    e, chain = _engine(db_url)
    try:
        tx = "fx000000000000a8a8"
        _, ent_id = _credited(e, chain, tx)
        (before,) = queries.entitlements_of(e, "alice", 10)
        chain.statuses[tx] = "reorged"
        for _ in range(2):  # flagged once: a later sweep adds nothing
            advance(e, 3600)
            worker.sweep(e, "w1")
        (after,) = queries.entitlements_of(e, "alice", 10)
        assert (after["status"], after["reorg_flagged"]) == ("active", True)
        assert after["updated_at"] != before["updated_at"]
        with e.db.tx() as s:
            got = s.execute(
                select(OutboxEvent.type, OutboxEvent.payload)
                .where(OutboxEvent.resource_type == "entitlement")
                .order_by(OutboxEvent.sequence)
            ).all()
        assert [t for t, _ in got] == ["entitlement.activated", "entitlement.reorg_flagged"]
        assert got[1][1]["reorg_flagged"] is True
    finally:
        e.db.dispose()
