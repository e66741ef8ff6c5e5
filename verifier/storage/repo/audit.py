"""The audit chain's rows (storage.models AuditEvent) and the lock that serializes appends.
The hashing and the rules are verifier.services.audit's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import BigInteger, bindparam, event, func, insert, select
from sqlalchemy.orm import Session, SessionTransaction

from verifier.storage.models import AuditEvent
from verifier.storage.repo import rows
from verifier.storage.repo.prepared import Prepared, fetch_together, send_waiting

# One PostgreSQL advisory lock serializes appends to the chain (and outbox sequence numbers,
# storage.repo.outbox): one lock for both means no lock-order deadlock between them.
CHAIN_LOCK_KEY = 0x7261696C
_LOCK = Prepared(select(func.pg_advisory_xact_lock(bindparam("k", type_=BigInteger))))
_LOCKED = "railproof.chain_locked"  # in Session.info: the transaction that holds the lock
# In Session.info: reads asked to go in the round trip that takes the lock (`read_with_lock`).
_WITH_LOCK = "railproof.read_with_chain_lock"
# In Session.info: (transaction, the lock, the head) sent behind its next statement
# (`lock_behind`), not read yet.
_LOCK_SENT = "railproof.chain_lock_sent"
# Built and prepared once (storage.repo.prepared): every append runs the same statements.
_INSERT = Prepared(insert(rows.table(AuditEvent)))
_HEAD = Prepared(select(AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1))


def lock_chain(s: Session) -> None:
    """Hold the chain's lock to the end of the transaction: the advisory lock on PostgreSQL;
    on SQLite the write lock BEGIN IMMEDIATE took already keeps every other appender out.

    Taken once per transaction (the audit append and the outbox both ask for it): a repeat
    in the same transaction, or savepoint, is answered without a round trip. A lock taken
    inside a savepoint is not trusted outside it (rolling the savepoint back releases it)."""
    s.info.pop(_WITH_LOCK, None)  # their callers read as usual
    if not rows.is_postgres(s):
        return
    tx = s.get_nested_transaction() or s.get_transaction()
    if tx is not None and s.info.get(_LOCKED) is tx:
        return
    if _sent_head(s, tx)[0]:
        return
    send_waiting(s.connection())  # SECURITY: nothing rides behind the lock (`lock_and_head`)
    _LOCK.scalar(s.connection(), {"k": CHAIN_LOCK_KEY})
    s.info[_LOCKED] = tx


def head_hash(s: Session) -> str | None:
    """The newest event's hash (None: an empty chain). Read it under `lock_chain`."""
    h = _HEAD.scalar(s.connection())
    return None if h is None else str(h)


def read_with_lock(
    s: Session, stmt: Prepared, keep: Callable[[list[tuple[Any, ...]]], None]
) -> None:
    """Ask for `stmt` (a read of something the chain's lock guards) to go in the round trip
    that takes the lock in this transaction (`lock_and_head`), once the lock is granted, and
    its rows to be handed to `keep`. Should the lock be taken otherwise, or be held already,
    `keep` is never called: the caller reads as usual."""
    s.info.setdefault(_WITH_LOCK, []).append((stmt, keep))


def lock_behind(s: Session) -> None:
    """Take the chain's lock, and read its head, right behind the transaction's next
    statement, in its round trip (prepared.Prepared.behind), for a transaction that appends
    once that statement is answered: `lock_and_head` then answers from that round trip.

    The lock goes last in it (`last`: nothing rides behind it), after every statement sent
    before or with that one, so whatever those wait for is waited for before the lock is
    held, as when the lock went in a round trip of its own after them. Elsewhere than on
    PostgreSQL, or where nothing can wait on the connection, nothing is sent: `lock_and_head`
    takes the lock as usual. Ask for it right before the statement meant to carry it: a write
    deferred in between sends what waits at once, the lock ahead of that statement."""
    if not rows.is_postgres(s) or s.in_nested_transaction():
        return
    tx = s.get_transaction()
    if tx is None or s.info.get(_LOCKED) is tx or _LOCK_SENT in s.info:
        return
    conn = s.connection()
    lock = _LOCK.behind(conn, {"k": CHAIN_LOCK_KEY})
    head = _HEAD.behind(conn, {}, last=True)
    if lock.queued and head.queued:
        s.info[_LOCK_SENT] = (tx, lock, head)
    # Otherwise nothing was sent and both would run only when read: they are not.


