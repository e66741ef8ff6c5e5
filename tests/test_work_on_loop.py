"""Where the submission path's service work runs (verifier.core.inline), on both databases.

- On SQLite `POST /v1/payment-sessions` and `POST /v1/proofs` run their service call on the
  API's event loop; on PostgreSQL on a pool thread.
- Either way, a submission waiting on a slow chain does not hold the API: other tenants'
  sessions are opened and read meanwhile, and the waiting proof is verified once the chain
  answers.
- Work on the loop never hands the loop to another request while a transaction is open (it
  holds SQLite's write lock), and does once none is, and while its transaction waits for the
  write lock another process or a pool thread holds (within the busy timeout).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import sqlite3
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from anyio import to_thread
from fastapi.testclient import TestClient
from sqlalchemy import select, text

from tests.conftest import OTHER_SERVICE_TOKEN, auth, make_settings
from tests.fake_rail import ScriptedChain, catalog_with_fake
from tests.test_engine_proofs import pay
from verifier.core import inline
from verifier.core.engine import Engine
from verifier.http.api import create_app
from verifier.services import sessions
from verifier.services.principals import principal_name
from verifier.storage import db as storage_db
from verifier.storage.db import Database
from verifier.storage.models import IdempotencyClaim as Claim

_n = itertools.count(1)


class _SlowChain(ScriptedChain):
    """A live node that answers only once the test releases it."""

    source = "live"

    def __init__(self) -> None:
        super().__init__()
        self.asked = threading.Event()
        self.release = threading.Event()

    def call(self, method: str, params: list[Any]) -> Any:
        self.asked.set()
        self.release.wait(30)
        return super().call(method, params)


def _slow_app(db_url: str, **settings: Any) -> Iterator[tuple[Engine, _SlowChain, TestClient]]:
    e = Engine(
        make_settings(db_url, submit_verify_budget_s=20.0, **settings),
        catalog=catalog_with_fake(),
    )
    chain = _SlowChain()
    e.chains.set_transport("fakenet", chain)
    e.ensure_rail_states()
    # One client for the whole test: its requests share one event loop, as a server's do.
    with TestClient(create_app(e), raise_server_exceptions=False) as client:
        yield e, chain, client
    chain.release.set()
    e.db.dispose()


@pytest.fixture
def slow(db_url) -> Iterator[tuple[Engine, _SlowChain, TestClient]]:
    yield from _slow_app(db_url)


def _paying(chain: _SlowChain, session: Any) -> str:
    """A finalized transfer on the chain that pays `session`; its signature."""
    tx = f"fx{next(_n):08x}"
    pay(chain, tx, session, finality="finalized")
    return tx


def _submitting(
    client: TestClient, chain: _SlowChain, key: str
) -> tuple[Any, threading.Thread, list[Any]]:
    """Alice's session and a thread submitting its payment, which the slow chain holds; the
    thread's answer goes to the list."""
    s = _session(client)
    tx = _paying(chain, s)
    answers: list[Any] = []

    def submit() -> None:
        answers.append(
            client.post(
                "/v1/proofs",
                headers={**auth(), "Idempotency-Key": key},
                json={"session_id": s["id"], "proof": tx},
            )
        )

    waiting = threading.Thread(target=submit)
    waiting.start()
    assert chain.asked.wait(10), "the submission never reached the chain"
    return s, waiting, answers


def _session(client: TestClient, owner: str = "alice", token: str | None = None) -> Any:
    body = {
        "owner_id": owner,
        "rail_id": "fake_live",
        "access_product_id": "pro",
        "amount": 1_500_000,
        "recipient": "fatreasury",
    }
    r = client.post(
        "/v1/payment-sessions",
        headers={**(auth(token) if token else auth()), "Idempotency-Key": f"s-{next(_n)}"},
        json=body,
    )
    assert r.status_code == 201, r.text
    return r.json()


