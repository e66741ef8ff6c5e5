"""Rail state (storage.models RailState): the kill switch, production flag and approved
treasury per rail, and the locks that order a pause with the work it stops."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import bindparam, select, text
from sqlalchemy.orm import Session

from verifier.storage.models import RailState
from verifier.storage.repo import rows
from verifier.storage.repo.prepared import Prepared, fetch_together
from verifier.storage.repo.rows import Record

_STATE = rows.table(RailState)
# The rail's state under a share lock, held to the end of the caller's transaction.
_STATE_FOR_SHARE = Prepared(
    select(*_STATE.columns).where(_STATE.c.rail_id == bindparam("pk")).with_for_update(read=True)
)
_TREASURIES = Prepared(
    select(RailState.__table__.c.treasury).where(RailState.__table__.c.treasury.is_not(None))
)
# In Session.info: the treasuries read with the rail state, and the transaction that read them.
_TREASURIES_READ = "railproof.treasuries"
_TREASURIES_TX = "railproof.treasuries_tx"
_LOCK_TABLE = text(f"LOCK TABLE {RailState.__tablename__} IN EXCLUSIVE MODE")


def get(s: Session, rail_id: str, lock: bool = False) -> RailState | None:
    """The row as a session object. One read per transaction: a repeat is answered from the
    session's identity map. `lock`: FOR UPDATE on PostgreSQL (a locking read always goes to
    the database); SQLite's write lock is already held."""
    if lock:
        return rows.get_locked(s, RailState, rail_id)
    return rows.get(s, RailState, rail_id)


def read_shared(s: Session, rail_id: str) -> RailState | Record | None:
    """The row for a caller that only reads it: the session's own object when it holds one,
    otherwise a plain record. On PostgreSQL read FOR SHARE, held to the end of the caller's
    transaction (see Engine.rail_state_read for why and in which order)."""
    if rows.is_postgres(s):
        # SECURITY: the share lock is what keeps work from committing after a pause.
        # The treasuries come in the same round trip (a session that names its reference
        # checks it against them next).
        found, stored = fetch_together(
            s.connection(), [(_STATE_FOR_SHARE, {"pk": rail_id}), (_TREASURIES, {})]
        )
        s.info[_TREASURIES_READ] = [t for (t,) in stored if t]
        s.info[_TREASURIES_TX] = s.get_transaction()
        if not found:
            return None
        row = found[0]
        if (RailState, (rail_id,), None) in s.identity_map:
            return s.get(RailState, rail_id)
        return Record(zip(_STATE_FOR_SHARE.keys(), row, strict=True))
    return rows.read(s, RailState, rail_id)


def read_shared_behind(s: Session, rail_id: str) -> Callable[[], RailState | Record | None]:
    """`read_shared`, its statements run behind the transaction's next one, in its round trip
    on PostgreSQL (prepared.Prepared.behind), elsewhere when the answer is called: call it
    for the row. The share lock is taken when that round trip runs, before anything sent
    behind it after this call."""
    if not rows.is_postgres(s):
        return lambda: read_shared(s, rail_id)
    conn = s.connection()
    state = _STATE_FOR_SHARE.behind(conn, {"pk": rail_id})
    stored = _TREASURIES.behind(conn, {})
    tx = s.get_transaction()

    def answer() -> RailState | Record | None:
        found = state.rows()
        s.info[_TREASURIES_READ] = [t for (t,) in stored.rows() if t]
        s.info[_TREASURIES_TX] = tx
        if not found:
            return None
        if (RailState, (rail_id,), None) in s.identity_map:
            return s.get(RailState, rail_id)
        return Record(zip(_STATE_FOR_SHARE.keys(), found[0], strict=True))

    return answer


def add(s: Session, st: RailState) -> RailState:
    """Insert a new rail's row now (a unique violation surfaces here, not at commit)."""
    s.add(st)
    s.flush()
    return st


def all_states(s: Session) -> list[RailState]:
    return list(s.scalars(select(RailState)).all())


def rail_ids(s: Session) -> set[str]:
    return set(s.scalars(select(RailState.rail_id)).all())


def treasuries(s: Session) -> list[str]:
    """The approved treasuries stored per rail (rails without one left out). Read once per
    transaction: a rail state read FOR SHARE (`read_shared`) brought them already."""
    tx = s.get_transaction()
    cached = s.info.get(_TREASURIES_READ)
    if cached is not None and s.info.get(_TREASURIES_TX) is tx:
        return list(cached)
    return [t for (t,) in _TREASURIES.all(s.connection()) if t]


def lock_for_pause(s: Session) -> None:
    """First in a pause's transaction, on PostgreSQL: the rail state table in EXCLUSIVE mode.
    A row lock has no queue: new FOR SHARE readers are let in past a waiting FOR UPDATE, so
    under steady traffic a pause would wait for as long as the traffic lasts. Table locks are
    queued: once this one waits (on the transactions that read rail state FOR SHARE, any
    rail's), later readers wait behind it. Plain reads of the table are not held up. SQLite:
    nothing to do, BEGIN IMMEDIATE holds the one writer lock."""
    if rows.is_postgres(s):
        s.execute(_LOCK_TABLE)