def _sent_head(s: Session, tx: object) -> tuple[bool, str | None]:
    """(True, the head) when `lock_behind` sent the lock in this transaction (it is then
    held), (False, None) otherwise."""
    sent = s.info.get(_LOCK_SENT)
    if sent is None or sent[0] is not tx:
        return False, None
    del s.info[_LOCK_SENT]
    _, lock, head = sent
    lock.rows()  # sends them now if their round trip has not gone yet
    got = head.rows()
    s.info[_LOCKED] = tx
    return True, None if not got or got[0][0] is None else str(got[0][0])


def lock_and_head(s: Session) -> str | None:
    """`lock_chain` then `head_hash`; on PostgreSQL both in one round trip when the lock is
    not held yet (the head is read by a statement that starts once the lock is granted), with
    the reads `read_with_lock` asked for — or none, when `lock_behind` sent them."""
    tx = s.get_nested_transaction() or s.get_transaction()
    if not rows.is_postgres(s) or (tx is not None and s.info.get(_LOCKED) is tx):
        lock_chain(s)
        return head_hash(s)
    sent, sent_head = _sent_head(s, tx)
    if sent:
        s.info.pop(_WITH_LOCK, None)  # their callers read as usual
        return sent_head
    # SECURITY: a statement waiting behind the next one (an Idempotency-Key's claim, when a
    # refusal's own transaction is the first to carry it) goes first, alone: behind the lock
    # it would wait for another request's claim while holding the lock that request needs,
    # and every append of every tenant would wait on both.
    send_waiting(s.connection())
    also = s.info.pop(_WITH_LOCK, [])
    _, head, *more = fetch_together(
        s.connection(),
        [(_LOCK, {"k": CHAIN_LOCK_KEY}), (_HEAD, {}), *((stmt, {}) for stmt, _ in also)],
    )
    s.info[_LOCKED] = tx
    for (_, keep), got in zip(also, more, strict=True):
        keep(got)
    return None if not head or head[0][0] is None else str(head[0][0])


@event.listens_for(Session, "after_transaction_end")
def _forget_reads(session: Session, transaction: SessionTransaction) -> None:
    # A read asked for in a transaction (or savepoint) that ended without taking the lock.
    session.info.pop(_WITH_LOCK, None)
    # The head `lock_behind` read, at the end of its transaction, or of any savepoint after
    # it: what a savepoint appended and released is past that head.
    sent = session.info.get(_LOCK_SENT)
    if sent is not None and (sent[0] is transaction or transaction.nested):
        del session.info[_LOCK_SENT]


def insert_event(s: Session, row: dict[str, Any]) -> None:
    """Write one event (write-only here: sent with the transaction's next statement or its
    commit, storage.repo.prepared)."""
    _INSERT.defer(s.connection(), row)


def events_after(s: Session, last_id: int | None, limit: int) -> list[AuditEvent]:
    """The events after `last_id` in id order; None: from the lowest id, whatever it is (a row
    inserted with id 0 or below is the chain's first, checked as every other)."""
    q = select(AuditEvent)
    if last_id is not None:
        q = q.where(AuditEvent.id > last_id)
    return list(s.scalars(q.order_by(AuditEvent.id).limit(limit)).all())


def newest_event(s: Session) -> AuditEvent | None:
    return s.scalars(select(AuditEvent).order_by(AuditEvent.id.desc()).limit(1)).first()


def hash_of(s: Session, event_id: int) -> str | None:
    return s.scalar(select(AuditEvent.hash).where(AuditEvent.id == event_id))


def count_through(s: Session, event_id: int) -> int:
    """Events with an id up to and including `event_id`."""
    return (
        s.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.id <= event_id)) or 0
    )
