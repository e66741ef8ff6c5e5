"""An Idempotency-Key claim rides with the work's first transaction and its completion with the
work's last (storage.db `Database.carrying` and `Database.finish`, services.idempotency): no
commit of its own, and still at most one run per key. SQLite and PostgreSQL."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import event, select
from sqlalchemy.exc import IntegrityError

from tests.conftest import auth
from tests.helpers import ENDPOINT_INSERT, ENDPOINTS, FAKE_SESSION, endpoint_ids, endpoint_row
from verifier.core.errors import Conflict
from verifier.services import idempotency
from verifier.storage.models import ClaimStatus, IdempotencyClaim
from verifier.storage.repo import prepared

EP, _INSERT = ENDPOINTS, ENDPOINT_INSERT
endpoint, ids = endpoint_row, endpoint_ids


def rider(i: int):
    return lambda s: _INSERT.insert(s.connection(), endpoint(i))


def test_a_rider_commits_with_the_first_transaction_and_only_once(db):
    with db.carrying(rider(0)) as r:
        with db.tx() as s:
            _INSERT.insert(s.connection(), endpoint(1))
        assert r.committed and ids(db) == ["whe_0", "whe_1"]
        with db.tx() as s:  # it rode already: a second write would be refused
            _INSERT.insert(s.connection(), endpoint(2))
    with db.tx() as s:  # outside the block nothing rides
        _INSERT.insert(s.connection(), endpoint(3))
    assert ids(db) == ["whe_0", "whe_1", "whe_2", "whe_3"]


def test_a_rolled_back_transaction_takes_the_rider_and_the_next_one_carries_it(db):
    with db.carrying(rider(0)) as r:
        with pytest.raises(ZeroDivisionError), db.tx() as s:
            _INSERT.insert(s.connection(), endpoint(1))
            1 / 0  # noqa: B018
        assert not r.committed and ids(db) == []
        with db.tx() as s:
            pass  # a transaction that only reads carries it too
        assert r.committed and ids(db) == ["whe_0"]


def test_a_transaction_opened_inside_the_carrying_one_does_not_carry_it_again(db):
    if not db.postgres:
        pytest.skip("SQLite has one writer: a nested transaction would wait for the outer one")
    with db.carrying(rider(0)) as r:
        with db.tx():
            with db.tx() as inner:
                _INSERT.insert(inner.connection(), endpoint(1))
        assert r.committed
    assert ids(db) == ["whe_0", "whe_1"]


def test_what_the_rider_raises_stops_the_transaction_before_its_work(db):
    with db.tx() as s:
        _INSERT.insert(s.connection(), endpoint(0))
    ran = []
    with db.carrying(rider(0)) as r:
        with pytest.raises(IntegrityError), db.tx() as s:
            ran.append(True)
            _INSERT.insert(s.connection(), endpoint(1))
        assert not r.committed
    assert ran == [] and ids(db) == ["whe_0"]


def commits(engine) -> list[int]:
    n = [0]
    event.listen(engine.db.engine, "commit", lambda _c: n.__setitem__(0, n[0] + 1))
    return n


def test_a_key_costs_no_commit_of_its_own(client, engine, chain):
    # A listener also turns the repo's driver path off (storage.repo.prepared `_fast`): the
    # path a statement tracer takes works too.
    n = commits(engine)

    def post(path: str, body: dict, key: str | None = None) -> tuple[dict, int]:
        before = n[0]
        r = client.post(
            path, headers={**auth(), **({"Idempotency-Key": key} if key else {})}, json=body
        )
        assert r.status_code == 201, r.text
        return r.json(), n[0] - before

    plain, plain_commits = post("/v1/payment-sessions", FAKE_SESSION)
    keyed, keyed_commits = post("/v1/payment-sessions", FAKE_SESSION, "k-1")
    # The claim and its completion ride with the session's transaction.
    assert keyed_commits == plain_commits
    for i, sess in enumerate((plain, keyed)):
        chain.txs[f"fx0{i}0{i}0{i}0{i}0{i}"] = {
            "status": "ok",
            "to": "fatreasury",
            "amount": FAKE_SESSION["amount"],
            "asset": "fusd",
            "refs": [sess["reference"]],
        }
    proof, proof_commits = post("/v1/proofs", {"session_id": plain["id"], "proof": "fx0000000000"})
    body = {"session_id": keyed["id"], "proof": "fx0101010101"}
    keyed_proof, keyed_proof_commits = post("/v1/proofs", body, "k-2")
    assert proof["status"] == keyed_proof["status"] == "verified"
    # The claim with the proof row, its completion with the attempt.
    assert keyed_proof_commits == proof_commits
    with engine.db.tx() as s:
        for key, answer in (("k-1", keyed), ("k-2", keyed_proof)):
            (claim,) = s.scalars(select(IdempotencyClaim).where(IdempotencyClaim.key == key))
            assert claim.status == ClaimStatus.completed and claim.response == answer


def test_a_key_costs_no_round_trip_of_its_own(client, engine, chain, monkeypatch):
    """On PostgreSQL the claim rides behind the work's first statement, and its completion
    with the work's COMMIT: a keyed request makes as many round trips as a plain one."""
    if not engine.db.postgres:
        pytest.skip("round trips are PostgreSQL's")
    seen: list[int] = []
    real = prepared._sync
    monkeypatch.setattr(prepared, "_sync", lambda pg: (seen.append(1), real(pg))[1])

    def post(path: str, body: dict, key: str | None = None) -> tuple[dict, int]:
        before = len(seen)
        r = client.post(
            path, headers={**auth(), **({"Idempotency-Key": key} if key else {})}, json=body
        )
        assert r.status_code == 201, r.text
        return r.json(), len(seen) - before

    counts: dict[str, list[int]] = {"plain": [], "keyed": []}
    for n in range(3):
        for kind in ("plain", "keyed"):
            key = f"rt-s-{n}" if kind == "keyed" else None
            sess, trips = post("/v1/payment-sessions", FAKE_SESSION, key)
            tx = f"fx{n}{len(counts[kind])}{'ab'[kind == 'keyed']}" + "0" * 7
            chain.txs[tx] = {
                "status": "ok",
                "to": "fatreasury",
                "amount": FAKE_SESSION["amount"],
                "asset": "fusd",
                "refs": [sess["reference"]],
            }
            key = f"rt-p-{n}" if kind == "keyed" else None
            proof, more = post("/v1/proofs", {"session_id": sess["id"], "proof": tx}, key)
            assert proof["status"] == "verified"
            counts[kind].append(trips + more)
    # Past the first requests (statements prepared, caches warm): the same count.
    assert counts["keyed"][1:] == counts["plain"][1:]
    assert all(c > 0 for c in counts["plain"])


