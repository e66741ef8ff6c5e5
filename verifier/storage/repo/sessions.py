"""Payment sessions (storage.models PaymentSession)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, String, bindparam, func, insert, literal, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from verifier.storage.models import PaymentSession, SessionStatus, TransferHold
from verifier.storage.repo import rows
from verifier.storage.repo.prepared import Prepared
from verifier.storage.repo.rows import Record

_INSERT = Prepared(insert(rows.table(PaymentSession)))
_REFERENCE_UNIQUE = "uq_payment_sessions_reference"


def insert_session(s: Session, row: dict[str, Any]) -> Record:
    """Write a new session (a Core insert with its client-side id: nothing in the creating
    transaction reads it back), sent with the transaction's next statement on PostgreSQL
    (a deferred write, storage.repo.prepared). A reference another session used raises
    IntegrityError (`refused_reference`) from that statement there, from here elsewhere;
    either way the transaction can only roll back."""
    _INSERT.defer(s.connection(), row)
    return Record(row)


def insert_session_behind(s: Session, row: dict[str, Any]) -> Callable[[], Record]:
    """`insert_session`, run behind the transaction's next statement, in its round trip
    (prepared.Prepared.behind): call the answer for the record. A refused reference raises
    IntegrityError from that statement on PostgreSQL, from the answer elsewhere."""
    written = _INSERT.behind(s.connection(), row)

    def record() -> Record:
        written.rowcount()  # read: a write sent behind and never read is never committed
        return Record(row)

    return record


def refused_reference(e: IntegrityError) -> bool:
    """Whether `e` is the refusal of a session whose reference another session used."""
    diag = getattr(e.orig, "diag", None)
    if diag is not None:  # PostgreSQL names the constraint
        return bool(diag.constraint_name == _REFERENCE_UNIQUE)
    return "payment_sessions.reference" in str(e.orig)  # SQLite names the column


# Sessions waiting for one payment (rail, recipient, amount) are opened one at a time under a
# PostgreSQL advisory lock of their own (two int4 keys: this namespace and the payment's hash).
_PAYMENT_LOCK_SPACE = 0x70617973
_LOCK_PAYMENT = Prepared(
    select(
        func.pg_advisory_xact_lock(
            literal(_PAYMENT_LOCK_SPACE, Integer), func.hashtext(bindparam("k", type_=String))
        )
    )
)


def open_for_same_payer(
    s: Session,
    rail_id: str,
    recipient: str,
    asset: str,
    amount: int,
    payer: str,
    now: datetime,
) -> bool:
    """Whether another open session on the rail waits for the same amount of the asset at the
    same recipient from `payer`, with no transfer backing it yet: one transfer from that payer
    could back either. A session naming no payer (x402's, where one is optional) does not
    count: it would let one tenant refuse every payer's sessions at its amounts (it is a
    candidate for any payer's transfer, and sends such a transfer to review instead). Asked
    under a lock held to the end of the transaction, so two such sessions opened at once see
    each other (SQLite's BEGIN IMMEDIATE holds every writer out already)."""
    if rows.is_postgres(s):
        _LOCK_PAYMENT.scalar(s.connection(), {"k": f"{rail_id}|{recipient}|{amount}"})
    found = s.execute(
        select(PaymentSession.id)
        .where(
            PaymentSession.rail_id == rail_id,
            PaymentSession.recipient == recipient,
            PaymentSession.amount == amount,
            PaymentSession.asset == asset,
            PaymentSession.status == SessionStatus.open.value,
            PaymentSession.expires_at >= now,
            func.lower(PaymentSession.payer) == payer.lower(),
            ~select(TransferHold.transfer_key)
            .where(TransferHold.session_id == PaymentSession.id)
            .exists(),
        )
        .limit(1)
    ).first()
    return found is not None


def get(s: Session, session_id: str, lock: bool = False) -> PaymentSession | None:
    """The session as a session object; `lock`: under its row lock (FOR UPDATE on
    PostgreSQL)."""
    if lock:
        return rows.get_locked(s, PaymentSession, session_id)
    return rows.get(s, PaymentSession, session_id)


def lock_many(s: Session, session_ids: Sequence[str]) -> list[PaymentSession]:
    """The sessions as session objects under their row locks (FOR UPDATE on PostgreSQL, taken
    in id order, as `proofs.lock_many` takes proofs'; SQLite's write lock is held already)."""
    q = select(PaymentSession).where(rows.among(s, PaymentSession.id, session_ids))
    q = q.order_by(PaymentSession.id)
    if rows.is_postgres(s):
        q = q.with_for_update()
    return list(s.scalars(q).all())


def read(s: Session, session_id: str) -> PaymentSession | Record | None:
    """The session for a caller that only reads it (storage.repo.rows.read)."""
    return rows.read(s, PaymentSession, session_id)


@dataclass(frozen=True)
class Candidate:
    id: str
    owner_id: str


def _candidates(*binding: Any) -> Any:
    return (
        select(PaymentSession.id, PaymentSession.owner_id)
        .where(
            PaymentSession.rail_id == bindparam("rail_id"),
            PaymentSession.recipient == bindparam("recipient"),
            PaymentSession.amount == bindparam("amount"),
            PaymentSession.asset == bindparam("asset"),
            PaymentSession.id != bindparam("sid"),
            PaymentSession.status == SessionStatus.open.value,
            *binding,
            PaymentSession.created_at <= bindparam("at"),
            PaymentSession.expires_at >= bindparam("at"),
            or_(
                PaymentSession.payer.is_(None),
                func.lower(PaymentSession.payer) == bindparam("sender"),
            ),
            # A session another transfer already backs is not waiting for this one.
            ~select(TransferHold.transfer_key)
            .where(TransferHold.session_id == PaymentSession.id)
            .exists(),
        )
        .order_by(PaymentSession.created_at)
        .limit(20)
    )


_CANDIDATES = Prepared(_candidates(PaymentSession.reference.is_(None)))
# A transfer's keys that could be a reference: on PostgreSQL one array, so one statement text
# (prepared) whatever their number; SQLite renders an IN list per call.
_REFERENCE = PaymentSession.__table__.c.reference
_BOUND_CANDIDATES = Prepared(
    _candidates(rows.any_of(_REFERENCE, bindparam("refs", type_=rows.array_of(_REFERENCE))))
)
_BOUND_CANDIDATES_IN = _candidates(PaymentSession.reference.in_(bindparam("refs", expanding=True)))


def other_open_candidates(
    s: Session,
    ps: PaymentSession | Record,
    at: datetime,
    sender: str | None,
    references: list[str] | None = None,
) -> list[Candidate]:
    """Other open sessions that a transfer to `ps`'s recipient, of its asset and amount, made
    at `at` by `sender` (lower case) could back too: same rail, the transfer inside their
    window, their payer (when they name one) the sender, no transfer holding them yet, and
    without a reference — or, given `references` (the transfer's keys that could be one), with
    one of those as theirs. At most 20, oldest first."""
    return other_open_candidates_behind(s, ps, at, sender, references)()


def other_open_candidates_behind(
    s: Session,
    ps: PaymentSession | Record,
    at: datetime,
    sender: str | None,
    references: list[str] | None = None,
    rail: tuple[str, str] | None = None,
    paid: tuple[str, int] | None = None,
) -> Callable[[], list[Candidate]]:
    """`other_open_candidates`, its read run behind the transaction's next statement, in its
    round trip on PostgreSQL (prepared.Prepared.behind), elsewhere when the answer is
    called: call it for the candidates. The sessions it excludes (`ps`'s own, those a
    transfer holds) are the same whether it runs before or after that statement. `rail`:
    (rail id, asset) of another rail paid in the same token, to read its sessions instead;
    `paid`: (recipient, amount) of the part of the transfer they could take, when it is not
    `ps`'s (one authorization among a transaction's transfers)."""
    rail_id, asset = rail if rail is not None else (ps.rail_id, ps.asset)
    recipient, amount = paid if paid is not None else (ps.recipient, ps.amount)
    params = {
        "rail_id": rail_id,
        "recipient": recipient,
        "amount": amount,
        "asset": asset,
        "sid": ps.id,
        "at": at,
        "sender": sender,
    }
    if s.new or s.dirty or s.deleted:
        s.flush()  # as the session's own execute would: a hold not flushed yet counts
    conn = s.connection()
    if references is not None and not rows.is_postgres(s):

        def expanded() -> list[Candidate]:
            found = s.execute(_BOUND_CANDIDATES_IN, {**params, "refs": references})
            return [Candidate(sid, owner) for sid, owner in found]

        return expanded
    if references is None:
        found = _CANDIDATES.behind(conn, params)
    else:
        found = _BOUND_CANDIDATES.behind(conn, {**params, "refs": references})
    return lambda: [Candidate(sid, owner) for sid, owner in found.rows()]


# FOR KEY SHARE (PostgreSQL): a credit holding the session's row lock (FOR UPDATE) is waited
# for, and its `paid` read; one that locks it later sees this attempt among the session's
# proofs. The weakest lock that does so, and the one the holds' foreign keys take anyway: it
# costs the submission nothing measurable (FOR SHARE cost ~7 % of the in-process rate).
_STATUS = Prepared(
    select(PaymentSession.status)
    .where(PaymentSession.id == bindparam("sid"))
    .with_for_update(read=True, key_share=True)
)


def status_behind(s: Session, session_id: str) -> Callable[[], str | None]:
    """The session's stored status as the transaction sees it now (not as read before a chain
    call: another proof may have paid it meanwhile), read behind the transaction's next
    statement, in its round trip on PostgreSQL, under a share lock on the row (a credit in
    progress is waited for): call it for the status."""
    if s.new or s.dirty or s.deleted:
        s.flush()
    found = _STATUS.behind(s.connection(), {"sid": session_id})

    def status() -> str | None:
        got = found.rows()
        return str(got[0][0]) if got else None

    return status
