"""A SQLite file's WAL is checkpointed from a thread of its own (storage.db `Checkpointer`), not
inside the commit of whichever request crosses SQLite's threshold."""

from __future__ import annotations

import gc
import threading
import time
from pathlib import Path

from sqlalchemy import text

from verifier.storage.db import SQLITE_AUTOCHECKPOINT_PAGES, Database, upgrade


def _until(check, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


def test_each_database_kind_gets_its_checkpointer_or_none(db_url):
    db = Database(db_url)
    try:
        assert (db.checkpointer is None) is db.postgres
    finally:
        db.dispose()
    memory = Database("sqlite://")
    try:
        assert memory.checkpointer is None
    finally:
        memory.dispose()


def test_the_wal_is_copied_back_by_the_checkpointer_not_by_commits(tmp_path):
    path = tmp_path / "ckpt.db"
    url = f"sqlite:///{path}"
    upgrade(url)  # its last connection closed: the file holds everything, the WAL is empty
    db = Database(url)
    try:
        with db.tx() as s:
            # Commits leave the copying to the checkpointer, up to the backstop.
            assert s.execute(text("PRAGMA wal_autocheckpoint")).scalar() == (
                SQLITE_AUTOCHECKPOINT_PAGES
            )
            s.execute(text("CREATE TABLE scratch (id INTEGER PRIMARY KEY, note TEXT)"))
        size = path.stat().st_size
        for i in range(200):  # a few hundred WAL pages, far below the backstop
            with db.tx() as s:
                s.execute(
                    text("INSERT INTO scratch (note) VALUES (:n)"), {"n": "x" * 2000 + str(i)}
                )
        assert db.checkpointer is not None
        # The new pages reach the database file once a round has copied them there.
        assert _until(lambda: path.stat().st_size > size + 100 * 1024), path.stat().st_size
        with db.tx() as s:
            assert s.execute(text("SELECT count(*) FROM scratch")).scalar() == 200
    finally:
        db.dispose()


def _migrated(tmp_path: Path, name: str) -> tuple[Database, threading.Thread]:
    """A Database on a migrated file, and its checkpointer's thread."""
    url = f"sqlite:///{tmp_path}/{name}.db"
    upgrade(url)
    db = Database(url)
    assert db.checkpointer is not None
    return db, db.checkpointer._thread


def test_dispose_stops_the_checkpointer(tmp_path):
    db, thread = _migrated(tmp_path, "stop")
    assert _until(lambda: db.checkpointer is not None and db.checkpointer.rounds > 0)
    db.dispose()
    assert not thread.is_alive()
    assert thread not in threading.enumerate()


def test_a_database_dropped_without_dispose_stops_its_checkpointer(tmp_path):
    db, thread = _migrated(tmp_path, "dropped")
    db.engine.dispose()
    del db
    gc.collect()
    thread.join(5)
    assert not thread.is_alive()


def test_a_missing_file_is_not_created(tmp_path):
    absent: Path = tmp_path / "absent.db"
    db = Database(f"sqlite:///{absent}")
    try:
        time.sleep(3 * 0.1 + 0.1)  # a few rounds
        assert not absent.exists()
        assert db.checkpointer is not None and db.checkpointer.rounds == 0
    finally:
        db.dispose()