def _finisher(log: list[object]):
    def finish(s, result):
        log.append(result)
        return ("answer", result)

    return finish


def test_a_finish_commits_with_the_works_last_transaction_or_not_at_all(db):
    log: list[object] = []
    with db.carrying(rider(0), _finisher(log)) as r:
        with db.tx() as s:
            _INSERT.insert(s.connection(), endpoint(1))
        with pytest.raises(RuntimeError), db.tx() as s:
            db.finish(s, "first")
            raise RuntimeError("the last transaction fails after finishing")
        assert r.answer is None  # rolled back with its transaction
        with db.tx() as s:
            db.finish(s, "second")
            assert r.answer is None  # not before the commit
        assert r.answer == ("answer", "second")
    assert log == ["first", "second"]
    assert ids(db) == ["whe_0", "whe_1"]


def test_a_finish_outside_the_riders_transaction_does_nothing(db):
    log: list[object] = []
    # No rider: nothing to finish.
    with db.tx() as s:
        db.finish(s, "alone")
    # A rider without `finish` (a work that answers after its last transaction).
    with db.carrying(rider(0)) as r, db.tx() as s:
        db.finish(s, "no finisher")
    assert r.committed and r.answer is None
    # A transaction the rider is not aboard (another Database's).
    other = type(db)(db.url)
    try:
        with db.carrying(rider(1), _finisher(log)) as r:
            with other.tx() as s:
                db.finish(s, "elsewhere")
        assert r.answer is None
    finally:
        other.dispose()
    assert log == []


