"""`railproof db upgrade` run by several processes at once (the replicas of one deploy, each
migrating at start) on one empty database: every one ends with the database at head, exit 0.
On PostgreSQL they take turns (an advisory lock); before, all but one failed on the types and
tables the first had created."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from verifier.storage.db import current_revision, head_revision, make_engine


@pytest.mark.parametrize(
    "empty_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_three_upgrades_at_once_all_reach_head(empty_url):
    env = {**os.environ, "RAILPROOF_DATABASE_URL": empty_url}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "verifier.cli.main", "db", "upgrade"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(3)
    ]
    outs = [(p.wait(timeout=120), p.stdout.read() if p.stdout else "") for p in procs]
    assert [code for code, _ in outs] == [0, 0, 0], outs
    head = head_revision(empty_url)
    assert all(f"database at {head}" in out for _, out in outs), outs
    engine = make_engine(empty_url)
    try:
        assert current_revision(engine) == head
    finally:
        engine.dispose()
