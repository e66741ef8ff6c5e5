"""Leases and stuck work run on process time, not on the business clock.

The engine's clock is pinned here, as when recorded chains are replayed: a lease or a claim's
age measured on it would never move. The test stands in for process time passing by replacing
`timeutil.process_now`; the pinned clock stays where it is throughout.
"""

from __future__ import annotations

import threading
from datetime import timedelta

from sqlalchemy import select

from tests.conftest import CLOCK, STAFF_TOKEN, auth
from verifier.core import timeutil
from verifier.core.timeutil import utc
from verifier.services import idempotency, proofs
from verifier.services.assurance import assurance_report
from verifier.services.sessions import NewSession, open_session
from verifier.storage.models import IdempotencyClaim, Proof, ProofStatus
from verifier.worker import loop as worker


def later(monkeypatch, seconds: float) -> None:
    """Process time moves `seconds` on; the business clock does not."""
    at = timeutil.process_now() + timedelta(seconds=seconds)
    monkeypatch.setattr(timeutil, "process_now", lambda: at)


def issues(engine, category: str) -> list[dict]:
    return [i for i in assurance_report(engine)["issues"] if i["category"] == category]


def test_a_dead_workers_claim_lapses_in_process_time(engine, chain, monkeypatch):
    sess = open_session(
        engine,
        NewSession(
            owner_id="alice",
            rail_id="fake_live",
            access_product_id="pro",
            amount=1_500_000,
            recipient="fatreasury",
        ),
        actor="svc",
    )
    chain.txs["fx0000cafe"] = {
        "status": "ok",
        "to": "fatreasury",
        "amount": 1_500_000,
        "asset": "fusd",
        "refs": [sess["reference"]],
        "finality": "finalized",
    }
    # Stored but not verified yet (as when the API died right after storing it): due now.
    view, _ = proofs.submit_proof(engine, sess["id"], "fx0000cafe", ["alice"], verify=False)
    pid = view["id"]

    # w1 claims the proof and dies before verifying it.
    t0 = timeutil.process_now()
    assert worker.claim(engine, ProofStatus.pending, "w1", 10) == [pid]
    with engine.db.tx() as s:
        p = s.get(Proof, pid)
        lease = timedelta(seconds=engine.settings.claim_lease_seconds)
        assert p.claimed_by == "w1"
        assert abs(utc(p.claimed_until) - (t0 + lease)) < timedelta(seconds=30)
    # Within the lease, nobody else takes it, and it is no finding.
    assert worker.reverify_pending(engine, "w2", 10) == 0
    assert issues(engine, "claim_lease_lapsed") == []

    # The lease lapses in process time; the pinned clock has not moved.
    later(monkeypatch, engine.settings.claim_lease_seconds + 1)
    assert engine.now() == CLOCK
    (issue,) = issues(engine, "claim_lease_lapsed")
    assert issue["severity"] == "warning" and issue["subject"] == f"proof {pid}"
    assert "w1" in issue["repair"]

    # Another worker takes it over and finishes it.
    assert worker.reverify_pending(engine, "w2", 10) == 1
    with engine.db.tx() as s:
        p = s.get(Proof, pid)
        assert (p.status, p.claimed_by, p.claimed_until, p.attempts) == ("verified", None, None, 1)
    assert issues(engine, "claim_lease_lapsed") == []


def test_a_stuck_idempotency_claim_is_listed_in_process_time(engine, client, monkeypatch):
    # A request whose work never ends (its process hangs or died): its claim stays in progress.
    started, release = threading.Event(), threading.Event()

    def work():
        with engine.db.tx():
            pass  # the work's first transaction, which the claim rides with, commits
        started.set()
        assert release.wait(30)
        return 200, {"ok": True}

    t = threading.Thread(
        target=idempotency.run_idempotent,
        args=(engine, "svc:alice", "POST /v1/proofs", "k-hung", {"a": 1}, work),
    )
    t.start()
    try:
        assert started.wait(30)
        with engine.db.tx() as s:
            claim = s.scalar(select(IdempotencyClaim).where(IdempotencyClaim.key == "k-hung"))
            assert claim.status == "in_progress"
            # Its age is process time, not the pinned clock.
            assert abs(utc(claim.created_at) - timeutil.process_now()) < timedelta(seconds=30)
        assert idempotency.stuck_claims(engine) == []  # fresh: not stuck yet
        assert issues(engine, "idempotency_claim_stuck") == []

        later(monkeypatch, engine.settings.stuck_claim_seconds + 1)
        assert engine.now() == CLOCK
        assert [c["key"] for c in idempotency.stuck_claims(engine)] == ["k-hung"]
        r = client.get("/v1/admin/assurance", headers=auth(STAFF_TOKEN))
        assert r.status_code == 200, r.text
        (issue,) = [i for i in r.json()["issues"] if i["category"] == "idempotency_claim_stuck"]
        assert issue["severity"] == "warning" and "k-hung" in issue["subject"]
        assert "POST /v1/proofs" in issue["subject"] and issue["repair"]
    finally:
        release.set()
        t.join(30)
    # Completed: no longer stuck, however old.
    assert idempotency.stuck_claims(engine) == []
    assert issues(engine, "idempotency_claim_stuck") == []