def test_one_run_per_key_while_the_first_is_still_working(engine):
    """The first request has committed its first transaction (the claim with it) and is
    still working; the second, and one that starts while the first is inside that
    transaction, answer in progress without running; once done, the answer is replayed."""
    inside, go_on, done = threading.Event(), threading.Event(), threading.Event()
    runs: list[str] = []

    def work(name: str, hold_tx: bool = False):
        def run():
            with engine.db.tx() as s:
                # Reached only past the claim: on PostgreSQL it rides behind the work's first
                # statement and is checked before that statement answers.
                s.execute(select(1))
                runs.append(name)
                if hold_tx:
                    inside.set()
                    go_on.wait(10)
            done.wait(10)
            return 201, {"by": name}

        return run

    results: dict[str, object] = {}

    def call(name: str, hold_tx: bool = False):
        try:
            results[name] = idempotency.run_idempotent(
                engine, "svc:x", "POST /x", "k", {"a": 1}, work(name, hold_tx)
            )
        except Conflict as e:
            results[name] = e.code

    first = threading.Thread(target=call, args=("first", True))
    first.start()
    assert inside.wait(10)
    # Starts while the first holds its claim uncommitted: waits for it, then finds it.
    second = threading.Thread(target=call, args=("second",))
    second.start()
    threading.Timer(0.3, go_on.set).start()
    second.join(15)
    assert results["second"] == "idempotency_in_progress"
    call("third")
    assert results["third"] == "idempotency_in_progress"
    done.set()
    first.join(15)
    assert results["first"] == (201, {"by": "first"})
    call("fourth")
    assert results["fourth"] == (201, {"by": "first"})
    with pytest.raises(Conflict) as e:  # the same key with another body
        idempotency.run_idempotent(engine, "svc:x", "POST /x", "k", {"a": 2}, work("fifth"))
    assert e.value.code == "idempotency_conflict"
    assert runs == ["first"]


def test_the_answer_is_made_before_the_chains_lock_is_taken(client, engine, chain, monkeypatch):
    """The audit append takes the chain's lock (PostgreSQL's advisory lock; on SQLite the head
    read under the write lock), which every other appender waits on until the transaction
    commits: a keyed session and proof make their answers before it, not while holding it."""
    from verifier.services import audit as audit_service
    from verifier.storage.db import Database

    order: list[str] = []
    lock_and_head, finish = audit_service.audit_repo.lock_and_head, Database.finish

    def locking(s):
        order.append("lock")
        return lock_and_head(s)

    def finishing(self, s, result):
        order.append("answer")
        return finish(self, s, result)

    monkeypatch.setattr(audit_service.audit_repo, "lock_and_head", locking)
    monkeypatch.setattr(Database, "finish", finishing)
    r = client.post(
        "/v1/payment-sessions", headers={**auth(), "Idempotency-Key": "k-s"}, json=FAKE_SESSION
    )
    assert r.status_code == 201, r.text
    assert order == ["answer", "lock"]
    chain.txs["fx0202020202"] = {
        "status": "ok",
        "to": "fatreasury",
        "amount": FAKE_SESSION["amount"],
        "asset": "fusd",
        "refs": [r.json()["reference"]],
    }
    order.clear()
    r = client.post(
        "/v1/proofs",
        headers={**auth(), "Idempotency-Key": "k-p"},
        json={"session_id": r.json()["id"], "proof": "fx0202020202"},
    )
    assert r.status_code == 201 and r.json()["status"] == "verified", r.text
    # The proof row's transaction (its own append), then the attempt's: answer, then lock.
    assert order == ["lock", "answer", "lock"]


