"""A worker whose database connection drops (PostgreSQL restarted, a failover, an idle
connection cut by a proxy) exited on the sweep's exception, and with it every re-check,
finality refresh, apply and discovery stopped until someone restarted it. It logs the failure
and sweeps again once the database answers, as its webhook thread already did.

The API, meanwhile (through a proxy the test cuts, or with its connections terminated by the
server): 503 `database_unavailable` with Retry-After, never a 500 "internal error"; a pooled
connection the server closed is not handed to a request; and an Idempotency-Key whose request
the outage cut is released once the database answers, so the client's retry runs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select, text

from tests.conftest import PG_URL, auth, make_settings
from tests.db_outage import CutProxy, terminate_backends
from tests.fake_rail import ScriptedChain, catalog_with_fake
from tests.fault_rpc import DEMO_CASSETTE, FIXTURES
from tests.helpers import FAKE_SESSION, fake_payment
from tests.procs import AUDIT_KEY, Api, Worker, base_env, migrate, wait_until
from tests.test_pg_concurrency import pg_db  # noqa: F401
from verifier.core.engine import Engine
from verifier.http.api import create_app
from verifier.storage.db import Database, upgrade
from verifier.storage.models import Entitlement, IdempotencyClaim, Proof

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


# -- the API -----------------------------------------------------------------------------------

PROXY_PORTS = (19561, 19562)


def _api_engine(url: str, chain: ScriptedChain) -> Engine:
    e = Engine(make_settings(url), catalog=catalog_with_fake())
    e.chains.set_transport("fakenet", chain)
    e.ensure_rail_states()
    return e


def _unavailable(r) -> bool:
    err = r.json().get("error") or {}
    return (
        r.status_code == 503
        and err.get("code") == "database_unavailable"
        and "message" in err
        and "nothing" not in err["message"]  # a request may have committed part of its work
        and r.headers.get("Retry-After") == "2"
    )


@pytest.mark.postgres
def test_an_unreachable_database_answers_503_database_unavailable(pg_db, caplog):  # noqa: F811
    upgrade(pg_db.url)
    proxy = CutProxy(PROXY_PORTS[0])
    e = _api_engine(proxy.through(pg_db.url), ScriptedChain())
    try:
        with TestClient(create_app(e), raise_server_exceptions=False) as c:
            r = c.post("/v1/payment-sessions", headers=auth(), json=FAKE_SESSION)
            assert r.status_code == 201, r.text
            proxy.down()  # PostgreSQL restarting: connections cut, new ones refused
            answers = [
                c.post("/v1/payment-sessions", headers=auth(), json=FAKE_SESSION),
                c.get("/v1/entitlements", params={"owner_id": "alice"}, headers=auth()),
            ]
            assert all(_unavailable(r) for r in answers), [r.text for r in answers]
            # Not a bug: no "unhandled error" for the HttpServerErrors alert's runbook.
            assert "unhandled error" not in caplog.text
            proxy.up()
            r = c.post("/v1/payment-sessions", headers=auth(), json=FAKE_SESSION)
            assert r.status_code == 201, r.text  # back by itself
    finally:
        proxy.down()
        e.db.dispose()


@pytest.mark.postgres
def test_a_pooled_connection_the_server_closed_is_not_handed_out(pg_db):  # noqa: F811
    upgrade(pg_db.url)
    e = _api_engine(pg_db.url, ScriptedChain())
    try:
        with TestClient(create_app(e), raise_server_exceptions=False) as c:
            r = c.post("/v1/payment-sessions", headers=auth(), json=FAKE_SESSION)
            assert r.status_code == 201, r.text
            # A server restart between two requests of a busy process: the pooled connection
            # was used within the last second, so it is not pinged for being idle.
            assert terminate_backends(PG_URL, pg_db.url) >= 1
            r = c.post("/v1/payment-sessions", headers=auth(), json=FAKE_SESSION)
            assert r.status_code == 201, r.text
    finally:
        e.db.dispose()


@pytest.mark.postgres
def test_an_outage_mid_proof_leaves_its_idempotency_key_free_for_the_retry(pg_db):  # noqa: F811
    """README: unfinished claims are released when the handler fails, and left in place only
    when the process dies. Here the process lives on: PostgreSQL goes away while the proof is
    verified on chain (after its row was stored), and is back seconds later."""
    upgrade(pg_db.url)
    proxy = CutProxy(PROXY_PORTS[1])

    class Chain(ScriptedChain):
        cut = False

        def call(self, method, params):
            if self.cut:
                proxy.down()
            return super().call(method, params)

    chain = Chain()
    e = _api_engine(proxy.through(pg_db.url), chain)
    try:
        with TestClient(create_app(e), raise_server_exceptions=False) as c:
            sess = c.post("/v1/payment-sessions", headers=auth(), json=FAKE_SESSION).json()
            fake_payment(chain, sess, "fx0123abcd")
            body = {"session_id": sess["id"], "proof": "fx0123abcd"}
            headers = {**auth(), "Idempotency-Key": "submit-1"}
            chain.cut = True
            first = c.post("/v1/proofs", headers=headers, json=body)
            assert _unavailable(first), first.text  # the proof was stored: not "nothing"
            chain.cut = False
            proxy.up()
            retry = c.post("/v1/proofs", headers=headers, json=body)
            # The proof as stored (pending: its verification was cut; the worker finishes it).
            assert retry.status_code in (200, 201), retry.text
            again = c.post("/v1/proofs", headers=headers, json=body)
            assert again.json() == retry.json() and again.headers["Idempotent-Replayed"]
        with e.db.tx() as s:
            claims = [(k.key, k.status) for k in s.scalars(select(IdempotencyClaim))]
            proofs = [p.id for p in s.scalars(select(Proof))]
        assert proofs == [retry.json()["id"]], proofs  # one proof, stored by the first request
        assert claims == [("submit-1", "completed")], claims
    finally:
        proxy.down()
        e.db.dispose()
