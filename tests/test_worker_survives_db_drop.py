"""A worker whose database connection drops (PostgreSQL restarted, a failover, an idle
connection cut by a proxy) exited on the sweep's exception, and with it every re-check,
finality refresh, apply and discovery stopped until someone restarted it. It logs the failure
and sweeps again once the database answers, as its webhook thread already did.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.fault_rpc import DEMO_CASSETTE, FIXTURES
from tests.procs import AUDIT_KEY, Api, Worker, base_env, migrate, wait_until
from tests.test_pg_concurrency import pg_db  # noqa: F401
from verifier.storage.db import Database
from verifier.storage.models import Entitlement

DEMO = json.loads(DEMO_CASSETTE.read_text())["demo"]
SVC = {"Authorization": "Bearer svc-1"}
TOKENS = dict(
    service_tokens=json.dumps({"svc-1": ["alice"]}), staff_tokens=json.dumps({"staff-1": "ops1"})
)
WAIT_S = 30.0


@pytest.fixture
def procs() -> Iterator[list]:
    started: list = []
    yield started
    for p in started:
        p.stop()


def demo_session(client: httpx.Client, base: str) -> dict:
    r = client.post(
        base + "/v1/payment-sessions",
        headers=SVC,
        json={
            "owner_id": "alice",
            "rail_id": "solana_usdc",
            "access_product_id": "pro",
            "amount": DEMO["amount"],
            "recipient": DEMO["recipient"],
            "reference": DEMO["reference"],
            "memo": DEMO["memo"],
        },
    )
    assert r.status_code == 201, r.text
    return r.json()


def _waiting_on_proofs(conn) -> list[int]:
    """Backends (other than ours) waiting for a lock on the proofs table."""
    return list(
        conn.execute(
            text(
                "SELECT l.pid FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                "WHERE c.relname = 'proofs' AND NOT l.granted AND l.pid <> pg_backend_pid()"
            )
        )
        .scalars()
        .all()
    )


def test_worker_survives_its_database_connection_dropping(pg_db, procs, tmp_path):  # noqa: F811
    """The worker's sweep loses its PostgreSQL connection (terminated by the server, as on a
    restart or failover). Once the database answers again the worker must carry on: here,
    apply the next verified, final proof (RAILPROOF_AUTO_APPLY=1)."""
    pg_url = pg_db.url
    env = base_env(
        database_url=pg_url,
        chain="cassette",
        cassette_dir=str(FIXTURES),
        clock=DEMO["clock"],
        auto_apply="1",
        **TOKENS,
    )
    migrate(env)
    api = Api(env, tmp_path)
    procs.append(api)
    api.wait_ready()
    worker = Worker(env, tmp_path, "w-drop", interval=0.2)
    procs.append(worker)
    wait_until("the worker's first sweep", lambda: "sweep" in worker.output(), WAIT_S)

    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    locker = create_engine(pg_url)
    db = Database(pg_url, audit_key=AUDIT_KEY)
    client = httpx.Client(timeout=30.0)
    try:
        # Pin the worker inside its sweep's database work: its claim of due proofs waits on
        # the table lock the test holds. Then the server ends that backend, as a restart does.
        with locker.connect() as lock_conn, admin.connect() as a:
            lock_conn.execute(text("LOCK TABLE proofs IN ACCESS EXCLUSIVE MODE"))
            waiting: list[int] = []

            def worker_waits() -> bool:
                waiting[:] = _waiting_on_proofs(a)
                return bool(waiting)

            wait_until("the worker's claim to wait on the proofs table", worker_waits, WAIT_S)
            for pid in waiting:
                assert a.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()
            lock_conn.rollback()
        # The database is back at once; give the worker a few sweeps' time.
        worker_alive_later = True
        try:
            wait_until("the worker to exit", lambda: not worker.alive(), 5.0)
            worker_alive_later = False
        except AssertionError:
            pass
        assert worker_alive_later, (
            f"railproof worker exited (code {worker.popen.returncode}) on one dropped database "
            f"connection:\n{worker.output()[-1500:]}"
        )

        # And it still works: a verified, final proof is applied by it.
        sess = demo_session(client, api.url)
        r = client.post(
            api.url + "/v1/proofs",
            headers=SVC,
            json={"session_id": sess["id"], "proof": DEMO["signature"]},
        )
        assert r.status_code == 201 and r.json()["status"] == "verified", r.text

        def applied() -> bool:
            with db.tx() as s:
                ent = s.query(Entitlement).filter_by(session_id=sess["id"]).one()
                return ent.status == "active"

        wait_until("the worker to apply the verified proof", applied, 20.0)
    finally:
        client.close()
        db.dispose()
        locker.dispose()
        admin.dispose()
