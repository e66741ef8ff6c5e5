"""Attacks on the audit chain's lock sent behind the next statement (storage.repo.audit
`lock_behind`, `Prepared.behind(last=True)`), on the submission that sends it behind its
proof's insert, and on the session open whose insert rides with the chain's lock: savepoints,
rollbacks before the round trip, and races between threads and processes on PostgreSQL."""

from __future__ import annotations

import multiprocessing
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import bindparam, create_engine, func, select, text, update

from tests.conftest import SERVICE_TOKEN, auth, make_settings
from tests.fake_rail import catalog_with_fake
from tests.helpers import FAKE_SESSION
from tests.test_engine_proofs import count, open_session, pay
from tests.test_gate import paid_proof
from verifier.core.engine import Engine
from verifier.core.errors import BadInput, Conflict, Refused
from verifier.core.timeutil import utc
from verifier.services import audit, proofs
from verifier.storage.models import HOLDING, AuditEvent, PaymentSession, Proof, TransferHold
from verifier.storage.repo import audit as audit_repo
from verifier.storage.repo import prepared
from verifier.storage.repo import rail_state as rail_state_repo
from verifier.storage.repo.prepared import Prepared
from verifier.worker import loop as worker

_T = PaymentSession.__table__
_STATUS = Prepared(select(_T.c.status).where(_T.c.id == bindparam("pk")))
OP = audit.Operator("attack")
DEADLOCK = "40P01"
JOIN_S = 20


@pytest.fixture
def pg(engine):
    if not engine.db.postgres:
        pytest.skip("the lock sent behind is PostgreSQL's")
    return engine


def chain_ok(engine) -> int:
    with engine.db.tx() as s:
        report = audit.verify_chain(s)
    assert report.ok, report.message
    return report.events


def actions(engine) -> list[str]:
    with engine.db.tx() as s:
        return list(s.scalars(select(AuditEvent.action).order_by(AuditEvent.id)))


def join_all(threads: list[threading.Thread]) -> None:
    deadline = time.monotonic() + JOIN_S
    for t in threads:
        t.join(max(0.1, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "a thread is stuck (deadlock?)"


def no_deadlock(errors: list[BaseException]) -> None:
    for e in errors:
        code = getattr(getattr(e, "orig", None), "sqlstate", None)
        assert code != DEADLOCK, f"deadlock: {e}"
    assert not errors, errors


def wait_for_lock_wait(url: str, what: str, waiters: int = 1, timeout: float = 5.0) -> None:
    """Until `waiters` backends of the test's database wait on a heavyweight lock (a row, a
    transaction, a table or an advisory lock)."""
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        deadline = time.monotonic() + timeout
        with admin.connect() as c:
            while True:
                waiting = c.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
                    )
                )
                if waiting >= waiters:
                    return
                assert time.monotonic() < deadline, f"{what} never waited on a lock"
                time.sleep(0.02)
    finally:
        admin.dispose()


# -- the lock sent behind and savepoints -----------------------------------------------------


@pytest.mark.parametrize("end", ["released", "rolled-back"])
@pytest.mark.parametrize(
    "sent_first", [True, False], ids=["sent-then-savepoint", "savepoint-sends"]
)
def test_a_savepoint_between_lock_behind_and_the_append(pg, sent_first, end):
    """The head read in the lock's round trip is the head before the savepoint. An event the
    savepoint appended and released is the head after it: the append after the savepoint must
    link to it, not to the head read before the savepoint."""
    engine = pg
    sess = open_session(engine)
    before = chain_ok(engine)

    class Undo(Exception):
        pass

    with engine.db.tx() as s:
        conn = s.connection()
        audit_repo.lock_behind(s)
        if sent_first:
            _STATUS.first(conn, {"pk": sess["id"]})  # carries the lock and the head
        try:
            with s.begin_nested():  # unless sent already, SAVEPOINT sends them first
                audit.append(s, engine.now(), OP, "probe.inner", "payment_session", sess["id"])
                if end == "rolled-back":
                    raise Undo
        except Undo:
            pass
        audit.append(s, engine.now(), OP, "probe.outer", "payment_session", sess["id"])
    want = ["probe.inner", "probe.outer"] if end == "released" else ["probe.outer"]
    assert chain_ok(engine) == before + len(want)
    assert actions(engine)[-len(want) :] == want


# -- the lock sent behind and a rollback before its round trip -------------------------------


def _advisory_holders(url: str) -> list[int]:
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            return list(
                c.scalars(
                    text(
                        "SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
                        " WHERE l.locktype = 'advisory' AND l.granted"
                        " AND d.datname = current_database()"
                    )
                )
            )
    finally:
        admin.dispose()


