"""Statements sent behind the transaction's next one (storage.repo.prepared
`Prepared.behind`): they run right after it, in its round trip on PostgreSQL (elsewhere when
read), and a write sent that way is never committed unread. The submission sends its hold read
and its proof's insert behind the rail's state, and its holds behind the proof's lock: a
refusal after them still stores nothing."""

from __future__ import annotations

import pytest
from sqlalchemy import bindparam, select, update
from sqlalchemy.exc import IntegrityError, InvalidRequestError

from tests.test_engine_proofs import count, open_session, pay
from verifier.core.errors import Conflict, Refused
from verifier.services import audit, proofs, rails_admin
from verifier.storage.models import (
    PaymentSession,
    Proof,
    SettlementEvidence,
    TransferHold,
    VerificationAttempt,
)
from verifier.storage.repo import prepared
from verifier.storage.repo.prepared import Prepared

_T = PaymentSession.__table__
_STATUS = Prepared(select(_T.c.status).where(_T.c.id == bindparam("pk")))
_SET_STATUS = Prepared(update(_T).where(_T.c.id == bindparam("pk")))


def status(engine, session_id: str) -> str:
    with engine.db.tx() as s:
        return s.scalar(select(PaymentSession.status).where(PaymentSession.id == session_id))


@pytest.fixture
def round_trips(monkeypatch):
    """How many pipelines reached the server (one `_sync` each)."""
    seen = []
    real = prepared._sync
    monkeypatch.setattr(prepared, "_sync", lambda pg: (seen.append(1), real(pg))[1])
    return seen


def test_a_read_sent_behind_sees_what_the_next_statement_wrote(engine, round_trips):
    sess = open_session(engine)
    postgres = engine.db.postgres
    with pytest.raises(RuntimeError, match="roll back"), engine.db.tx() as s:
        conn = s.connection()
        _STATUS.first(conn, {"pk": sess["id"]})  # the transaction under way
        before = len(round_trips)
        later = _STATUS.behind(conn, {"pk": sess["id"]})
        assert _SET_STATUS.execute(conn, {"pk": sess["id"], "status": "expired"}) == 1
        assert later.rows() == [("expired",)]
        # On PostgreSQL the read rode with the UPDATE: one round trip for both.
        assert len(round_trips) - before == (1 if postgres else 0)
        raise RuntimeError("roll back")
    assert status(engine, sess["id"]) == "open"


def test_a_write_sent_behind_that_nobody_read_is_never_committed(engine):
    sess = open_session(engine)
    other = open_session(engine)
    # Sent with the next statement, then not read: PostgreSQL refuses the COMMIT (it ran);
    # elsewhere it never ran.
    with engine.db.tx() as s:
        conn = s.connection()
        _SET_STATUS.behind(conn, {"pk": sess["id"], "status": "expired"})
        if engine.db.postgres:
            _STATUS.first(conn, {"pk": other["id"]})
            with pytest.raises(InvalidRequestError, match="never read"):
                prepared.commit_deferred(conn)
            s.rollback()
    assert status(engine, sess["id"]) == "open"
    # Not even sent before the commit: refused the same way.
    with pytest.raises(InvalidRequestError, match="never read") if engine.db.postgres else _no():
        with engine.db.tx() as s:
            _SET_STATUS.behind(s.connection(), {"pk": sess["id"], "status": "expired"})
    assert status(engine, sess["id"]) == "open"
    # Read, it commits as any write does.
    with engine.db.tx() as s:
        later = _SET_STATUS.behind(s.connection(), {"pk": sess["id"], "status": "expired"})
        assert later.rowcount() == 1
    assert status(engine, sess["id"]) == "expired"


class _no:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_a_statement_behind_one_that_failed_never_answers(pg_only_engine):
    engine = pg_only_engine
    sess = open_session(engine)
    other = open_session(engine)
    with pytest.raises(IntegrityError), engine.db.tx() as s:
        conn = s.connection()
        later = _STATUS.behind(conn, {"pk": other["id"]})
        try:
            # The reference is unique: the UPDATE fails, and what rode behind it never ran.
            _SET_STATUS.execute(conn, {"pk": sess["id"], "reference": other["reference"]})
        finally:
            with pytest.raises(InvalidRequestError, match="did not run"):
                later.rows()


@pytest.fixture
def pg_only_engine(engine):
    if not engine.db.postgres:
        pytest.skip("the pipeline is PostgreSQL's")
    return engine


