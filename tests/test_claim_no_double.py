"""Two workers claiming pending proofs at once on PostgreSQL never take the same one.

The owner-by-owner claim picks its candidates in a subquery and locks the proofs through a
join with it, FOR UPDATE OF proofs SKIP LOCKED. Under READ COMMITTED, a row whose claim
another worker committed after this statement's snapshot is not skipped as locked: it is
locked, and PostgreSQL re-checks its new version against the locking query's own conditions
only (EvalPlanQual), not the subquery's. With the status, due and lease conditions only in
the subquery, two workers took the same proofs, whole batches of them; they are on the
locked rows too. Uses a database of its own."""

from __future__ import annotations

import os
import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, insert, text

from verifier.storage.db import Database, upgrade
from verifier.storage.models import PaymentSession, Proof, ProofStatus
from verifier.storage.repo import proofs as proof_repo

PG_URL = os.environ.get("RAILPROOF_TEST_POSTGRES_URL")
NOW = datetime(2026, 1, 1, tzinfo=UTC)
PROOFS, OWNERS, BATCH, ROUNDS = 20_000, 50, 100, 20

pytestmark = pytest.mark.skipif(not PG_URL, reason="needs RAILPROOF_TEST_POSTGRES_URL")


@pytest.fixture
def pg_db():
    base = PG_URL.rpartition("/")[0]
    name = "railproof_claim_" + uuid.uuid4().hex[:8]
    admin = create_engine(f"{base}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = f"{base}/{name}"
    db = None
    try:
        upgrade(url)
        db = Database(url)
        yield db
    finally:
        if db is not None:
            db.dispose()
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _seed(db: Database) -> None:
    sessions = [
        {
            "id": f"s{o}",
            "owner_id": f"owner{o}",
            "rail_id": "solana_usdc",
            "access_product_id": "pro",
            "amount": 1,
            "network": "solana-mainnet",
            "asset": "mint",
            "recipient": "treasury",
            "reference": None,
            "payer": None,
            "memo": None,
            "status": "open",
            "created_at": NOW,
            "expires_at": NOW + timedelta(days=1),
            "paid_at": None,
        }
        for o in range(OWNERS)
    ]
    proofs = [
        {
            "id": f"p{i:07d}",
            "fingerprint": uuid.uuid4().hex + uuid.uuid4().hex,
            "rail_id": "solana_usdc",
            "proof_type": "solana_tx_signature",
            "ref": f"sig{i}",
            "raw": f"sig{i}",
            "owner_id": f"owner{i % OWNERS}",
            "session_id": f"s{i % OWNERS}",
            "status": ProofStatus.pending.value,
            "failure_code": "tx_not_found",
            "detail": "",
            "attempts": 1,
            "next_check_at": NOW,
            "claimed_until": None,
            "claimed_by": None,
            "created_at": NOW,
            "updated_at": NOW,
        }
        for i in range(PROOFS)
    ]
    with db.tx() as s:
        s.execute(insert(PaymentSession), sessions)
        s.execute(insert(Proof), proofs)


def _claim(
    db: Database,
    start: threading.Barrier,
    got: dict[str, list[str]],
    name: str,
    lease: timedelta,
) -> None:
    start.wait()
    held = datetime.now(UTC)
    with db.tx() as s:
        got[name] = proof_repo.claim_due(
            s, ProofStatus.pending, NOW, held, BATCH, name, held + lease
        )


def test_two_workers_claiming_at_once_never_take_the_same_pending_proof(pg_db):
    _seed(pg_db)
    lease = timedelta(minutes=5)
    for _ in range(ROUNDS):
        with pg_db.tx() as s:  # every proof free again: a fresh queue for this round
            s.execute(text("UPDATE proofs SET claimed_by = NULL, claimed_until = NULL"))
        got: dict[str, list[str]] = {}
        start = threading.Barrier(2)

        threads = [
            threading.Thread(target=_claim, args=(pg_db, start, got, n, lease))
            for n in ("w1", "w2")
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        both = set(got["w1"]) & set(got["w2"])
        # Each proof is leased to one worker only: the row says which one won.
        assert not both, (
            f"{len(both)} pending proofs were claimed by both workers in one round "
            f"(w1 took {len(got['w1'])}, w2 took {len(got['w2'])})"
        )