def test_lock_behind_rolled_back_before_its_round_trip_sends_nothing_later(pg, monkeypatch):
    """A transaction asks for the lock behind its next statement and rolls back before any
    statement carried it. The next transactions on the same pooled connection (and on the
    same Session) send nothing of it: no lock is held by a plain read, and the next append
    takes the lock and head of its own and links to the real head."""
    engine = pg
    url = engine.settings.database_url
    sess = open_session(engine)
    engine.db.engine.dispose()  # one pooled connection from here on: the next gets it again
    trips: list[int] = []
    real = prepared._sync
    monkeypatch.setattr(prepared, "_sync", lambda pgc: (trips.append(1), real(pgc))[1])

    with pytest.raises(RuntimeError, match="roll back"), engine.db.tx() as s:
        pid = s.scalar(text("SELECT pg_backend_pid()"))
        audit_repo.lock_behind(s)
        raise RuntimeError("roll back")

    with engine.db.tx() as s:
        assert s.scalar(text("SELECT pg_backend_pid()")) == pid  # the same server session
        before = len(trips)
        assert _STATUS.first(s.connection(), {"pk": sess["id"]}) == ("open",)
        assert len(trips) - before == 1
        assert pid not in _advisory_holders(url)  # nothing rode behind the read
        audit.append(s, engine.now(), OP, "probe.after_rollback", "payment_session", sess["id"])
        assert len(trips) - before == 2  # the append's own lock and head
        assert pid in _advisory_holders(url)

    # The same Session across a rollback: its next transaction starts clean too.
    with engine.db.sessions() as s:
        s.scalar(text("SELECT 1"))
        audit_repo.lock_behind(s)
        s.rollback()
        assert _STATUS.first(s.connection(), {"pk": sess["id"]}) == ("open",)
        assert s.scalar(text("SELECT pg_backend_pid()")) not in _advisory_holders(url)
        audit.append(s, engine.now(), OP, "probe.same_session", "payment_session", sess["id"])
        s.commit()
    assert actions(engine)[-2:] == ["probe.after_rollback", "probe.same_session"]
    chain_ok(engine)
    assert _advisory_holders(url) == []


# -- the submission: its proof's insert is waited for before the chain's lock ----------------


def test_a_replay_waits_for_the_proofs_writer_before_taking_the_chains_lock(pg, chain):
    """A client resubmits its proof while another transaction has updated that proof's row
    and goes on to append (a re-verification: the proof's update, then the chain's lock).
    The replay's insert waits for that writer; had it taken the chain's lock first, the two
    would wait on each other (40P01, or a lock timeout)."""
    engine = pg
    sess = open_session(engine)
    pay(chain, "fxab000001", sess)
    view, created = proofs.submit_proof(engine, sess["id"], "fxab000001", ["alice"])
    assert created
    appends = chain_ok(engine)
    updated, go = threading.Event(), threading.Event()
    out: dict[str, Any] = {}
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            with engine.db.tx() as s:
                s.execute(update(Proof).where(Proof.id == view["id"]).values(detail="re-verifying"))
                updated.set()
                go.wait(10)
                audit.append(s, engine.now(), OP, "probe.writer", "proof", view["id"])
        except BaseException as e:
            errors.append(e)

    def replay() -> None:
        try:
            out["replay"] = proofs.submit_proof(engine, sess["id"], "fxab000001", ["alice"])
        except BaseException as e:
            errors.append(e)

    w = threading.Thread(target=writer)
    w.start()
    assert updated.wait(10)
    r = threading.Thread(target=replay)
    r.start()
    try:
        wait_for_lock_wait(engine.settings.database_url, "the replay")
    finally:
        go.set()
    join_all([w, r])
    no_deadlock(errors)
    again, created = out["replay"]
    assert (again["id"], created) == (view["id"], False)
    assert count(engine, Proof) == 1
    assert chain_ok(engine) == appends + 1