def test_the_sessions_work_runs_on_the_loop_on_sqlite_and_on_a_pool_thread_on_postgres(
    engine, client, monkeypatch
):
    seen: list[bool] = []
    real = sessions.open_session

    def spy(*args: Any, **kwargs: Any) -> Any:
        try:
            asyncio.get_running_loop()
            seen.append(True)
        except RuntimeError:  # no loop runs on a pool thread
            seen.append(False)
        return real(*args, **kwargs)

    monkeypatch.setattr(sessions, "open_session", spy)
    _session(client)
    assert engine.work_on_loop is (not engine.db.postgres)
    assert seen == [engine.work_on_loop]


def _answered(waiting: threading.Thread, answers: list[Any]) -> Any:
    """The submission's answer once the chain was released: verified."""
    waiting.join(30)
    (r,) = answers
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "verified", r.json()
    return r


def test_a_submission_waiting_on_the_chain_does_not_hold_other_tenants(slow):
    e, chain, client = slow
    s, waiting, answers = _submitting(client, chain, "waits")
    try:
        # Meanwhile another tenant opens a session and reads it back, and alice reads hers.
        other = _session(client, owner="bob", token=OTHER_SERVICE_TOKEN)
        r = client.get(f"/v1/payment-sessions/{other['id']}", headers=auth(OTHER_SERVICE_TOKEN))
        assert r.status_code == 200, r.text
        r = client.get(f"/v1/payment-sessions/{s['id']}", headers=auth())
        assert r.status_code == 200, r.text
        # ... all while the first submission still waits on the chain.
        assert waiting.is_alive() and not answers
    finally:
        chain.release.set()
    r = _answered(waiting, answers)
    # Requests interleaved on one loop kept their own Idempotency-Key claims: each stores
    # its own answer, under its own principal.
    with e.db.tx() as db:
        stored = {(c.principal, c.key): (c.status, c.response) for c in db.scalars(select(Claim))}
    alice, bob = principal_name(["alice", "alice-2"]), principal_name(["bob"])
    assert stored[(alice, "waits")] == ("completed", r.json())
    assert [v for (p, _), v in stored.items() if p == bob] == [("completed", other)]


def test_work_on_the_loop_keeps_it_inside_a_transaction(tmp_path):
    db = Database(f"sqlite:///{tmp_path}/inline.db")
    ran: list[str] = []

    async def other() -> None:
        ran.append("other")

    def later(event: threading.Event) -> None:
        threading.Timer(0.2, event.set).start()

    def work() -> list[list[str]]:
        seen = []
        asyncio.get_running_loop().create_task(other())
        inside = threading.Event()
        later(inside)
        with db.tx():
            assert inline.wait(inside, 5)
            seen.append(list(ran))  # the loop was not handed over: `other` has not run
        outside = threading.Event()
        later(outside)
        assert inline.wait(outside, 5)
        seen.append(list(ran))  # handed over while waiting: `other` ran
        return seen

    async def main() -> list[list[str]]:
        return await inline.run(work, on_loop=True)

    try:
        assert asyncio.run(main()) == [[], ["other"]]
    finally:
        db.dispose()


def test_a_pool_thread_waits_plainly():
    """Off the loop (the worker, the CLI, PostgreSQL's pool threads) `wait` is Event.wait."""
    event = threading.Event()
    assert inline.wait(event, 0.01) is False
    event.set()
    assert inline.wait(event, 0.01) is True


