"""RAILPROOF_CLOCK given with a UTC offset (ISO-8601 allows it). The setting kept the offset;
SQLite stores a time's wall-clock digits without it and reads them back as UTC, so every time
written under that clock was off by the offset, and the audit chain, whose hashes cover each
event's time in UTC, verified as tampered on SQLite. The clock is taken in UTC now."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from tests.conftest import make_settings
from tests.fake_rail import ScriptedChain, catalog_with_fake
from verifier.core.engine import Engine
from verifier.services import audit, rails_admin


def test_an_untampered_chain_verifies_with_an_offset_clock(db_url):
    clock = datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=5)))  # RAILPROOF_CLOCK as parsed
    e = Engine(make_settings(db_url, clock=clock), catalog=catalog_with_fake())
    e.chains.set_transport("fakenet", ScriptedChain())
    try:
        e.ensure_rail_states()
        rails_admin.set_paused(e, "fake_live", True, audit.Operator("ops1", "INC-1", "drill"))
        with e.db.tx() as s:
            report = audit.verify_chain(s)
        assert report.ok, report.message
    finally:
        e.db.dispose()


def test_the_clock_is_the_same_instant_in_utc():
    clock = datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=5)))
    settings = make_settings("sqlite://", clock=clock)
    assert settings.clock == clock and settings.clock.utcoffset() == timedelta(0)
