"""Pending proofs are re-checked owner by owner. Any tenant can keep proofs pending (a
transaction the chain does not know stays pending until its session is over), and the worker
took the due ones in due order: one tenant's backlog was ahead of every other tenant's
payment, each sweep spent on it alone."""

from __future__ import annotations

from datetime import timedelta
from itertools import count

import pytest

from tests.helpers import advance
from verifier.core import timeutil
from verifier.services import proofs
from verifier.services.sessions import NewSession, open_session
from verifier.storage.models import ProofStatus
from verifier.storage.repo import proofs as proof_repo
from verifier.worker import loop as worker

_n = count()


def _pending(engine, owner: str, n: int) -> list[str]:
    """`n` proofs of transfers the chain does not know, in one session of `owner`."""
    ps = open_session(
        engine,
        NewSession(
            owner_id=owner,
            rail_id="fake_live",
            access_product_id="pro",
            amount=1_000_000,
            recipient="fatreasury",
        ),
        actor="svc",
    )
    out = []
    for _ in range(n):
        view, created = proofs.submit_proof(engine, ps["id"], f"fx{next(_n):08x}", [owner])
        assert created and (view["status"], view["failure_code"]) == ("pending", "tx_not_found")
        out.append(view["id"])
    return out


def test_one_tenants_pending_backlog_does_not_take_every_sweep(engine):
    junk = _pending(engine, "mallory", 60)
    advance(engine, 30)  # alice's proof falls due after every one of mallory's
    (alice,) = _pending(engine, "alice", 1)
    advance(engine, 60)

    first = worker.claim(engine, ProofStatus.pending, "w1", 20)
    assert len(first) == 20
    assert alice in first, "a tenant's payment waited behind another tenant's backlog"
    assert set(first) - {alice} <= set(junk)
    # The rest on the next claim; nothing is claimed twice.
    second = worker.claim(engine, ProofStatus.pending, "w2", 100)
    assert set(first).isdisjoint(second)
    assert set(first) | set(second) == {*junk, alice}


def test_one_tenant_alone_is_re_checked_in_full_batches(engine):
    junk = _pending(engine, "mallory", 30)
    advance(engine, 60)
    first = worker.claim(engine, ProofStatus.pending, "w1", 25)
    assert len(first) == 25 and set(first) <= set(junk)
    assert sorted(worker.claim(engine, ProofStatus.pending, "w1", 25)) == sorted(
        set(junk) - set(first)
    )


def test_a_claim_skips_what_another_worker_is_claiming_and_still_fills_its_batch(engine, db_url):
    if not db_url.startswith("postgresql"):
        pytest.skip("row locks skipped by a concurrent claim are PostgreSQL's")
    junk = _pending(engine, "mallory", 12)
    advance(engine, 60)
    now, held = engine.now(), timeutil.process_now()
    lease = held + timedelta(seconds=engine.settings.claim_lease_seconds)
    with engine.db.tx() as s:
        # Worker 1's claim, not committed yet: its rows are locked.
        first = proof_repo.claim_due(s, ProofStatus.pending, now, held, 4, "w1", lease)
        assert len(first) == 4
        # Worker 2 claims meanwhile: it skips those rows and still takes a whole batch.
        second = worker.claim(engine, ProofStatus.pending, "w2", 4)
        assert len(second) == 4 and set(second).isdisjoint(first), (first, second)
    assert set(first) | set(second) <= set(junk)
