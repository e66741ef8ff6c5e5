"""Rows by primary key, plain records, and the one place the repo asks which database it runs
on. Shared by the repo's modules; nothing outside `storage.repo` imports it for SQL."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any, TypeVar, cast

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    CursorResult,
    Integer,
    Result,
    String,
    Table,
    any_,
    bindparam,
    exc,
    insert,
    select,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session, make_transient_to_detached

from verifier.storage.repo.prepared import Prepared, send_deferred

M = TypeVar("M")
_BY_PK: dict[type, Prepared] = {}


def table(model: type) -> Table:
    """A model's table, typed as one (`Model.__table__` is declared as a FromClause)."""
    t = model.__table__  # type: ignore[attr-defined]
    assert isinstance(t, Table)
    return t


def rowcount(result: Result[Any]) -> int:
    """The rows an UPDATE or DELETE matched. `Session.execute` is declared to return a
    `Result`; for those statements it is a `CursorResult`, which alone carries the count."""
    if not isinstance(result, CursorResult):
        raise TypeError(f"no row count: {type(result).__name__} is not a CursorResult")
    return result.rowcount


class Record:
    """A row as a plain object: attribute access like a model instance, none of the ORM's
    instrumentation. For rows a transaction only reads, or writes back itself with a Core
    statement; it is never attached to a session, so nothing flushes it."""

    def __init__(self, values: Any):
        self.__dict__.update(values)

    def __getattr__(self, name: str) -> Any:  # typing only: every column is set in __init__
        raise AttributeError(name)

    def __repr__(self) -> str:
        return f"Record({self.__dict__!r})"


def is_postgres(s: Session | Connection) -> bool:
    """Which database the session's (or connection's) engine is: the repo's dialect branch.
    Asked of the bind, so it never begins a transaction by itself."""
    bind = s.get_bind() if isinstance(s, Session) else s
    return bind.dialect.name == "postgresql"


def among(s: Session | Connection, column: Any, values: Iterable[Any]) -> ColumnElement[bool]:
    """`column IN (values)` for a batch (a sweep's hundreds of ids). On PostgreSQL as
    `column = ANY(:array)`: one parameter, so the statement's text is the same for every batch
    size. An IN list of n parameters is a new statement per n: SQLAlchemy renders it per call,
    and psycopg neither caches the conversion of a text that long nor prepares it (a finality
    sweep spent a quarter of its profiled client time there; docs/bench.md, "The worker's
    batches")."""
    items = list(values)
    # Only plain string and integer columns (ids): an array of any other type (an Enum, a
    # TypeDecorator) would not carry its casts and bind processing the way IN does, so those
    # keep IN, which is always right.
    if is_postgres(s) and type(column.type) in (String, Integer, BigInteger):
        return any_of(column, bindparam(None, items, type_=array_of(column)))
    return cast(ColumnElement[bool], column.in_(items))


def array_of(column: Any) -> Any:
    """The PostgreSQL array type for values compared with a plain string or integer column."""
    item = column.type
    if type(item) is String:
        # SECURITY: an explicit cast to VARCHAR(n) truncates, so an over-long value would
        # match a stored one that is its first n characters; an unbounded array does not.
        item = String()
    return postgresql.ARRAY(item)


def any_of(column: Any, array: Any) -> ColumnElement[bool]:
    """`column = ANY(array)` (PostgreSQL); `array` a bind of type `array_of(column)`."""
    return cast(ColumnElement[bool], column == any_(array))


@contextmanager
def guarded(conn: Connection) -> Iterator[None]:
    """Around a statement whose failure (a unique violation) the caller handles and then goes
    on in the same transaction: a failed statement aborts a PostgreSQL transaction, so there
    it runs behind a savepoint; SQLite undoes only the failed statement."""
    if conn.dialect.name == "postgresql":
        send_deferred(conn)  # what came before the savepoint stays outside it
        with conn.begin_nested():
            yield
    else:
        yield


class Unique:
    """An INSERT of one new row that a unique constraint may refuse, as the caller goes on in
    the same transaction: SQLite undoes only the failed statement; on PostgreSQL, where a
    failed statement aborts the transaction, the row is written with ON CONFLICT DO NOTHING
    (one statement, where a savepoint around it cost two more round trips) and a row that
    was not written raises the same IntegrityError."""

    def __init__(self, t: Table):
        self.table = t
        self._default = Prepared(insert(t))
        self._pg = Prepared(postgresql.insert(t).on_conflict_do_nothing())

    def insert(self, conn: Connection, row: dict[str, Any]) -> None:
        if conn.dialect.name != "postgresql":
            self._default.insert(conn, row)
            return
        self._written(self._pg.execute(conn, row))

    def behind(self, conn: Connection, row: dict[str, Any]) -> Callable[[], None]:
        """`insert`, run behind the transaction's next statement (prepared.Prepared.behind);
        calling the answer raises what `insert` would have. Elsewhere than on PostgreSQL the
        row is written when the answer is called."""
        if conn.dialect.name != "postgresql":
            return partial(self._default.insert, conn, row)
        later = self._pg.behind(conn, row)
        return lambda: self._written(later.rowcount())

    def _written(self, count: int) -> None:
        if count != 1:
            # Only a unique (or exclusion) constraint makes DO NOTHING skip the row; a
            # concurrent insert of the same key was waited for and committed first.
            raise exc.IntegrityError(
                f"INSERT INTO {self.table.name}",
                None,
                Exception(f"{self.table.name}: a unique constraint refused the row"),
            )


def get(s: Session, model: type[M], pk: Any) -> M | None:
    """`s.get(model, pk)` for a model with a single-column primary key, at about half the cost
    on a miss: one Core SELECT (a statement built once, so always a compiled-cache hit) and
    the row adopted into the session as a persistent, unmodified object — tracked like any
    loaded object, so changes to it flush as usual. An object the session already holds is
    answered by `Session.get` itself, exactly as before."""
    if (model, (pk,), None) in s.identity_map:
        return s.get(model, pk)
    values = _row_by_pk(s, model, pk)
    if values is None:
        return None
    obj = model(**values)
    make_transient_to_detached(obj)  # as if loaded: every attribute committed, none changed
    s.add(obj)
    return obj


def get_locked(s: Session, model: type[M], pk: Any) -> M | None:
    """`get` under the row's lock to the end of the transaction: FOR UPDATE on PostgreSQL;
    SQLite's BEGIN IMMEDIATE already holds the database's one write lock."""
    if is_postgres(s):
        return s.get(model, pk, with_for_update=True)
    return get(s, model, pk)


def _row_by_pk(s: Session, model: type, pk: Any) -> dict[str, Any] | None:
    """The row as stored, by a statement built and prepared once per model."""
    stmt = _BY_PK.get(model)
    if stmt is None:
        t = table(model)
        (key,) = t.primary_key.columns
        stmt = _BY_PK[model] = Prepared(select(*t.columns).where(key == bindparam("pk")))
    row = stmt.first(s.connection(), {"pk": pk})
    return None if row is None else dict(zip(stmt.keys(), row, strict=True))


def read(s: Session, model: type[M], pk: Any) -> M | Record | None:
    """The row with primary key `pk` for a caller that only reads it: the object the session
    already holds (with any change not flushed yet, exactly as `get` answers), otherwise a
    `Record` of the row as stored, without building and adopting an ORM instance. None when
    there is no such row."""
    if (model, (pk,), None) in s.identity_map:
        return s.get(model, pk)
    values = _row_by_pk(s, model, pk)
    return None if values is None else Record(values)
