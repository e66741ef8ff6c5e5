"""The apply gate at apply time: the token the chain moved is the session's (`tuple_bound`),
and a rail the catalog demoted from live is not production-enabled by the default its state
row was made with."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from tests.conftest import make_settings
from tests.fake_rail import catalog_with_fake, fake_rail_toml
from tests.test_gate import OP, paid_proof
from verifier.core.engine import Engine
from verifier.core.errors import Refused
from verifier.services import gate
from verifier.storage.models import PaymentSession, Receipt
from verifier.worker import loop


def _receipts(engine) -> list[Receipt]:
    with engine.db.tx() as s:
        return list(s.scalars(select(Receipt)).all())


@pytest.mark.parametrize("path", ["staff_apply", "worker_sweep"])
def test_apply_rechecks_the_sessions_asset_against_the_observed_transfer(engine, chain, path):
    """Verified for a session asking for `fusd`, the session's asset then reads `fother`
    (a row changed between verification and apply). The transfer the chain showed was fusd:
    it does not pay a session asking for another asset, so tuple_bound must block."""
    sess, view = paid_proof(engine, chain)
    assert view["status"] == "verified"
    with engine.db.tx() as s:
        s.get(PaymentSession, sess["id"]).asset = "fother"
    if path == "staff_apply":
        with pytest.raises(Refused):
            gate.apply(engine, view["id"], OP)
    else:
        loop.auto_apply(engine, 100)  # the worker's apply sweep
    assert _receipts(engine) == []
    rep = gate.dry_run_apply(engine, view["id"])
    assert "tuple_bound" in [b["code"] for b in rep["blockers"]], rep


def _engine(db_url, chain, stage: str, **settings) -> Engine:
    production = "true" if stage == "live" else "false"
    frag = fake_rail_toml("fake_moved", stage=stage, production_enabled=production == "true")
    e = Engine(make_settings(db_url, **settings), catalog=catalog_with_fake(frag))
    e.chains.set_transport("fakenet", chain)
    e.ensure_rail_states()
    return e


def test_a_rail_demoted_from_live_to_gated_is_not_production_enabled_by_its_old_default(
    db_url, chain
):
    """A rail ships `live` (its state row is created production-enabled by the catalog), and
    a later release demotes it to `gated`. After the restart it is a gated rail that no two
    staff members ever enabled and that has no release-gate evidence: its receipts must stay
    blocked (rail_production_enabled) until the two-person approval, which requires the
    gates."""
    first = _engine(db_url, chain, "live")
    first.db.dispose()
    e = _engine(
        db_url,
        chain,
        "gated",
        live_apply=True,
        apply_rail_allowlist=["fake_moved"],
        receipt_creation_rails=["fake_moved"],
    )
    try:
        assert e.catalog.rails["fake_moved"].stage.value == "gated"
        _, view = paid_proof(e, chain, rail_id="fake_moved")
        assert view["status"] == "verified"
        rep = gate.dry_run_apply(e, view["id"], via=gate.Via.staff_receipt)
        assert "rail_production_enabled" in [b["code"] for b in rep["blockers"]], rep
        with pytest.raises(Refused):
            gate.apply(e, view["id"], OP, gate.Via.staff_receipt)
        assert _receipts(e) == []
    finally:
        e.db.dispose()