def test_a_submission_to_a_paused_rail_or_a_held_transfer_stores_no_proof(engine, chain):
    alice = open_session(engine)
    pay(chain, "fxbe000001", alice)
    assert proofs.submit_proof(engine, alice["id"], "fxbe000001", ["alice"])[0]["status"] == (
        "verified"
    )
    stored = count(engine, Proof)
    # Another session of the same terms submits the transfer alice's session holds: refused
    # before the chain is asked, and the proof row that was inserted with the hold read is
    # rolled back with it.
    bob = open_session(engine, owner="bob")
    with pytest.raises(Conflict):
        proofs.submit_proof(engine, bob["id"], "fxbe000001", ["bob"])
    assert count(engine, Proof) == stored
    # A paused rail: refused, nothing stored.
    pay(chain, "fxbe000002", bob)
    op = audit.Operator("ops1", "INC-7", "drill")
    rails_admin.set_paused(engine, "fake_live", True, op)
    with pytest.raises(Refused):
        proofs.submit_proof(engine, bob["id"], "fxbe000002", ["bob"])
    assert count(engine, Proof) == stored
    rails_admin.set_paused(engine, "fake_live", False, op)
    view, created = proofs.submit_proof(engine, bob["id"], "fxbe000002", ["bob"])
    assert (view["status"], created) == ("verified", True)
    assert count(engine, Proof) == stored + 1
    with engine.db.tx() as s:
        holders = set(s.scalars(select(TransferHold.session_id)))
    assert holders == {alice["id"], bob["id"]}
    # The same transfer again to bob's session: answered as the replay it is.
    again, created = proofs.submit_proof(engine, bob["id"], "fxbe000002", ["bob"])
    assert (again["id"], created) == (view["id"], False)


def test_a_submission_costs_five_round_trips_on_postgresql(pg_only_engine, chain, round_trips):
    """After the session is open, in the process that opened it: [BEGIN + the session, the
    rail's state FOR SHARE, the treasuries, the hold read, the proof's insert, the chain's
    lock, its head], [the audit row + COMMIT]; then [BEGIN + the proof FOR UPDATE, the other open sessions its transfer
    could back, its holds' inserts, the attempt's id], [the proof's update, the attempt, the
    evidence, the chain's lock, its head, the webhook endpoints], [the audit and outbox rows +
    COMMIT]. Opening the session, which names its recipient: [BEGIN + the rail's state, the
    treasuries, the session, its entitlement, the chain's lock, its head], [the audit row +
    COMMIT]. A transfer carrying keys besides the session's reference (as every real one
    does: the payer, the token accounts) needs the other sessions read; one carrying only the
    reference does not: the same count either way. A session this process has not seen
    (opened by another API process) is read first, alone: one round trip more."""
    engine = pg_only_engine
    ids = []
    for n in range(4):  # past the first runs: the same count once statements are prepared
        before = len(round_trips)
        sess = open_session(engine)
        assert len(round_trips) - before == 2
        keys = [sess["reference"], f"fakepayer{n}"] if n % 2 else [sess["reference"]]
        pay(chain, f"fxa0{n:06d}", sess, refs=keys)
        unseen = n >= 2
        if unseen:
            engine.known_sessions.forget(sess["id"])
        before = len(round_trips)
        view, _ = proofs.submit_proof(engine, sess["id"], f"fxa0{n:06d}", ["alice"])
        assert view["status"] == "verified"
        assert len(round_trips) - before == (6 if unseen else 5)
        assert engine.known_sessions.get(sess["id"]) is not None  # seen now
        with engine.db.tx() as s:
            (attempt,) = s.scalars(
                select(VerificationAttempt).where(VerificationAttempt.proof_id == view["id"])
            )
            evidence = s.scalar(
                select(SettlementEvidence).where(SettlementEvidence.proof_id == view["id"])
            )
        # The drawn id is the attempt's, and the evidence names it.
        assert evidence is not None and evidence.attempt_id == attempt.id
        ids.append(attempt.id)
    assert ids == sorted(ids) and len(set(ids)) == 4