def test_a_submission_meeting_a_pause_takes_the_chains_lock_only_after_the_rails_state(pg, chain):
    """A pause holds the rail state's table and row and then appends; a submission arriving
    meanwhile waits on the rail's state. Its chain lock rides behind that read: taken before
    it, the pause's append and the submission would wait on each other. The submission is
    refused, and nothing of it is stored."""
    engine = pg
    sess = open_session(engine)
    pay(chain, "fxab000002", sess)
    stored = count(engine, Proof)
    locked, go = threading.Event(), threading.Event()
    out: dict[str, Any] = {}
    errors: list[BaseException] = []

    def pause() -> None:
        try:
            with engine.db.tx() as s:
                rail_state_repo.lock_for_pause(s)
                st = engine.rail_state(s, "fake_live", lock=True)
                st.paused = True
                s.flush()
                locked.set()
                go.wait(10)
                audit.append(s, engine.now(), OP, "rail.paused", "rail", "fake_live")
        except BaseException as e:
            errors.append(e)

    def submit() -> None:
        try:
            out["submit"] = proofs.submit_proof(engine, sess["id"], "fxab000002", ["alice"])
        except BaseException as e:
            out["submit"] = e

    p = threading.Thread(target=pause)
    p.start()
    assert locked.wait(10)
    t = threading.Thread(target=submit)
    t.start()
    try:
        wait_for_lock_wait(engine.settings.database_url, "the submission")
    finally:
        go.set()
    join_all([p, t])
    no_deadlock(errors)
    assert isinstance(out["submit"], Refused) and out["submit"].code == "rail_paused", out
    assert count(engine, Proof) == stored
    chain_ok(engine)


@pytest.mark.parametrize("first", ["worker", "replay"])
def test_a_replay_during_the_workers_reverification_of_its_proof(pg, chain, first):
    """The worker re-verifies a pending proof (its update of the proof, then the chain's
    lock) while the client resubmits the same proof to its session, both queued behind the
    chain's lock another transaction holds for now, in either order. The replay's insert
    waits for the worker's update without holding the chain's lock: had the replay taken
    the lock before its insert, the one that gets the lock first would wait on the other
    (a deadlock). Both finish; one proof, verified."""
    engine = pg
    sess, view = paid_proof(engine, chain, found=False)
    assert view["status"] == "pending"
    pay(chain, view["reference"], sess)
    with engine.db.tx() as s:
        nxt = s.scalar(select(Proof.next_check_at).where(Proof.id == view["id"]))
    engine.settings.clock = utc(nxt) + timedelta(seconds=1)
    url = engine.settings.database_url
    held, release = threading.Event(), threading.Event()
    out: dict[str, Any] = {}
    errors: list[BaseException] = []

    def holder() -> None:
        try:
            with engine.db.tx() as s:
                audit_repo.lock_chain(s)
                held.set()
                release.wait(10)
        except BaseException as e:
            errors.append(e)

    def sweep() -> None:
        try:
            out["worker"] = worker.reverify_pending(engine, "w1", 10)
        except BaseException as e:
            errors.append(e)

    def replay() -> None:
        try:
            out["replay"] = proofs.submit_proof(engine, sess["id"], view["reference"], ["alice"])
        except BaseException as e:
            errors.append(e)

    h = threading.Thread(target=holder)
    h.start()
    assert held.wait(10)
    jobs = {"worker": threading.Thread(target=sweep), "replay": threading.Thread(target=replay)}
    second = "replay" if first == "worker" else "worker"
    try:
        jobs[first].start()
        wait_for_lock_wait(url, first)  # on the chain's lock
        jobs[second].start()
        wait_for_lock_wait(url, second, waiters=2)  # the replay: on the worker's update
    finally:
        release.set()
    join_all([h, *jobs.values()])
    no_deadlock(errors)
    assert out["worker"] == 1
    again, created = out["replay"]
    assert (again["id"], created) == (view["id"], False)
    # Answered after the worker committed when it waited for it; when it went first, from
    # a read of its own after its insert's transaction rolled back: either state.
    assert again["status"] in (("verified",) if first == "worker" else ("pending", "verified"))
    with engine.db.tx() as s:
        assert s.scalar(select(Proof.status).where(Proof.id == view["id"])) == "verified"
    assert count(engine, Proof) == 1
    chain_ok(engine)


# -- the submission: held transfers and replays at once ---------------------------------------


