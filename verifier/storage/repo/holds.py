"""Transfer holds: which proof holds each on-chain transfer identity (storage.models
TransferHold). The only code that writes their SQL; the rules live in
verifier.services.proofs."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from verifier.storage.models import Receipt, TransferHold
from verifier.storage.repo.prepared import Prepared, send_deferred
from verifier.storage.repo.rows import is_postgres, table

_T = table(TransferHold)
FINGERPRINT_PREFIX = "proof:"


@dataclass(frozen=True)
class Holder:
    transfer_key: str
    proof_id: str
    session_id: str
    owner_id: str


def fingerprint_key(fingerprint: str) -> str:
    """The hold every holding proof takes on its own fingerprint."""
    return FINGERPRINT_PREFIX + fingerprint


def hold(
    s: Session, keys: Iterable[str], proof_id: str, session_id: str, owner_id: str, now: datetime
) -> list[Holder]:
    """Take every key for the proof; keys another proof holds are left to it. Returns the
    holders of the keys that are not this proof's (empty: the proof holds them all).

    Under concurrency the insert of a key another transaction is inserting waits for that
    transaction (both databases), so the read that follows sees the winner."""
    return hold_behind(s, keys, proof_id, session_id, owner_id, now)()


def hold_behind(
    s: Session, keys: Iterable[str], proof_id: str, session_id: str, owner_id: str, now: datetime
) -> Callable[[], list[Holder]]:
    """`hold`, its inserts run behind the transaction's next statement, in its round trip on
    PostgreSQL (prepared.Prepared.behind): call the answer for `hold`'s, which the caller
    must do before committing."""
    wanted = list(dict.fromkeys(keys))
    rows = [
        {
            "transfer_key": k,
            "proof_id": proof_id,
            "session_id": session_id,
            "owner_id": owner_id,
            "created_at": now,
        }
        for k in wanted
    ]
    conn = s.connection()
    if not wanted:
        return lambda: []
    if not is_postgres(s):

        def one_by_one() -> list[Holder]:
            for row in rows:  # a prepared statement per row beats executemany's setup for two
                _INSERT_SQLITE.execute(conn, row)
            return [h for h in holders(s, wanted) if h.proof_id != proof_id]

        return one_by_one
    # A statement per key, each saying whether it wrote, prepared once, in the order asked
    # (as one multi-row VALUES would take them), instead of a VALUES list compiled on every
    # call: only the others (held already, by this proof or another) are looked up, so the
    # usual new hold costs no round trip of its own.
    written = [_INSERT_PG.behind(conn, row) for row in rows]
    by_key = {row["transfer_key"]: row for row in rows}

    def answer() -> list[Holder]:
        taken = {r[0] for later in written for r in later.rows()}
        others = [k for k in wanted if k not in taken]
        out: list[Holder] = []
        for _ in range(_SETTLE_TRIES):
            if not others:
                return out
            found = holders(s, others)
            out += [h for h in found if h.proof_id != proof_id]
            # SECURITY: each statement sees the latest commit (READ COMMITTED): a key another
            # proof held at the insert and released before this read (a staff release) is
            # neither this proof's nor anyone's. Counted as this proof's, it was held by
            # nobody, and another session's proof took the same payment. It is taken now.
            gone = [k for k in others if not any(h.transfer_key == k for h in found)]
            others = [k for k in gone if not _INSERT_PG.all(conn, by_key[k])]
        raise RuntimeError(f"transfer holds changed hands {_SETTLE_TRIES} times while read")

    return answer


# A key released between the insert and the read is inserted again; each try settles it but
# for another release in between, a one-off per holder.
_SETTLE_TRIES = 5


# Built once: the submission path runs them for every proof that holds.
_INSERT_PG = Prepared(
    postgresql.insert(_T)
    .on_conflict_do_nothing(index_elements=["transfer_key"])
    .returning(_T.c.transfer_key)
)
_INSERT_SQLITE = Prepared(sqlite.insert(_T).on_conflict_do_nothing(index_elements=["transfer_key"]))
_HOLDER = Prepared(
    select(_T.c.transfer_key, _T.c.proof_id, _T.c.session_id, _T.c.owner_id).where(
        _T.c.transfer_key == bindparam("k")
    )
)


def holders(s: Session, keys: list[str]) -> list[Holder]:
    # One indexed lookup per key (a transfer has one to three): an expanding IN would be
    # rendered again on every call.
    conn = s.connection()
    return [Holder(*r) for k in keys for r in _HOLDER.all(conn, {"k": k})]


def keys_of(s: Session, proof_id: str) -> list[str]:
    """Every transfer key the proof holds."""
    return list(s.scalars(select(_T.c.transfer_key).where(_T.c.proof_id == proof_id)))


def holder_behind(s: Session, key: str, other_than_session: str) -> Callable[[], Holder | None]:
    """The holder of `key` when it holds it for another session than the given one, read
    behind the transaction's next statement, in its round trip (prepared.Prepared.behind):
    call the answer for it."""
    later = _HOLDER.behind(s.connection(), {"k": key})

    def answer() -> Holder | None:
        for h in (Holder(*r) for r in later.rows()):
            if h.session_id != other_than_session:
                return h
        return None

    return answer


def release(s: Session, proof_id: str) -> None:
    """Drop a proof's holds, unless a receipt stands on it (a receipted transfer stays held
    whatever its proof's status: it was credited)."""
    conn = s.connection()
    send_deferred(conn)
    conn.execute(
        delete(_T).where(
            _T.c.proof_id == proof_id,
            ~select(Receipt.id).where(Receipt.proof_id == proof_id).exists(),
        )
    )