def test_a_completion_asked_for_before_the_works_first_statement_follows_its_claim(engine):
    """A work whose one transaction finishes before any statement: the claim (waiting behind
    the next statement on PostgreSQL) is written before its completion, which completes it."""

    def work():
        with engine.db.tx() as s:
            engine.db.finish(s, {"ok": 1})
        return {"ok": 1}

    got = idempotency.run_idempotent(
        engine, "svc:x", "POST /x", "k-fin", {"a": 1}, work, lambda r: (201, r)
    )
    assert got == (201, {"ok": 1})
    with engine.db.tx() as s:
        claim = s.get(IdempotencyClaim, ("svc:x", "POST /x", "k-fin"))
        assert claim is not None
        assert (claim.status, claim.response) == (ClaimStatus.completed, {"ok": 1})


def test_a_refusal_and_a_submission_with_one_key_never_deadlock(engine, chain, monkeypatch):
    """A's transfer is held by another session: its first transaction rolls back and the
    refusal's own transaction carries its claim, and starts with the chain's lock. B, the same
    key and another body, holds the claim uncommitted and is about to take that lock. The
    claim must not ride behind the lock (A would hold the lock waiting on B's claim, B wait
    on the lock): A waits for B's claim without the lock and finds it taken."""
    import time
    from contextlib import contextmanager

    from tests.test_engine_proofs import open_session, pay
    from verifier.services import audit, proofs

    if not engine.db.postgres:
        pytest.skip("PostgreSQL's row and advisory locks")
    alice = open_session(engine)
    pay(chain, "fxdd000001", alice)
    assert proofs.submit_proof(engine, alice["id"], "fxdd000001", ["alice"])[0]["status"] == (
        "verified"
    )
    bob = open_session(engine, owner="bob")
    pay(chain, "fxdd000002", bob)
    b_claimed, a_going = threading.Event(), threading.Event()
    threads: dict[str, int] = {}
    real_append, real_tx = audit.append, engine.db.tx

    def append(s, now, op, action, *args, **kw):
        if threading.get_ident() == threads.get("B") and action == "proof.submitted":
            b_claimed.set()  # B holds the claim, uncommitted, and not yet the chain's lock
            a_going.wait(10)
            time.sleep(0.5)  # A's refusal transaction is waiting by now
        return real_append(s, now, op, action, *args, **kw)

    a_txs: list[int] = []

    @contextmanager
    def tx():
        if threading.get_ident() == threads.get("A"):
            a_txs.append(1)
            if len(a_txs) == 2:  # the refusal's transaction: after B has claimed the key
                b_claimed.wait(10)
                a_going.set()
        with real_tx() as s:
            yield s

    monkeypatch.setattr(audit, "append", append)
    monkeypatch.setattr(engine.db, "tx", tx)
    out: dict[str, object] = {}

    def run(name: str, signature: str) -> None:
        threads[name] = threading.get_ident()
        try:
            out[name] = idempotency.run_idempotent(
                engine,
                "svc:x",
                "POST /v1/proofs",
                "k-one",
                {"session_id": bob["id"], "proof": signature},
                lambda: proofs.submit_proof(engine, bob["id"], signature, ["bob"]),
                lambda r: (201 if r[1] else 200, r[0]),
            )
        except Exception as e:  # the outcome is what is checked
            out[name] = e

    a = threading.Thread(target=run, args=("A", "fxdd000001"))
    a.start()
    time.sleep(0.3)  # A's first transaction: claimed, then refused and rolled back
    b = threading.Thread(target=run, args=("B", "fxdd000002"))
    b.start()
    a.join(30)
    b.join(30)
    assert isinstance(out["B"], tuple) and out["B"][0] == 201, out["B"]
    # A answers as any other request with a key already taken by another body.
    assert isinstance(out["A"], Conflict), out["A"]
    assert out["A"].code == "idempotency_conflict"