def test_claims_of_a_held_transfer_and_replays_at_once(pg, chain):
    """A transfer alice's session holds: other owners' and alice's other sessions claim it
    while alice replays it, all at once. Each refusal held the chain's lock until its
    rollback and is audited once in a transaction of its own; nothing is stored for them;
    the replays answer the holding proof; no deadlock; the chain stays one line."""
    engine = pg
    holder = open_session(engine)
    pay(chain, "fxab000003", holder)
    view, _ = proofs.submit_proof(engine, holder["id"], "fxab000003", ["alice"])
    assert view["status"] == "verified"
    claimants = [("bob", open_session(engine, owner="bob")) for _ in range(3)]
    claimants += [("alice", open_session(engine)) for _ in range(3)]
    stored, appends = count(engine, Proof), chain_ok(engine)
    jobs = [(o, s_["id"]) for o, s_ in claimants] + [("alice", holder["id"])] * 3
    barrier = threading.Barrier(len(jobs))
    out: list[Any] = []
    errors: list[BaseException] = []

    def one(owner: str, sid: str) -> None:
        barrier.wait(10)
        try:
            out.append((sid, proofs.submit_proof(engine, sid, "fxab000003", [owner])))
        except Conflict as e:
            out.append((sid, e.code))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=one, args=j) for j in jobs]
    for t in threads:
        t.start()
    join_all(threads)
    no_deadlock(errors)
    codes = sorted(r for sid, r in out if isinstance(r, str))
    assert codes == ["duplicate_payment"] * 3 + ["proof_owner_conflict"] * 3, out
    replays = [r for sid, r in out if not isinstance(r, str)]
    assert [(v["id"], c) for v, c in replays] == [(view["id"], False)] * 3
    assert count(engine, Proof) == stored
    assert chain_ok(engine) == appends + 6
    assert (
        sorted(actions(engine)[-6:])
        == ["proof.duplicate_payment"] * 3 + ["proof.owner_conflict"] * 3
    )


def _race_one_transfer(engine, chain, tx: str) -> None:
    sessions = [open_session(engine, owner=o) for o in ("alice", "bob", "alice", "bob")]
    pay(chain, tx, sessions[0])
    chain.txs[tx]["refs"] = [s_["reference"] for s_ in sessions]
    barrier = threading.Barrier(len(sessions))
    out: list[Any] = []
    errors: list[BaseException] = []

    def one(sess: dict) -> None:
        barrier.wait(10)
        try:
            out.append(proofs.submit_proof(engine, sess["id"], tx, [sess["owner_id"]]))
        except Conflict as e:
            out.append(e.code)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=one, args=(s_,)) for s_ in sessions]
    for t in threads:
        t.start()
    join_all(threads)
    no_deadlock(errors)
    views = [v[0] for v in out if not isinstance(v, str)]
    lost = [v for v in out if isinstance(v, str)]
    # The transfer carries every session's reference, so the one that takes it holds it for
    # review (ambiguous_transfer): a holding proof all the same.
    won = [v for v in views if v["status"] == "requires_review"]
    assert len(won) == 1 and won[0]["failure_code"] == "ambiguous_transfer", out
    # The others are refused, or stored and waiting (pending, holding nothing) for the staff
    # decision of the review, which names their sessions.
    waiting = [v for v in views if v["id"] != won[0]["id"]]
    assert all(
        (v["status"], v["failure_code"]) == ("pending", "ambiguous_transfer") for v in waiting
    )
    assert set(lost) <= {"duplicate_payment", "proof_owner_conflict"}
    assert len(lost) + len(waiting) == 3, out
    with engine.db.tx() as s:
        held = set(s.scalars(select(TransferHold.proof_id).distinct()))
        holding = s.scalar(
            select(func.count())
            .select_from(Proof)
            .where(Proof.ref == tx, Proof.status.in_(HOLDING))
        )
    assert won[0]["id"] in held and holding == 1


def test_sessions_racing_for_one_transfer_one_holds_it(pg, chain):
    """Several sessions (two owners) submit one transfer that carries all their references,
    at once, for a few transfers in a row: exactly one proof holds it (for review), the
    others are refused; never a deadlock; the chain verifies."""
    for n in range(3):
        _race_one_transfer(pg, chain, f"fxac{n:06d}")
    chain_ok(pg)


# -- the session open: a client-chosen reference raced ----------------------------------------


def _open_in_process(url: str, reference: str, owner: str, barrier: Any, results: Any) -> None:
    """One process: its own engine and pool, opening a session with `reference`."""
    engine = Engine(make_settings(url), catalog=catalog_with_fake())
    try:
        barrier.wait(30)
        try:
            view = open_session(engine, owner=owner, reference=reference)
            results.put((owner, "opened", view["id"]))
        except BadInput as e:
            results.put((owner, "refused", f"{e.code}:{e.field}"))
        except BaseException as e:  # reported to the parent: any other outcome fails it
            results.put((owner, "error", f"{type(e).__name__}: {e}"))
    finally:
        engine.db.dispose()