def _table(path: str) -> None:
    """A database in WAL mode (as every Database's is) with one table."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (who TEXT)")
    conn.close()


def _write(db: Database, who: str) -> None:
    with db.tx() as s:
        s.execute(text("INSERT INTO t VALUES (:who)"), {"who": who})


def _rows(db: Database) -> list[str]:
    with db.tx() as s:
        return list(s.scalars(text("SELECT who FROM t ORDER BY rowid")))


async def _raised(awaitable: Any) -> BaseException | None:
    """What awaiting `awaitable` raised (None: nothing)."""
    try:
        await awaitable
    except Exception as e:  # noqa: BLE001 - the error is what the tests check
        return e
    return None


def _holding_the_write_lock(db: Database, path: str, holder: str, until: threading.Event):
    """A thread that takes SQLite's write lock as `holder` (another process's connection, or
    a pool thread of this one through `db`) and keeps it until `until` is set or 10 s pass.
    Returns the thread, an event set once it holds the lock, and a list that receives whether
    `until` was set while it held it."""
    locked = threading.Event()
    seen: list[bool] = []

    def hold() -> None:
        if holder == "another process":
            conn = sqlite3.connect(path, isolation_level=None, timeout=0)
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t VALUES ('holder')")
            locked.set()
            seen.append(until.wait(10))
            conn.execute("COMMIT")
            conn.close()
            return
        with db.tx() as s:
            s.execute(text("INSERT INTO t VALUES ('holder')"))
            locked.set()
            seen.append(until.wait(10))

    thread = threading.Thread(target=hold)
    thread.start()
    return thread, locked, seen


@pytest.mark.parametrize("holder", ["another process", "a pool thread"])
def test_work_on_the_loop_waiting_for_the_write_lock_lets_the_loop_serve_others(tmp_path, holder):
    path = str(tmp_path / "lock.db")
    _table(path)
    db = Database(f"sqlite:///{path}")
    served = threading.Event()  # set by another request on the loop
    thread, locked, seen = _holding_the_write_lock(db, path, holder, served)

    work = functools.partial(_write, db, "loop")

    async def main() -> None:
        assert await asyncio.to_thread(locked.wait, 10)
        waiting = asyncio.ensure_future(inline.run(work, on_loop=True))
        await asyncio.sleep(0.05)  # the work has started and waits for the lock
        assert not waiting.done()
        served.set()  # another request, served by the loop meanwhile
        await waiting

    try:
        asyncio.run(main())
        thread.join(10)
        # The loop served the other request while the lock was held (not after it was
        # released), and the waiting work then wrote once the holder committed.
        assert seen == [True]
        assert _rows(db) == ["holder", "loop"]
    finally:
        served.set()
        db.dispose()


def test_work_on_the_loop_gives_up_on_the_write_lock_after_the_busy_timeout(tmp_path, monkeypatch):
    path = str(tmp_path / "lock.db")
    _table(path)
    monkeypatch.setattr(storage_db, "SQLITE_BUSY_TIMEOUT_S", 0.2)
    db = Database(f"sqlite:///{path}")
    release = threading.Event()
    thread, locked, seen = _holding_the_write_lock(db, path, "another process", release)

    work = functools.partial(_write, db, "loop")

    async def main() -> BaseException | None:
        assert await asyncio.to_thread(locked.wait, 10)
        return await _raised(inline.run(work, on_loop=True))

    try:
        error = asyncio.run(main())
        assert error is not None and storage_db.is_busy(error), error
        release.set()
        thread.join(10)
        # Nothing of the work was written; the next transaction on the loop takes the lock.
        asyncio.run(inline.run(work, on_loop=True))
        assert _rows(db) == ["holder", "loop"]
    finally:
        release.set()
        db.dispose()


def test_waiting_for_the_loops_turn_is_bounded_like_the_lock(tmp_path, monkeypatch):
    """Work on the loop waiting for its turn (another transaction on the loop is still waiting
    for the write lock) gives up as busy after the busy timeout too, having written nothing."""
    path = str(tmp_path / "lock.db")
    _table(path)
    monkeypatch.setattr(storage_db, "SQLITE_BUSY_TIMEOUT_S", 0.1)
    db = Database(f"sqlite:///{path}")
    db._loop_holder = object()  # the turn another piece of work on the loop has

    work = inline.run(functools.partial(_write, db, "loop"), on_loop=True)
    try:
        # Unbounded, it would wait until cancelled here (a TimeoutError, not busy).
        error = asyncio.run(_raised(asyncio.wait_for(work, 5)))
        assert error is not None and storage_db.is_busy(error), error
        db._loop_holder = None
        assert _rows(db) == []
    finally:
        db.dispose()


def test_the_api_answers_while_another_process_holds_the_write_lock(engine, client):
    """The worker or a migration holds SQLite's write lock: a session opened meanwhile waits
    for it, and the API process still answers (here its liveness probe) in the meantime."""
    if engine.db.postgres:
        pytest.skip("SQLite's write lock")
    path = storage_db.sqlite_path(engine.settings.database_url)
    conn = sqlite3.connect(str(path), isolation_level=None, timeout=0)
    conn.execute("BEGIN IMMEDIATE")
    answers: list[Any] = []
    opening = threading.Thread(target=lambda: answers.append(_session(client)))
    try:
        opening.start()
        assert not opening.join(0.2) and opening.is_alive()  # waits for the lock
        r = client.get("/healthz")
        assert r.status_code == 200, r.text
        assert opening.is_alive() and not answers  # answered while the lock was held
    finally:
        conn.execute("COMMIT")
        conn.close()
    opening.join(30)
    (s,) = answers
    assert s["status"] == "open", s


# -- PostgreSQL: the work slots of an API process (core.inline.Slots) ---------------------------


@pytest.fixture
def one_slot(db_url) -> Iterator[tuple[Engine, _SlowChain, TestClient]]:
    """An API process on PostgreSQL with one work slot, its live chain answering on release."""
    if not db_url.startswith("postgresql"):
        pytest.skip("work slots are PostgreSQL's (SQLite works on the loop)")
    yield from _slow_app(db_url, pg_work_slots=1)


def test_a_process_works_on_at_most_its_slots_at_once(db_url, monkeypatch):
    if not db_url.startswith("postgresql"):
        pytest.skip("work slots are PostgreSQL's (SQLite works on the loop)")
    e = Engine(make_settings(db_url, pg_work_slots=2), catalog=catalog_with_fake())
    e.ensure_rail_states()
    assert e.work_slots is not None and e.work_slots.size == 2
    inside, most, lock = [0], [0], threading.Lock()
    go = threading.Event()
    real = sessions.open_session

    def counted(*args: Any, **kwargs: Any) -> Any:
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        try:
            go.wait(10)
            return real(*args, **kwargs)
        finally:
            with lock:
                inside[0] -= 1

    monkeypatch.setattr(sessions, "open_session", counted)
    answers: list[Any] = []
    try:
        with TestClient(create_app(e), raise_server_exceptions=False) as client:
            threads = [
                threading.Thread(target=lambda: answers.append(_session(client))) for _ in range(6)
            ]
            for t in threads:
                t.start()
            for _ in range(100):  # until two are inside (the rest wait for a slot)
                if most[0] >= 2:
                    break
                threading.Event().wait(0.02)
            threading.Event().wait(0.2)  # room for a third to enter, were it let in
            assert inside[0] == 2
            go.set()
            for t in threads:
                t.join(30)
        assert most[0] == 2
        assert len(answers) == 6 and len({s["id"] for s in answers}) == 6
    finally:
        go.set()
        e.db.dispose()


def test_a_submission_waiting_on_the_chain_gives_its_slot_up(one_slot):
    _, chain, client = one_slot
    _, waiting, answers = _submitting(client, chain, "slot-waits")
    try:
        # The process's one slot is free while the chain is asked: another tenant's
        # session is opened meanwhile.
        other = _session(client, owner="bob", token=OTHER_SERVICE_TOKEN)
        assert other["status"] == "open"
        assert waiting.is_alive() and not answers
    finally:
        chain.release.set()
    _answered(waiting, answers)


def test_slots_are_postgres_only_and_can_be_turned_off(db_url):
    for n, expected in ((0, None), (3, 3)):
        e = Engine(make_settings(db_url, pg_work_slots=n), catalog=catalog_with_fake())
        try:
            got = e.work_slots.size if e.work_slots is not None else None
            assert got == (expected if e.db.postgres else None)
        finally:
            e.db.dispose()
    with pytest.raises(ValueError):
        inline.Slots(0)


def test_requests_waiting_for_the_write_lock_hold_no_pooled_connection(db_url, monkeypatch):
    """Many requests waiting on the loop for the write lock another process holds: they wait
    for their turn before taking a connection, so a pool smaller than the crowd never blocks
    the loop's thread (which would freeze every waiter until the pool's timeout)."""
    if db_url.startswith("postgresql"):
        pytest.skip("SQLite's write lock")
    monkeypatch.setattr(storage_db, "POOL_SIZE", 1)
    monkeypatch.setattr(storage_db, "POOL_OVERFLOW", 0)
    e = Engine(make_settings(db_url), catalog=catalog_with_fake())
    e.ensure_rail_states()
    conn = sqlite3.connect(str(storage_db.sqlite_path(db_url)), isolation_level=None, timeout=0)
    answers: list[Any] = []
    try:
        with TestClient(create_app(e), raise_server_exceptions=False) as client:
            conn.execute("BEGIN IMMEDIATE")
            opening = [
                threading.Thread(target=lambda: answers.append(_session(client))) for _ in range(3)
            ]
            for t in opening:
                t.start()
            threading.Event().wait(0.3)  # all three are waiting for the lock by now
            r = client.get("/healthz")
            assert r.status_code == 200, r.text
            assert all(t.is_alive() for t in opening) and not answers
            conn.execute("COMMIT")
            for t in opening:
                t.join(30)
        assert len(answers) == 3 and all(s["status"] == "open" for s in answers)
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")
        conn.close()
        e.db.dispose()


def test_a_slot_given_up_on_a_chain_wait_is_not_taken_back(one_slot):
    """More submissions wait on a slow chain than the process has pool threads: each gives its
    slot up and finishes without one once the chain answers, so the request holding the slot
    meanwhile gets a thread (taking the slot back would block every thread for good)."""
    e, chain, client = one_slot

    def threads_of_the_loop(n: int) -> None:
        async def set_tokens() -> None:
            to_thread.current_default_thread_limiter().total_tokens = n

        client.portal.call(set_tokens)

    threads_of_the_loop(3)
    sessions_ = [_session(client) for _ in range(4)]
    txs = [_paying(chain, s) for s in sessions_]
    answers: list[Any] = []

    def submit(s: Any, tx: str) -> None:
        answers.append(
            client.post("/v1/proofs", headers=auth(), json={"session_id": s["id"], "proof": tx})
        )

    threads = [threading.Thread(target=submit, args=a) for a in zip(sessions_, txs, strict=True)]
    for t in threads:
        t.start()
    assert chain.asked.wait(10)
    threading.Event().wait(0.3)  # three threads wait on the chain, the fourth for a thread
    chain.release.set()
    try:
        for t in threads:
            t.join(20)
        stuck = any(t.is_alive() for t in threads)
    finally:
        threads_of_the_loop(40)  # frees a deadlocked process, so a failure ends the test
        for t in threads:
            t.join(30)
    assert not stuck, "the submissions deadlocked"
    assert sorted(r.status_code for r in answers) == [201] * 4
    assert {r.json()["status"] for r in answers} == {"verified"}


def test_liveness_answers_while_every_pool_thread_is_busy(client, monkeypatch):
    """/healthz runs on the event loop: a process whose pool threads all wait (here its one
    thread, held by a readiness check) is still alive, and says so at once."""
    from verifier.http.routes import health

    release = threading.Event()
    real = health.readiness_checks

    def slow_checks(engine: Engine) -> Any:
        release.wait(30)
        return real(engine)

    async def one_thread() -> None:
        to_thread.current_default_thread_limiter().total_tokens = 1

    async def threads_back() -> None:
        to_thread.current_default_thread_limiter().total_tokens = 40

    monkeypatch.setattr(health, "readiness_checks", slow_checks)
    client.portal.call(one_thread)
    ready: list[Any] = []
    live: list[Any] = []
    readiness = threading.Thread(target=lambda: ready.append(client.get("/readyz")))
    liveness = threading.Thread(target=lambda: live.append(client.get("/healthz")))
    try:
        readiness.start()
        threading.Event().wait(0.2)  # the readiness check holds the one pool thread
        liveness.start()
        liveness.join(10)
        answered_while_busy = bool(live) and not ready
    finally:
        release.set()
        client.portal.call(threads_back)
        readiness.join(30)
        liveness.join(30)
    assert answered_while_busy
    assert live[0].status_code == 200 and live[0].json()["status"] == "ok"
    assert ready and ready[0].status_code in (200, 503)
