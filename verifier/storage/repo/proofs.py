"""Proofs (storage.models Proof): submission rows, their status as attempts record it, and
the worker's queue."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Select, and_, bindparam, exists, false, func, or_, select, text
from sqlalchemy import update as sql_update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, aliased
from sqlalchemy.orm.attributes import set_committed_value

from verifier.storage.db import is_busy
from verifier.storage.models import (
    PaymentSession,
    Proof,
    ProofStatus,
    Receipt,
    SessionStatus,
    SettlementEvidence,
    VerificationAttempt,
)
from verifier.storage.repo import rows
from verifier.storage.repo.prepared import Prepared, send_deferred
from verifier.storage.repo.rows import Record

_P = rows.table(Proof)
_VA = VerificationAttempt
# Built and prepared once (storage.repo.prepared): the submission's own statements.
_INSERT = rows.Unique(_P)
_BY_ID = sql_update(_P).where(_P.c.id == bindparam("pid"))
_UPDATE = Prepared(_BY_ID)
_UPDATE_UNATTEMPTED = Prepared(_BY_ID.where(_P.c.attempts == 0))


def insert_proof_behind(s: Session, row: dict[str, Any]) -> Callable[[], Record]:
    """Write a new proof (Core insert, client-side id: nothing in this transaction reads the
    row back), run behind the transaction's next statement, in its round trip
    (prepared.Prepared.behind). Call the answer for it as a record; the fingerprint's unique
    indexes answer "seen before?": a conflict raises IntegrityError there and leaves the
    transaction usable."""
    written = _INSERT.behind(s.connection(), row)

    def record() -> Record:
        written()
        return Record(row)

    return record


def by_fingerprint(s: Session, fingerprint: str, session_id: str) -> Proof | None:
    return s.scalar(
        select(Proof).where(Proof.fingerprint == fingerprint, Proof.session_id == session_id)
    )


def pending_claims(
    s: Session, fingerprint: str, proof_id: str, failing: tuple[str, str]
) -> list[str]:
    """The sessions of other pending proofs of the same fingerprint (any owner) that were
    checked at least once: one stored but not checked yet has passed nothing; nor has one
    that failed a check and waits only for its block to be final. That one is known by its
    latest attempt (a superseded one decided nothing): pending with `failing`'s code, its
    observed evidence naming the failure under `failing`'s key (never by its detail, which
    the RPC quorum and the stage rules add to)."""
    code, key = failing
    later = aliased(VerificationAttempt)
    latest = (
        select(func.max(later.id))
        .where(later.proof_id == Proof.id, later.observed["superseded"].as_string().is_(None))
        .correlate(Proof)
        .scalar_subquery()
    )
    waiting = exists().where(
        _VA.proof_id == Proof.id,
        _VA.id == latest,
        _VA.status == ProofStatus.pending.value,
        _VA.failure_code == code,
        _VA.observed[key].as_string().is_not(None),
    )
    return list(
        s.scalars(
            select(Proof.session_id)
            .where(
                Proof.fingerprint == fingerprint,
                Proof.id != proof_id,
                Proof.status == ProofStatus.pending,
                Proof.attempts > 0,
                ~and_(Proof.failure_code == code, waiting),
            )
            .order_by(Proof.created_at)
        )
    )


def get(s: Session, proof_id: str, lock: bool = False) -> Proof | None:
    """The proof as a session object; `lock`: under its row lock (FOR UPDATE on PostgreSQL;
    SQLite's BEGIN IMMEDIATE already holds the write lock)."""
    if lock:
        return rows.get_locked(s, Proof, proof_id)
    return rows.get(s, Proof, proof_id)


def lock_many(s: Session, proof_ids: Sequence[str]) -> list[Proof]:
    """The proofs as session objects under their row locks (FOR UPDATE on PostgreSQL, taken
    in id order so two lockers of overlapping sets cannot deadlock; SQLite's write lock is
    held already)."""
    q = select(Proof).where(rows.among(s, Proof.id, proof_ids)).order_by(Proof.id)
    if rows.is_postgres(s):
        q = q.with_for_update()
    return list(s.scalars(q).all())


def finality_targets(s: Session, proof_ids: Sequence[str]) -> list[Record]:
    """Per proof (in id order): id, rail_id, ref, and its session's network, asset,
    recipient, amount and payer, as plain records read in one query."""
    q = (
        select(
            Proof.id,
            Proof.rail_id,
            Proof.ref,
            PaymentSession.network,
            PaymentSession.asset,
            PaymentSession.recipient,
            PaymentSession.amount,
            PaymentSession.payer,
        )
        .join(PaymentSession, PaymentSession.id == Proof.session_id)
        .where(rows.among(s, Proof.id, proof_ids))
        .order_by(Proof.id)
    )
    return [Record(r._mapping) for r in s.execute(q).all()]


class SweepTarget(NamedTuple):
    """What the pending re-check needs of a claimed proof before asking its node: its
    session's network, rail and token (the rail it resolves to), its owner and due time."""

    network: str
    owner: str
    due: datetime | None
    rail_id: str
    asset: str


def sweep_targets(s: Session, proof_ids: Sequence[str]) -> dict[str, SweepTarget]:
    """Each proof's SweepTarget, in one query, without locking the rows."""
    q = (
        select(
            Proof.id,
            PaymentSession.network,
            Proof.owner_id,
            Proof.next_check_at,
            PaymentSession.rail_id,
            PaymentSession.asset,
        )
        .join(PaymentSession, PaymentSession.id == Proof.session_id)
        .where(rows.among(s, Proof.id, proof_ids))
    )
    return {
        pid: SweepTarget(network, owner, due, rail_id, asset)
        for pid, network, owner, due, rail_id, asset in s.execute(q).all()
    }


def release_claims(
    s: Session,
    proof_ids: Sequence[str],
    claimed_by: str,
    due: Mapping[str, datetime] | None = None,
) -> None:
    """Give back claims not worked on: the proofs keep their `next_check_at` (still due, so
    the next sweep takes them first), but for those `due` moves (earlier: ahead of the
    others in the next sweep's turns). A claim that is no longer `claimed_by`'s (its lease
    ran out and another worker took the proof) is left alone."""
    moved = dict(due or {})
    kept = [pid for pid in proof_ids if pid not in moved]
    if len(proof_ids) > 1 and rows.is_postgres(s):
        # Their rows locked in id order first, as a credit locks a session's proofs: the
        # updates below would otherwise take them in another order (one multi-row UPDATE
        # locks rows in the order it finds them), and deadlock with that credit.
        s.execute(
            select(_P.c.id)
            .where(rows.among(s, _P.c.id, list(proof_ids)))
            .order_by(_P.c.id)
            .with_for_update()
        )
    if kept:
        s.execute(
            sql_update(_P)
            .where(rows.among(s, _P.c.id, kept), _P.c.claimed_by == claimed_by)
            .values(claimed_by=None, claimed_until=None)
        )
    if moved:
        s.connection().execute(
            sql_update(_P)
            .where(_P.c.id == bindparam("pid_"), _P.c.claimed_by == claimed_by)
            .values(claimed_by=None, claimed_until=None, next_check_at=bindparam("due_")),
            [{"pid_": pid, "due_": at} for pid, at in moved.items()],
        )


def locks_rows(s: Session) -> bool:
    """Whether proof rows are locked one by one (PostgreSQL, FOR UPDATE) rather than by the
    database's one writer lock (SQLite, from BEGIN IMMEDIATE). Where they are, a caller
    holding a proof written in an earlier transaction locks its row (`for_attempt`) before
    inserting its transfer holds: the order every other writer of the proof takes."""
    return rows.is_postgres(s)


def for_attempt(s: Session, proof_id: str) -> Proof | Record | None:
    """The proof row to record an attempt on: locked on PostgreSQL (a session object); on
    SQLite, whose write lock is already held, it may come back as a plain record. Either way
    it is written back with `update`, never through the unit of work."""
    if rows.is_postgres(s):
        if (Proof, (proof_id,), None) in s.identity_map:
            return s.get(Proof, proof_id, with_for_update=True)
        # A plain record of the locked row: no ORM instance is built for it.
        row = _FOR_ATTEMPT.first(s.connection(), {"pk": proof_id})
        return None if row is None else Record(zip(_FOR_ATTEMPT.keys(), row, strict=True))
    return rows.read(s, Proof, proof_id)


_FOR_ATTEMPT = Prepared(select(*_P.columns).where(_P.c.id == bindparam("pk")).with_for_update())


def update_unattempted(s: Session, p: Record, values: dict[str, Any]) -> bool:
    """The first attempt's UPDATE of a proof still without attempts; False (nothing written)
    when another attempt got there first. `p` is a plain record, kept in step."""
    if _UPDATE_UNATTEMPTED.execute(s.connection(), {"pid": p.id, **values}) != 1:
        return False
    p.__dict__.update(values)
    return True


def update(s: Session, p: Proof | Record, values: dict[str, Any]) -> None:
    """One Core UPDATE of the proof row, and the same values set on `p` as its committed
    state: the object stays in step with the row without the unit of work's change tracking
    (and its flush) on the hot path.

    The caller holds the row's lock (`for_attempt`) and reads nothing back, so the UPDATE is
    deferred (storage.repo.prepared): on PostgreSQL it goes with the transaction's next
    statement, the attempt's insert, and anything that reads the row sends it first."""
    if isinstance(p, Record):
        # Not in the session: nothing of it is pending, and its attributes are plain ones.
        _UPDATE.defer(s.connection(), {"pid": p.id, **values})
        p.__dict__.update(values)
        return
    s.flush([p])  # anything already pending on p goes first, as a flush would order it
    _UPDATE.defer(s.connection(), {"pid": p.id, **values})
    for k, v in values.items():
        set_committed_value(p, k, v)


def update_many(s: Session, items: Sequence[tuple[Proof | Record, dict[str, Any]]]) -> None:
    """`update` for many proofs: rows that set the same columns go as one executemany (one
    pipelined batch on PostgreSQL), and each object gets its values as committed state."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for p, values in items:
        groups.setdefault(tuple(sorted(values)), []).append({"pid": p.id, **values})
    if not groups:
        return
    s.flush([p for p, _ in items if not isinstance(p, Record)])
    conn = s.connection()
    send_deferred(conn)
    for rows_ in groups.values():
        conn.execute(_BY_ID, rows_)
    for p, values in items:
        if isinstance(p, Record):
            p.__dict__.update(values)
        else:
            for k, v in values.items():
                set_committed_value(p, k, v)


def rail_id_of(s: Session, proof_id: str) -> str | None:
    """The proof's rail, read without locking the row."""
    return s.scalar(select(Proof.rail_id).where(Proof.id == proof_id))


def rail_ids_of(s: Session, proof_ids: Sequence[str]) -> dict[str, str]:
    """Each proof's rail, in one query, without locking the rows."""
    q = select(Proof.id, Proof.rail_id).where(rows.among(s, Proof.id, proof_ids))
    return {pid: rail_id for pid, rail_id in s.execute(q).all()}


def unapplied_siblings(s: Session, proof_ids: Sequence[str]) -> list[str]:
    """The verified and pending proofs without a receipt that share a session with one of
    `proof_ids`, not among them (a payer's second transfer for one session), in one query,
    without locking the rows. Pending ones too: an attempt recording one verified may have
    read its session open already and not yet committed, and a credit that locks it waits
    for that commit and sees it verified."""
    ids = list(proof_ids)
    if not ids:
        return []
    given = _P.alias("given")
    # A session paid already is credited by none of them: its proofs need no lock (however
    # many a tenant keeps pending on it), and a re-apply of its credited proof takes none.
    sessions = (
        select(given.c.session_id)
        .join(PaymentSession, PaymentSession.id == given.c.session_id)
        .where(rows.among(s, given.c.id, ids), PaymentSession.status != SessionStatus.paid)
    )
    q = select(Proof.id).where(
        Proof.session_id.in_(sessions),
        Proof.status.in_((ProofStatus.verified, ProofStatus.pending)),
        Proof.applied_at.is_(None),
        ~exists().where(Receipt.proof_id == Proof.id),
        ~rows.among(s, Proof.id, ids),
    )
    return list(s.scalars(q).all())


# How long a credit waits for a late sibling's row another transaction holds: a finality
# sweep or a claim holds one for milliseconds (the credit reads its late siblings before it
# takes the audit chain's lock, which a finality sweep then waits on); the proof's own
# attempt holds it until the credit commits (it waits for the session's lock), so the wait
# ends well before PostgreSQL would look for a deadlock (deadlock_timeout, 1 s by default).
LATE_SIBLING_WAIT_MS = 250


def late_siblings(s: Session, proof_ids: Sequence[str], known: Sequence[str]) -> list[Proof]:
    """The verified proofs without a receipt that share a session with one of `proof_ids`,
    neither among them nor `known`: read again once the sessions are locked, for a second
    transfer stored after `unapplied_siblings` ran and verified since. Locked (PostgreSQL):
    a row another transaction holds is waited for up to LATE_SIBLING_WAIT_MS, then left out.
    What holds one longer is the proof's own attempt, which reads its session under a share
    lock after this credit commits, finds it paid and says so itself."""
    ids = list(proof_ids)
    if not ids:
        return []
    given = _P.alias("given")
    sessions = select(given.c.session_id).where(rows.among(s, given.c.id, ids))
    where = (
        Proof.session_id.in_(sessions),
        Proof.status == ProofStatus.verified,
        Proof.applied_at.is_(None),
        ~exists().where(Receipt.proof_id == Proof.id),
        ~rows.among(s, Proof.id, [*ids, *known]),
    )
    if not rows.is_postgres(s):
        return list(s.scalars(select(Proof).where(*where).order_by(Proof.id)).all())
    found = list(s.scalars(select(Proof.id).where(*where).order_by(Proof.id)).all())
    if not found:
        return []
    got = list(
        s.scalars(
            select(Proof)
            .where(rows.among(s, Proof.id, found))
            .order_by(Proof.id)
            .with_for_update(skip_locked=True)
        ).all()
    )
    rest = sorted(set(found) - {p.id for p in got})
    if rest:
        try:
            with s.begin_nested():  # a lock timeout undoes only this, and the SET with it
                restore = s.scalar(text("SELECT current_setting('lock_timeout')"))
                s.execute(text(f"SET LOCAL lock_timeout = {LATE_SIBLING_WAIT_MS}"))
                got += s.scalars(
                    select(Proof)
                    .where(rows.among(s, Proof.id, rest))
                    .order_by(Proof.id)
                    .with_for_update()
                ).all()
                s.execute(text("SELECT set_config('lock_timeout', :v, true)"), {"v": restore})
        except OperationalError as e:
            if not is_busy(e):
                raise
    return sorted(got, key=lambda p: p.id)


def recent(s: Session, rail_id: str | None, status: str | None, limit: int) -> list[Proof]:
    q = select(Proof).order_by(Proof.created_at.desc(), Proof.id).limit(limit)
    if rail_id:
        q = q.where(Proof.rail_id == rail_id)
    if status:
        q = q.where(Proof.status == status)
    return list(s.scalars(q).all())


def count(s: Session) -> int:
    return s.scalar(select(func.count()).select_from(Proof)) or 0


# How many candidates a fair claim takes per proof it claims (see claim_due).
_CLAIM_SLACK = 4


def claim_due(
    s: Session,
    status: ProofStatus,
    due: datetime,
    lease_free_at: datetime,
    limit: int,
    claimed_by: str,
    claimed_until: datetime,
) -> list[str]:
    """Claim proofs in `status` due by `due` whose lease (if any) ended before `lease_free_at`,
    owner by owner and earliest due first (see below): their ids, now leased to `claimed_by`
    until `claimed_until`. On PostgreSQL the rows are locked FOR UPDATE SKIP LOCKED, so
    several workers share the queue and never take the same proof; SQLite serializes writers.
    Core statements: a batch of hundreds is one SELECT and one UPDATE, with no ORM objects."""
    where = (
        _P.c.status == status,
        _P.c.next_check_at.is_not(None),
        _P.c.next_check_at <= due,
        or_(_P.c.claimed_until.is_(None), _P.c.claimed_until < lease_free_at),
    )
    # SECURITY: proofs are taken owner by owner: every owner's earliest due proof, then
    # every owner's second, and so on. Any tenant can keep proofs pending (a signature the
    # chain does not know is re-checked until its session is over) or verified and
    # waiting for a settlement (an x402 authorization, signed offline by a key with no
    # funds, valid for as long as it says), and in due order one tenant's thousands would
    # be ahead of every other tenant's payment, or its finality.
    # The window reads every due row: a sweep's chain calls cost far more.
    turn = (
        func.row_number()
        .over(partition_by=_P.c.owner_id, order_by=(_P.c.next_check_at, _P.c.id))
        .label("turn")
    )
    due_rows = select(_P.c.id, _P.c.next_check_at, turn).where(*where).subquery()
    # Candidates beyond the batch: rows another worker has locked (claiming them right
    # now) are skipped after this order is taken, and must not leave the batch short.
    fair = (
        select(due_rows)
        .order_by(due_rows.c.turn, due_rows.c.next_check_at)
        .limit(limit * _CLAIM_SLACK)
        .subquery()
    )
    # The conditions again on the locked rows themselves: a row another worker claimed
    # and committed after this statement's snapshot is not skipped as locked, and
    # PostgreSQL re-checks its new version against these (not the subquery's).
    q = (
        select(_P.c.id)
        .join(fair, fair.c.id == _P.c.id)
        .where(*where)
        .order_by(fair.c.turn, fair.c.next_check_at)
        .limit(limit)
    )
    if rows.is_postgres(s):
        q = q.with_for_update(skip_locked=True, of=_P)
    ids = list(s.scalars(q).all())
    if ids:
        s.execute(
            sql_update(_P)
            .where(rows.among(s, _P.c.id, ids))
            .values(claimed_by=claimed_by, claimed_until=claimed_until)
        )
    return ids


def final_unapplied(
    s: Session,
    rail_ids: Sequence[str],
    limit: int,
    leave_out: Collection[str] = (),
    networks: Mapping[str, tuple[str, str]] | None = None,
) -> list[str]:
    """Verified proofs on the given rails whose latest settlement is final and whose session
    has no receipt yet, oldest first, but for those of `leave_out` (left out before the
    limit: they never take a place in the batch). `networks`: each rail's current (network,
    asset); a proof whose session was opened on another is left out the same way. Read from
    the partial index of verified proofs not applied, each one's latest evidence by its own
    index: the cost follows the proofs waiting, not the proofs stored."""
    return list(s.scalars(final_unapplied_query(rail_ids, limit, leave_out, networks)).all())


def final_unapplied_query(
    rail_ids: Sequence[str],
    limit: int,
    leave_out: Collection[str] = (),
    networks: Mapping[str, tuple[str, str]] | None = None,
) -> Select[str]:
    se = SettlementEvidence
    latest_final = (
        select(se.is_final)
        .where(se.proof_id == Proof.id)
        .order_by(se.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    q = (
        select(Proof.id)
        .where(
            Proof.status == ProofStatus.verified,
            Proof.applied_at.is_(None),  # the partial index's predicate (UNAPPLIED_SQL)
            Proof.rail_id.in_(list(rail_ids)),
            latest_final.is_(True),
            # A session pays once: a proof whose session is paid (by it, which applied_at
            # already says, or by another proof: a second transfer for one order) can never
            # be applied. Left in, such proofs would come first in every sweep and, once a
            # batch's worth had gathered, stop the sweep from reaching any other proof.
            # Staff see them (`railproof assurance`: verified_without_receipt).
            ~exists().where(Receipt.session_id == Proof.session_id),
        )
        .order_by(Proof.created_at)
        .limit(limit)
    )
    if networks is not None:
        # The gate never applies a proof whose session is on another network or token than
        # its rail's now (rail_network_current: a test network's backlog after a switch, a
        # network retired from the catalog); being older, such proofs would fill every batch.
        ps = PaymentSession
        on = [
            and_(
                ps.rail_id == rail_id,
                ps.network == network,
                # As the gate compares them: a hex address in any case, anything else exactly.
                func.lower(ps.asset) == asset.lower()
                if asset[:2].lower() == "0x"
                else ps.asset == asset,
            )
            for rail_id, (network, asset) in networks.items()
        ]
        q = q.where(exists().where(ps.id == Proof.session_id, or_(*on) if on else false()))
    if leave_out:
        q = q.where(Proof.id.not_in(sorted(leave_out)))
    return q