def test_a_transfer_another_session_could_take_is_decided_in_the_same_round_trips(
    engine, chain, round_trips
):
    """The other open sessions a verified transfer could back are read behind the proof's
    lock, in its round trip on PostgreSQL: a transfer carrying a rival session's reference is
    still held for review with both named (its holds taken as for a verified one, so the rival
    cannot take it), and costs no round trip more."""
    alice = open_session(engine)
    bob = open_session(engine, owner="bob")
    pay(chain, "fxab000001", alice, refs=[alice["reference"], bob["reference"]])
    before = len(round_trips)
    view, _ = proofs.submit_proof(engine, alice["id"], "fxab000001", ["alice"])
    assert (view["status"], view["failure_code"]) == ("requires_review", "ambiguous_transfer")
    assert len(round_trips) - before == (5 if engine.db.postgres else 0)
    with engine.db.tx() as s:
        attempt = s.scalar(
            select(VerificationAttempt).where(VerificationAttempt.proof_id == view["id"])
        )
        held = set(s.scalars(select(TransferHold.session_id)))
    assert set(attempt.observed["candidate_sessions"]) == {alice["id"], bob["id"]}
    assert held == {alice["id"]}
    with pytest.raises(Conflict):
        proofs.submit_proof(engine, bob["id"], "fxab000001", ["bob"])
    # A key besides the reference that is no other session's changes nothing.
    carol = open_session(engine, owner="carol")
    pay(chain, "fxab000002", carol, refs=[carol["reference"], "fakepayer"])
    view, _ = proofs.submit_proof(engine, carol["id"], "fxab000002", ["carol"])
    assert (view["status"], view["failure_code"]) == ("verified", None)


def test_nothing_rides_behind_the_chains_lock(pg_only_engine, round_trips):
    """A statement waiting behind the next one goes alone before the audit chain's lock: held
    to the commit, the lock must never wait on what rides behind it."""
    from verifier.storage.repo import audit as audit_repo

    engine = pg_only_engine
    sess = open_session(engine)
    with pytest.raises(RuntimeError, match="roll back"), engine.db.tx() as s:
        conn = s.connection()
        _STATUS.first(conn, {"pk": sess["id"]})
        later = _STATUS.behind(conn, {"pk": sess["id"]})
        before = len(round_trips)
        audit_repo.lock_and_head(s)
        assert len(round_trips) - before == 2  # the waiting read, then the lock and head
        assert later.rows() == [("open",)]
        raise RuntimeError("roll back")


def test_a_check_answered_before_a_failure_is_raised_first(pg_only_engine):
    """A statement sent behind with a check (an Idempotency-Key's claim) answered before a
    later one in the same round trip failed: the check's verdict is what the carrier raises,
    not the later failure (a stored answer for a key, not a refusal of its replayed work)."""
    from sqlalchemy import insert

    engine = pg_only_engine
    sess = open_session(engine)
    dup = Prepared(insert(_T))

    class Taken(Exception):
        pass

    def taken(later: prepared.Later) -> None:
        assert later.rows() == [("open",)]  # it was answered, and read in order
        raise Taken

    with engine.db.tx() as s:
        row = s.execute(select(_T).where(_T.c.id == sess["id"])).mappings().one()
    for check, raised in ((taken, Taken), (None, IntegrityError)):
        with pytest.raises(raised), engine.db.tx() as s:
            conn = s.connection()
            _STATUS.first(conn, {"pk": sess["id"]})
            _STATUS.behind(conn, {"pk": sess["id"]}, check=check)
            dup.behind(conn, dict(row))  # the same primary key: refused
            _STATUS.first(conn, {"pk": sess["id"]})  # carries both


def test_a_session_paid_to_the_treasury_reads_it_first(db_url, round_trips):
    """Without a recipient the session is paid to the rail's treasury, which comes with the
    rail's state: [BEGIN + the rail's state, the treasuries], [the session, its entitlement,
    the chain's lock, its head], [the audit row + COMMIT] on PostgreSQL."""
    from tests.conftest import make_settings
    from tests.fake_rail import catalog_with_fake
    from verifier.core.engine import Engine
    from verifier.services import sessions

    engine = Engine(
        make_settings(db_url, env={"RAILPROOF_TREASURY_FAKE_LIVE": "fatreasury2"}),
        catalog=catalog_with_fake(),
    )
    try:
        engine.ensure_rail_states()
        req = sessions.NewSession(
            owner_id="alice", rail_id="fake_live", access_product_id="pro", amount=7
        )
        for _ in range(3):
            before = len(round_trips)
            view = sessions.open_session(engine, req, actor="test")
            assert view["recipient"] == "fatreasury2"
            assert len(round_trips) - before == (3 if engine.db.postgres else 0)
    finally:
        engine.db.dispose()


