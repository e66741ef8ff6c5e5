"""Checking the audit chain is a read, yet on SQLite it ran in a transaction holding the
write lock (BEGIN IMMEDIATE) for the whole walk. The walk is O(events) (~28 us an event: a
million events, three per submission, is ~30 s, SQLite's busy timeout), so the audit verify
endpoint, `railproof audit verify` and every assurance report stopped every writer (sessions,
proofs, applies, the worker) until it ended, and past the busy timeout those writers failed.
The walk reads a snapshot beside the writer now (WAL)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

from tests.conftest import make_settings
from tests.fake_rail import ScriptedChain, catalog_with_fake
from verifier.core.engine import Engine
from verifier.services import audit, queries
from verifier.services.sessions import NewSession, open_session
from verifier.storage.db import upgrade
from verifier.storage.repo import audit as audit_repo


def test_audit_verify_on_sqlite_does_not_stop_writers(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path}/railproof.db"
    upgrade(url)
    api = Engine(make_settings(url), catalog=catalog_with_fake())
    api.chains.set_transport("fakenet", ScriptedChain())
    api.ensure_rail_states()
    other = Engine(make_settings(url), catalog=catalog_with_fake())  # another process
    other.chains.set_transport("fakenet", ScriptedChain())
    try:
        with api.db.tx() as s:
            for i in range(50):
                audit.append(
                    s, datetime(2026, 1, 1, tzinfo=UTC), audit.Operator("x"), "t", "t", f"t{i}"
                )
        walking, written = threading.Event(), threading.Event()
        real = audit_repo.events_after

        def slow_walk(s, last_id, limit):
            # A long chain: the walk is still going while the writer comes.
            rows = real(s, last_id, limit)
            if last_id is None:  # the first read: from the lowest id
                walking.set()
                written.wait(6)
            return rows

        monkeypatch.setattr(audit_repo, "events_after", slow_walk)
        report: dict = {}
        verifier = threading.Thread(target=lambda: report.update(queries.audit_chain(api)))
        verifier.start()
        assert walking.wait(10)
        took: list[float] = []

        def write() -> None:
            t0 = time.monotonic()
            open_session(
                other,
                NewSession(
                    owner_id="alice",
                    rail_id="fake_live",
                    access_product_id="pro",
                    amount=1_500_000,
                    recipient="fatreasury",
                ),
                actor="svc",
            )
            took.append(time.monotonic() - t0)
            written.set()

        writer = threading.Thread(target=write)
        writer.start()
        done_during_walk = written.wait(3)
        verifier.join(30)
        writer.join(60)
        assert report["ok"] is True
        assert took, "the session was never opened"
        assert done_during_walk, (
            f"a session waited {took[0]:.1f}s for an audit chain check (a read) to end"
        )
    finally:
        api.db.dispose()
        other.db.dispose()