def test_one_reference_raced_by_processes_opens_one(pg):
    """Processes (each its own pool) open sessions with one client-chosen reference at once:
    one opens it, every other is refused naming the field (never a 500, never a deadlock);
    the chain verifies and nobody is left waiting on its lock."""
    engine = pg
    url = engine.settings.database_url
    ctx = multiprocessing.get_context("spawn")
    n = 3
    barrier = ctx.Barrier(n)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_open_in_process, args=(url, "faprocrace1", f"p{i}", barrier, results))
        for i in range(n)
    ]
    for p in procs:
        p.start()
    got = []
    try:
        for _ in range(n):
            got.append(results.get(timeout=30))
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    assert sorted(kind for _, kind, _ in got) == ["opened"] + ["refused"] * (n - 1), got
    assert {d for _, kind, d in got if kind == "refused"} == {"reference_in_use:reference"}
    with engine.db.tx() as s:
        refs = list(s.scalars(select(PaymentSession.reference)))
    assert refs.count("faprocrace1") == 1
    chain_ok(engine)
    assert open_session(engine, owner="p0")["status"] == "open"


def test_one_reference_raced_over_http_with_keys_reused(client, engine):
    """Over HTTP, requests opening a session with one client-chosen reference race, some of
    them under one Idempotency-Key (same body), others under keys of their own or none.
    Exactly one session is opened; the key's requests answer it (or the same refusal); the
    others get 422 reference_in_use naming the field; never a 500. A refused key ran
    nothing and is not stored: reused with a fresh reference it opens a session."""
    body = {**FAKE_SESSION, "reference": "fahttprace1"}
    keys = ["shared", "shared", "shared", "own-1", "own-2", None]
    barrier = threading.Barrier(len(keys))
    out: list[tuple[str | None, int, dict]] = []
    errors: list[BaseException] = []

    def one(key: str | None) -> None:
        headers = {**auth(SERVICE_TOKEN), **({"Idempotency-Key": key} if key else {})}
        barrier.wait(10)
        try:
            r = client.post("/v1/payment-sessions", headers=headers, json=body)
            out.append((key, r.status_code, r.json()))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=one, args=(k,)) for k in keys]
    for t in threads:
        t.start()
    join_all(threads)
    assert not errors, errors
    assert all(code in (201, 422) for _, code, _ in out), out
    opened = {b["id"] for _, code, b in out if code == 201}
    assert len(opened) == 1, out
    for _, code, b in out:
        if code == 422:
            assert (b["error"]["code"], b["error"].get("field")) == (
                "reference_in_use",
                "reference",
            ), b
    shared = [(code, b) for k, code, b in out if k == "shared"]
    # One key, one answer: all opened the same session, or all were refused.
    assert len({code for code, _ in shared}) == 1, shared
    if shared[0][0] == 201:
        assert {b["id"] for _, b in shared} == opened
    with engine.db.tx() as s:
        refs = list(s.scalars(select(PaymentSession.reference)))
        assert refs.count("fahttprace1") == 1
        report = audit.verify_chain(s)
    assert report.ok, report.message
    # A key that was refused stored nothing: with a fresh reference it opens a session.
    refused_key = next((k for k, code, _ in out if k and code == 422), None)
    if refused_key is not None:
        r = client.post(
            "/v1/payment-sessions",
            headers={**auth(SERVICE_TOKEN), "Idempotency-Key": refused_key},
            json={**body, "reference": "fahttprace2"},
        )
        assert r.status_code == 201, r.text


def test_a_replay_reads_its_answer_without_the_chains_lock(pg, chain, monkeypatch):
    """A resubmission's insert finds the proof stored, in the transaction that took the
    chain's lock with it: that transaction rolls back, and the stored proof is read in one of
    its own, so a burst of client retries never holds every tenant's appends."""
    from verifier.storage.repo import proofs as proof_repo

    engine = pg
    sess = open_session(engine)
    pay(chain, "fxab000009", sess)
    first, created = proofs.submit_proof(engine, sess["id"], "fxab000009", ["alice"])
    assert created and first["status"] == "verified"
    seen: list[list[int]] = []
    real = proof_repo.by_fingerprint

    def looking(s, fp, session_id):
        seen.append(_advisory_holders(engine.settings.database_url))
        return real(s, fp, session_id)

    monkeypatch.setattr(proof_repo, "by_fingerprint", looking)
    again, created = proofs.submit_proof(engine, sess["id"], "fxab000009", ["alice"])
    assert (again["id"], again["status"], created) == (first["id"], "verified", False)
    assert seen == [[]]  # looked up once, with no advisory lock held by anyone
    assert count(engine, Proof) == 1
    chain_ok(engine)