def test_a_session_refused_by_a_paused_rail_stores_nothing(engine):
    """Its rows went with the rail's state, ahead of the answer that refuses it: the refusal
    rolls them back, and lifting the pause opens it."""
    from sqlalchemy import func

    from verifier.storage.models import AuditEvent, Entitlement

    def stored() -> list[int]:
        with engine.db.tx() as s:
            return [
                s.scalar(select(func.count()).select_from(m))
                for m in (PaymentSession, Entitlement, AuditEvent)
            ]

    op = audit.Operator("ops1", "INC-8", "drill")
    rails_admin.set_paused(engine, "fake_live", True, op)
    before = stored()
    with pytest.raises(Refused):
        open_session(engine)
    with pytest.raises(Refused):
        open_session(engine, reference="fapaused01")
    assert stored() == before
    rails_admin.set_paused(engine, "fake_live", False, op)
    assert open_session(engine, reference="fapaused01")["reference"] == "fapaused01"
    after = stored()
    assert after[:2] == [before[0] + 1, before[1] + 1]
    with engine.db.tx() as s:
        report = audit.verify_chain(s)
    assert report.ok, report.message


def test_nothing_rides_behind_the_chains_lock_sent_behind(pg_only_engine, round_trips):
    """The lock sent behind the next statement (`lock_behind`) goes last in that round trip:
    a statement asked to go behind after it waits for the next one."""
    from verifier.storage.repo import audit as audit_repo

    engine = pg_only_engine
    sess = open_session(engine)
    with pytest.raises(RuntimeError, match="roll back"), engine.db.tx() as s:
        conn = s.connection()
        _STATUS.first(conn, {"pk": sess["id"]})
        audit_repo.lock_behind(s)
        before = len(round_trips)
        later = _STATUS.behind(conn, {"pk": sess["id"]})
        assert len(round_trips) - before == 1  # the lock and its head went, alone
        assert later.queued and later.result is None
        head = audit_repo.lock_and_head(s)  # answered from that round trip
        assert len(round_trips) - before == 1
        assert head == audit_repo.head_hash(s) and head is not None
        _STATUS.first(conn, {"pk": sess["id"]})  # the next statement carries the read
        assert len(round_trips) - before == 3 and later.rows() == [("open",)]
        raise RuntimeError("roll back")


def test_the_lock_sent_behind_is_held_until_the_transaction_ends(pg_only_engine):
    """Once its round trip is back, the lock is held: another appender waits for the commit,
    and the chain stays one line."""
    import threading

    from verifier.storage.repo import audit as audit_repo

    engine = pg_only_engine
    sess = open_session(engine)
    appended = threading.Event()

    def other() -> None:
        open_session(engine, owner="bob")
        appended.set()

    with engine.db.tx() as s:
        conn = s.connection()
        audit_repo.lock_behind(s)
        _STATUS.first(conn, {"pk": sess["id"]})  # carries the lock
        t = threading.Thread(target=other)
        t.start()
        assert not appended.wait(0.5)  # waits on the lock this transaction holds
        audit.append(s, engine.now(), audit.Operator("test"), "probe", "payment_session", "x")
    t.join(10)
    assert appended.is_set()
    with engine.db.tx() as s:
        report = audit.verify_chain(s)
    assert report.ok, report.message


def test_one_reference_raced_by_two_sessions_opens_one(engine):
    """A client-chosen reference goes to one session only, and the other is refused naming
    the field, when both are opened at once (the insert is sent with the chain's lock on
    PostgreSQL: the refusal is raised there, before the lock is held)."""
    import threading

    from verifier.core.errors import BadInput

    barrier = threading.Barrier(4)
    out: list[object] = []

    def one(owner: str) -> None:
        barrier.wait()
        try:
            out.append(open_session(engine, owner=owner, reference="faraced01"))
        except BadInput as e:
            out.append(e)

    threads = [threading.Thread(target=one, args=(f"o{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    opened = [o for o in out if isinstance(o, dict)]
    refused = [o for o in out if isinstance(o, BadInput)]
    assert len(opened) == 1 and len(refused) == 3, out
    assert {(e.code, e.field) for e in refused} == {("reference_in_use", "reference")}
    with engine.db.tx() as s:
        refs = s.scalars(select(PaymentSession.reference))
        assert list(refs).count("faraced01") == 1
        report = audit.verify_chain(s)
    assert report.ok, report.message
    # The chain and the refused owners are not stuck: each opens a session at once.
    assert open_session(engine, owner="o1")["status"] == "open"


def test_a_savepoint_released_before_a_write_sent_behind_is_read(pg_only_engine):
    """The savepoint's release is not the transaction's COMMIT: the write is read after it."""
    engine = pg_only_engine
    sess = open_session(engine)
    with engine.db.tx() as s:
        conn = s.connection()
        _STATUS.first(conn, {"pk": sess["id"]})
        later = _SET_STATUS.behind(conn, {"pk": sess["id"], "status": "expired"})
        with s.begin_nested():
            _STATUS.first(s.connection(), {"pk": sess["id"]})
        assert later.rowcount() == 1
    assert status(engine, sess["id"]) == "expired"
