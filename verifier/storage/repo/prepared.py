"""Prepared statements for the repo's hot paths (a session and a submission write a dozen
rows).

`Prepared(stmt)` compiles a Core statement once per SQLite dialect, with SQLAlchemy's own
compiler, and runs it on the driver cursor of the caller's connection (so inside the caller's
transaction) with the column types' own bind and result processors: the SQL, the values sent,
the values read back and the exception types are those of `Connection.execute`. What it
leaves out is the execution context SQLAlchemy builds around every call, which here costs
more than SQLite's own work for these rows (docs/bench.md, "Where the time goes").

On PostgreSQL the statements go to libpq through psycopg's lower layer (`_pipeline`):
SQLAlchemy's execution context costs about as much as the loopback round trip itself
(docs/bench.md, "PostgreSQL"), and psycopg's pipeline object as much again. A statement is
prepared on the server once the connection has run it `prepare_threshold` times (storage.db:
off behind PgBouncer in transaction mode). A driver error that means the connection is gone
invalidates it, as `Connection.execute` would, so the pool never hands it out again. `Prepared`
calls `Connection.execute` instead when the engine or connection has execution event listeners
(`before_cursor_execute` and the like): the driver path would hide the statements from them.

Used only inside `verifier.storage.repo`, by the hot-path functions that opt in; why it is
kept rather than removed is measured in docs/bench.md ("The repo layer and prepared
statements").

Deferred writes (PostgreSQL). A row nothing in the transaction reads back (an audit event, an
outbox row, settlement evidence) can be written with `defer`: it is queued on the connection
and sent in one pipeline with the transaction's next statement, or with its COMMIT
(`commit_deferred`, storage.db `Database.tx`), so it costs no round trip of its own; the
transaction's BEGIN rides with its first statement the same way. Anything else that reaches
the database first sends the queue ahead of it (`send_deferred`: the Session hooks below, and
the repo's few direct Core calls), so statements still run in the order they were asked for,
in the same transaction; the one exception is that queued rows of one INSERT go together as
one executemany, and an INSERT may be sent ahead of queued inserts into other tables it does
not reference (`_runs`: never past an UPDATE, a row of its own table, or a possible
parent). Nothing is deferred inside a savepoint, and what was queued before one is sent
before it. A deferred row that fails, fails the transaction as it would have where it was
asked for; a connection going back to the pool drops any queue (its transaction was rolled
back).

A compiled form of an INSERT or UPDATE names the columns the call supplies. Python-side column
defaults are SQLAlchemy's to apply, not the driver's: a statement that would leave out a
column that has one is refused rather than written without it.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from functools import partial
from typing import Any, NoReturn

from psycopg import errors, pq
from psycopg._queries import PostgresQuery
from psycopg.adapt import Transformer
from psycopg.generators import fetch_many, send
from sqlalchemy import event, exc
from sqlalchemy.engine import Connection
from sqlalchemy.orm import ORMExecuteState, Session
from sqlalchemy.sql import Insert, Update

# In the pooled connection's info: (sql, args) of deferred writes not sent yet.
_QUEUE = "railproof.deferred"
# In the pooled connection's info: statements to send behind the transaction's next one
# (`Prepared.behind`), and how many writes sent that way nobody has read yet.
_BEHIND = "railproof.behind"
_UNREAD = "railproof.unread_behind"
# In a Session's info (storage.db `Database.sessions`): its transactions may defer writes;
# copied to the connection's info while such a transaction runs on it. A Session bound to a
# connection someone else commits never defers: nothing would send its rows.
DEFERS = "railproof.defers"
# In the pooled connection's info (storage.db): after how many runs on the connection a
# statement is prepared on the server; None or absent: never (PgBouncer in transaction mode,
# or an engine storage.db did not make, whose psycopg may prepare and deallocate its own).
PREPARE_AFTER = "railproof.prepare_after"


class _Form:
    """One compiled form: the SQL, its positional parameter names with their processors, the
    values of binds the statement fixes itself (a LIMIT), and the result columns'
    processors."""

    __slots__ = ("sql", "names", "binders", "fixed", "results", "positional", "returns")

    def __init__(self, stmt: Any, dialect: Any, keys: frozenset[str] | None):
        compiled = stmt.compile(dialect=dialect, column_keys=sorted(keys) if keys else None)
        self.sql = str(compiled)
        # SQLite's qmark style takes values in order; psycopg's pyformat takes them by name.
        self.positional = bool(dialect.positional)
        self.names = tuple(compiled.positiontup or () if self.positional else compiled.binds)
        # An INSERT that lets the database assign its key says it back (PostgreSQL RETURNING).
        self.returns = bool(getattr(compiled, "implicit_returning", None))
        self.binders = tuple(
            compiled.binds[n].type.dialect_impl(dialect).bind_processor(dialect) for n in self.names
        )
        self.fixed = {
            n: compiled.binds[n].effective_value
            for n in self.names
            if not compiled.binds[n].required
        }
        # A SELECT's columns, or what an INSERT/UPDATE says back with an explicit RETURNING.
        cols = (
            getattr(stmt, "selected_columns", None) or getattr(stmt, "exported_columns", None) or ()
        )
        self.results = tuple(
            c.type.dialect_impl(dialect).result_processor(dialect, None) for c in cols
        )


class Prepared:
    """A Core statement built once at import; `insert`, `execute`, `first`, `scalar` and `all`
    run it in the caller's transaction (`conn`: the transaction's `Session.connection()`)."""

    def __init__(self, stmt: Any):
        self.stmt = stmt
        self._dml = isinstance(stmt, (Insert, Update))
        self._forms: weakref.WeakKeyDictionary[Any, dict[frozenset[str] | None, _Form]] = (
            weakref.WeakKeyDictionary()
        )
        self._checked: set[frozenset[str]] = set()
        table = getattr(stmt, "table", None)
        self._pk = list(table.primary_key.columns) if self._dml and table is not None else []
        # A deferred INSERT may be sent ahead of queued inserts into other tables this one
        # does not reference (`_runs`); anything else keeps its place.
        self._moves: _Movable | None = (
            (table.name, frozenset(fk.column.table.name for fk in table.foreign_keys))
            if isinstance(stmt, Insert) and table is not None
            else None
        )

    # -- running ------------------------------------------------------------------------------

    def _form(self, dialect: Any, params: dict[str, Any]) -> _Form:
        forms = self._forms.get(dialect)
        if forms is None:
            forms = self._forms[dialect] = {}
        keys = frozenset(params) if self._dml else None
        form = forms.get(keys)
        if form is None:
            form = forms[keys] = _Form(self.stmt, dialect, keys)
        return form

    def _check(self, params: dict[str, Any]) -> None:
        """On every database alike, so a statement that works on one works on the other."""
        keys = frozenset(params)
        if keys in self._checked:
            return
        insert = isinstance(self.stmt, Insert)
        for col in self.stmt.table.columns:
            default = col.default if insert else col.onupdate
            if default is not None and col.key not in params:
                raise ValueError(
                    f"{self.stmt.table.name}.{col.key}: has a Python-side default; "
                    "a prepared statement must be given its value"
                )
        self._checked.add(keys)

    def _args(self, dialect: Any, params: dict[str, Any]) -> tuple[_Form, Any]:
        form = self._form(dialect, params)
        fixed = form.fixed
        values = [params[n] if n in params or n not in fixed else fixed[n] for n in form.names]
        # Every value goes through its processor, None included (a JSON column writes 'null').
        values = [v if p is None else p(v) for p, v in zip(form.binders, values, strict=False)]
        args: Any = values if form.positional else dict(zip(form.names, values, strict=True))
        return form, args

    def _cursor(self, conn: Connection, params: dict[str, Any]) -> tuple[Any, _Form]:
        form, args = self._args(conn.dialect, params)
        return _run(conn, [(form.sql, args)])[-1], form

    @staticmethod
    def _fast(conn: Connection) -> bool:
        # The driver path skips SQLAlchemy's execution events: taken only where nobody listens
        # for them (a statement listener, for tracing or counting, sees every statement).
        return not (conn._has_events or conn.engine._has_events)

    def insert(self, conn: Connection, row: dict[str, Any]) -> Any:
        """Insert one row; returns its primary key (the one given, or the one assigned)."""
        self._check(row)
        if not self._fast(conn):
            inserted = conn.execute(self.stmt, row).inserted_primary_key
            if inserted is None:  # an INSERT that ran always reports its primary key
                raise exc.InvalidRequestError(f"{self.stmt}: no primary key was reported")
            # As the driver path answers: the value, or the tuple of a composite key.
            return inserted[0] if len(inserted) == 1 else tuple(inserted)
        cur, form = self._cursor(conn, row)
        try:
            if self._pk and all(c.key in row for c in self._pk):
                keys = tuple(row[c.key] for c in self._pk)
                return keys[0] if len(keys) == 1 else keys
            if form.returns:
                (key,) = cur.fetchone()
                return key
            return cur.lastrowid  # an INTEGER PRIMARY KEY is the rowid
        finally:
            cur.close()

    def defer(self, conn: Connection, row: dict[str, Any]) -> None:
        """Write one row (an INSERT, or an UPDATE) whose result nobody reads, not even a key
        the database assigns: on PostgreSQL sent with the transaction's next statement or its
        commit (module docstring), elsewhere at once."""
        self._check(row)
        # Inside a savepoint a write goes at once: rolling the savepoint back must take it.
        if (
            conn.dialect.name != "postgresql"
            or not conn.info.get(DEFERS)
            or not self._fast(conn)
            or conn.in_nested_transaction()
        ):
            if isinstance(self.stmt, Insert):
                self.insert(conn, row)
            else:
                self.execute(conn, row)
            return
        if conn.info.get(_BEHIND):
            # Asked for after a statement that waits behind the next one: it would otherwise
            # run before that statement (a claim's completion before the claim).
            send_deferred(conn)
        form, args = self._args(conn.dialect, row)
        conn.info.setdefault(_QUEUE, []).append((form.sql, args, self._moves))

    def behind(
        self,
        conn: Connection,
        params: dict[str, Any],
        check: Callable[[Later], None] | None = None,
        last: bool = False,
    ) -> Later:
        """Run this statement right behind the transaction's next one, in its round trip,
        and answer its rows and count when the caller gets to them (`Later`). On PostgreSQL
        it waits on the connection (as a deferred write does) and goes after the next
        statement sent, before any COMMIT; elsewhere it runs when it is read.

        For a statement the caller would have run right after that next one, with nothing
        of its own in between (a write deferred meanwhile sends it first, alone; and nothing
        rides behind the audit chain's lock: storage.repo.audit sends it before). SECURITY:
        a write sent this way has run even when the caller then raises instead of reading
        it, so it must read it or fail the transaction: a COMMIT with such a write unread is
        refused. `check` reads it as soon as it is back, before whatever statement carried it
        returns (what it raises, that statement raises); `Later.queued` tells whether it
        waits at all (if not, nothing ran: read it now). Inside a savepoint, pass the
        savepoint's own `s.connection()` (SQLAlchemy sends SAVEPOINT with its first statement,
        so a connection taken before does not know it is nested yet) and read the answer
        before the savepoint ends: read after, it runs in the transaction around it.
        `last`: nothing may ride behind this one in its round trip (a statement that takes a
        lock held to the commit); what is asked for behind it later waits for the next one."""
        if self._dml:
            self._check(params)
        waiting = conn.info.get(_BEHIND)
        if waiting and waiting[-1][2].last:
            send_waiting(conn)
        later = Later(self, conn, params, check, last)
        if (
            conn.dialect.name != "postgresql"
            or not conn.info.get(DEFERS)
            or not self._fast(conn)
            or conn.in_nested_transaction()
        ):
            return later  # runs when read
        form, args = self._args(conn.dialect, params)
        later.form = form
        if self._dml:
            conn.info[_UNREAD] = conn.info.get(_UNREAD, 0) + 1
        conn.info.setdefault(_BEHIND, []).append((form.sql, args, later))
        return later

    def execute(self, conn: Connection, params: dict[str, Any], commit: bool = False) -> int:
        """Run an UPDATE (or DELETE); returns the number of rows it matched. `commit`: the
        statement ends a `Database.tx` transaction, and on PostgreSQL its COMMIT goes in the
        same round trip (nothing may run in the transaction after it)."""
        self._check(params)
        if not self._fast(conn):
            # preserve_rowcount: an INSERT's count (Unique's ON CONFLICT DO NOTHING reads
            # it) is otherwise gone with its cursor, and reads -1.
            result = conn.execute(self.stmt, params, execution_options={"preserve_rowcount": True})
            return result.rowcount
        if commit and conn.dialect.name == "postgresql" and conn.info.get(DEFERS):
            form, args = self._args(conn.dialect, params)
            (cur,) = _run(conn, [(form.sql, args)], commit=True)
            try:
                return int(cur.rowcount)
            finally:
                cur.close()
        cur, _ = self._cursor(conn, params)
        try:
            count: int = cur.rowcount
            return count
        finally:
            cur.close()

    def first(
        self, conn: Connection, params: dict[str, Any] | None = None
    ) -> tuple[Any, ...] | None:
        rows = self._fetch(conn, params or {}, one=True)
        return rows[0] if rows else None

    def scalar(self, conn: Connection, params: dict[str, Any] | None = None) -> Any:
        row = self.first(conn, params)
        return None if row is None else row[0]

    def all(self, conn: Connection, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        return self._fetch(conn, params or {}, one=False)

    def _fetch(self, conn: Connection, params: dict[str, Any], one: bool) -> list[tuple[Any, ...]]:
        if not self._fast(conn):
            result = conn.execute(self.stmt, params)
            rows = [result.first()] if one else result.all()
            return [tuple(r) for r in rows if r is not None]
        cur, form = self._cursor(conn, params)
        try:
            raw = cur.fetchmany(1) if one else cur.fetchall()
        finally:
            cur.close()
        return _loaded(form.results, raw)

    def _both(self, conn: Connection, params: dict[str, Any]) -> tuple[list[tuple[Any, ...]], int]:
        """Run it now: its rows (none for a write without RETURNING) and its count."""
        if not self._fast(conn):
            result = conn.execute(self.stmt, params, execution_options={"preserve_rowcount": True})
            got = [tuple(r) for r in result.all()] if result.returns_rows else []
            return got, result.rowcount
        cur, form = self._cursor(conn, params)
        try:
            raw = cur.fetchall()  # a write without RETURNING: none (sqlite3 and _Rows alike)
            count = cur.rowcount
        finally:
            cur.close()
        return _loaded(form.results, raw), count

    def keys(self) -> list[str]:
        """The result columns' keys, in order (as `Row._mapping` names them)."""
        return [c.key for c in self.stmt.selected_columns]


def _loaded(procs: tuple[Any, ...], raw: list[Any]) -> list[tuple[Any, ...]]:
    """Rows as the driver gave them, through their columns' result processors."""
    return [tuple(v if p is None else p(v) for p, v in zip(procs, r, strict=False)) for r in raw]


class Later:
    """A statement sent behind the next one (`Prepared.behind`): its rows and count, read
    once the round trip that carried it is back (or, where nothing waits on the connection,
    by running it then)."""

    __slots__ = ("prepared", "conn", "params", "check", "last", "form", "result", "read")

    def __init__(
        self,
        prepared: Prepared,
        conn: Connection,
        params: dict[str, Any],
        check: Callable[[Later], None] | None = None,
        last: bool = False,
    ):
        self.prepared, self.conn, self.params, self.check = prepared, conn, params, check
        self.last = last
        self.form: _Form | None = None  # set when queued
        self.result: tuple[list[tuple[Any, ...]], int] | None = None
        self.read = False

    @property
    def queued(self) -> bool:
        """Sent behind the next statement (False: it runs when read)."""
        return self.form is not None

    def _filled(self, got: _Rows) -> None:
        procs = self.form.results if self.form is not None else ()
        self.result = (_loaded(procs, got.rows), got.rowcount)

    def _get(self) -> tuple[list[tuple[Any, ...]], int]:
        if self.result is None:
            if self.form is None:
                self.result = self.prepared._both(self.conn, self.params)
            else:
                send_deferred(self.conn)  # nothing was sent since: send it now
                if self.result is None:
                    raise exc.InvalidRequestError(
                        f"{self.prepared.stmt}: a statement sent behind another did not run"
                    )
        if not self.read:
            self.read = True
            if self.form is not None and self.prepared._dml:
                self.conn.info[_UNREAD] = self.conn.info.get(_UNREAD, 1) - 1
        return self.result

    def rows(self) -> list[tuple[Any, ...]]:
        return self._get()[0]

    def rowcount(self) -> int:
        """A write's count of rows (a read's is the driver's: -1 on SQLite)."""
        return self._get()[1]


def _run(conn: Connection, statements: list[tuple[str, Any]], commit: bool = False) -> list[Any]:
    """Run `statements` in order on the connection's driver, after any deferred writes, and
    return their cursors (open: the caller reads and closes the last one). On PostgreSQL
    whatever goes together — deferred rows, the statement, a transaction's BEGIN, `commit` —
    goes in one pipeline: one round trip (`_pipeline`)."""
    driver = conn.connection.driver_connection
    if driver is None:  # only a closed or invalidated connection has none
        raise exc.ResourceClosedError("the connection's driver connection is closed")
    dialect = conn.dialect
    if commit:
        _refuse_unread(conn)
    queued = conn.info.pop(_QUEUE, None) or []
    cursors: list[Any] = []
    sql, args = statements[-1] if statements else ("COMMIT", None)
    try:
        if dialect.name == "postgresql":
            behind = conn.info.pop(_BEHIND, None) or []
            batch = [(q, a) for q, rows in _runs(queued) for a in rows]
            try:
                items = _dump(driver, batch, [*statements, *((q, a) for q, a, _ in behind)])
            except BaseException:
                # A value psycopg refuses (a NUL in a string): nothing was sent, so the
                # queued rows stay queued for the transaction's next statement or commit.
                conn.info[_QUEUE] = queued
                if behind:
                    conn.info[_BEHIND] = behind
                raise
            try:
                out = _pipeline(driver, items, commit, conn.info.get(PREPARE_AFTER))
            except _Failed as failed:
                # What was checked on its way back is checked before the failure is told: a
                # claim found taken (storage.db) answers, not a write that ran after it.
                answered = list(zip(behind, failed.before[len(statements) :], strict=False))
                for (_, _, later), got in answered:
                    later._filled(got)
                for (_, _, later), _ in answered:
                    if later.check is not None:
                        later.check(later)
                raise
            for (_, _, later), got in zip(behind, out[len(statements) :], strict=True):
                later._filled(got)
            for _, _, later in behind:
                if later.check is not None:
                    later.check(later)
            return out[: len(statements)]
        for sql, args in [*((q, a) for q, a, _ in queued), *statements]:
            cur = driver.cursor()
            cursors.append(cur)
            cur.execute(sql, args)
    except _Failed as failed:
        e, sql, args = failed.error, failed.sql, failed.params
        gone = dialect.is_disconnect(e, driver, None)
        _raise(conn, e, sql, args, gone)
    except dialect.loaded_dbapi.Error as e:
        gone = dialect.is_disconnect(e, driver, cursors[-1] if cursors else None)
        for cur in cursors:
            cur.close()
        _raise(conn, e, sql, args, gone)
    opened_for_queue = len(cursors) - len(statements)
    for cur in cursors[:opened_for_queue]:
        cur.close()
    return cursors[opened_for_queue:]


def _raise(conn: Connection, e: Exception, sql: str, args: Any, gone: bool) -> NoReturn:
    dialect = conn.dialect
    if gone:
        # As Connection.execute does: the pool must not hand this connection out again.
        conn.invalidate(e)
    # SECURITY: the parameters hidden, as the engine hides them (storage.db): the text is logged.
    raise exc.DBAPIError.instance(
        sql,
        args,
        e,
        dialect.loaded_dbapi.Error,
        hide_parameters=conn.engine.hide_parameters,
        dialect=dialect,
        connection_invalidated=gone,
    ) from e


class _Failed(Exception):
    """A statement of a pipeline the server refused: its error, SQL and values, and what the
    statements read before it answered."""

    def __init__(self, error: Any, sql: str, params: Any, before: list[_Rows] | None = None):
        super().__init__(str(error))
        # Not `args`: that is BaseException's own (and a None there fails the raise itself).
        self.error, self.sql, self.params = error, sql, params
        self.before = before or []


class _Rows:
    """What a statement of `_pipeline` returned, read as its cursor would be."""

    __slots__ = ("rows", "rowcount")

    def __init__(self, rows: list[tuple[Any, ...]], rowcount: int):
        self.rows, self.rowcount = rows, rowcount

    def fetchone(self) -> tuple[Any, ...] | None:
        return self.rows[0] if self.rows else None

    def fetchmany(self, size: int) -> list[tuple[Any, ...]]:
        return self.rows[:size]

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self.rows

    def close(self) -> None:
        pass


class _Names:
    """A server connection's prepared statements: (statement text, parameter types) -> the
    name it was prepared under, or how many times it ran unprepared so far (psycopg's
    `prepare_threshold` counts the same way, and keys its own by the types too: the same text
    with a value dumped as another type is another statement)."""

    __slots__ = ("known", "made")

    def __init__(self) -> None:
        self.known: dict[tuple[bytes, Any], bytes | int] = {}
        self.made = 0

    def name(self, key: tuple[bytes, Any], threshold: int | None) -> tuple[bytes | None, bool]:
        """The name to run it under (None: unprepared), and whether to prepare it first."""
        seen = self.known.get(key, 0)
        if isinstance(seen, bytes):
            return seen, False
        if threshold is None or seen < threshold:
            self.known[key] = seen + 1
            return None, False
        self.made += 1
        made = self.known[key] = b"_rp_%d" % self.made
        return made, True

    def forget(self, key: tuple[bytes, Any]) -> None:
        """A PREPARE the server did not run (refused, or after a statement that failed)."""
        self.known.pop(key, None)


_NAMES: weakref.WeakKeyDictionary[Any, _Names] = weakref.WeakKeyDictionary()


# A statement ready to send: its SQL and values (as the caller gave them, for errors), whether
# the caller reads its result, and psycopg's conversion: the query, dumped values, their types
# and formats.
_Item = tuple[str, Any, bool, bytes, Any, Any, Any]


def _dump(
    driver: Any, queued: list[tuple[str, Any]], statements: list[tuple[str, Any]]
) -> list[_Item]:
    """Convert every statement and dump its values as psycopg's cursor does, before anything
    is sent or named: a value psycopg refuses fails here with nothing sent. Rows of one
    statement in a row dump only their values, as `executemany` does."""
    tx = Transformer(driver)
    items: list[_Item] = []
    query, last = None, None
    for i, (sql, args) in enumerate([*queued, *statements]):
        if query is not None and sql == last:
            query.dump(args)
        else:
            query, last = PostgresQuery(tx), sql
            query.convert(sql, args)
        read = i >= len(queued)
        items.append((sql, args, read, query.query, query.params, query.types, query.formats))
    return items


def _pipeline(driver: Any, items: list[_Item], commit: bool, threshold: int | None) -> list[_Rows]:
    """Send the transaction's BEGIN (when none is open), `items` (`_dump`) and `commit` in one
    libpq pipeline with one sync, and read every result back.

    Written on psycopg's libpq layer (`pgconn`, its C send/receive loop, its parameter
    dumpers and row loaders) rather than through `Connection.pipeline()`: psycopg's pipeline
    object costs ~100 µs of client CPU per pipeline over the same libpq calls, more than a
    loopback round trip (docs/bench.md, "psycopg's pipeline, and libpq's"). Statements are
    converted and their values dumped by psycopg exactly as its cursor does, and prepared on
    the server once a connection has run one `threshold` times (never when it is None:
    PgBouncer in transaction mode; storage.db `PREPARE_THRESHOLD`). `tests/test_pipeline.py`
    runs the same statements both ways and compares rows, counts and errors."""
    pg = driver.pgconn
    with driver.lock:
        names = _NAMES.get(driver)
        if names is None:
            names = _NAMES[driver] = _Names()
        sends: list[Any] = []
        # One entry per result the pipeline gives back: the statement it belongs to, its
        # values, whether the caller reads it (not the BEGIN, a PREPARE, a queued row or the
        # COMMIT), and for a PREPARE the key it was named under.
        owners: list[tuple[str, Any, bool, tuple[bytes, Any] | None]] = []
        if not driver.autocommit and pg.transaction_status == _IDLE:
            # psycopg's own BEGIN (isolation level and all); libpq then reports a transaction
            # under way and psycopg opens none of its own.
            begin = driver._get_tx_start_command()
            sends.append(partial(pg.send_query_params, begin, None))
            owners.append((begin.decode(), None, False, None))
        for sql, args, read, query, params, types, formats in items:
            key = (query, types)
            name, prepare = names.name(key, threshold)
            if prepare:
                sends.append(partial(pg.send_prepare, name, query, types))
                owners.append((sql, args, False, key))
            if name is not None:
                sends.append(partial(pg.send_query_prepared, name, params, formats))
            else:
                sends.append(partial(pg.send_query_params, query, params, types, formats))
            owners.append((sql, args, read, None))
        if commit:
            # Never prepared: a statement that ends the transaction is not worth one.
            sends.append(partial(pg.send_query_params, b"COMMIT", None))
            owners.append(("COMMIT", None, False, None))
        sends.append(partial(_sync, pg))

        drained: list[bool] = []
        pg.enter_pipeline_mode()
        try:
            # Queued in libpq's buffer (a connection in nonblocking mode never blocks on a
            # send) and flushed together: one packet, not one per statement. A long batch (a
            # sweep's hundreds of rows) is flushed every _FLUSH_EVERY statements without
            # waiting, so the server works on the first rows while the rest are queued.
            for n, command in enumerate(sends, 1):
                command()
                if not n % _FLUSH_EVERY:
                    pg.flush()
            # One wait for the whole exchange: interrupted (Ctrl-C), psycopg cancels the
            # server's work and finishes this same exchange, so every result is read.
            results = driver.wait(_exchange(pg, drained))
        except BaseException:
            for _, _, _, made in owners:  # no PREPARE of this pipeline is known to have run
                if made is not None:
                    names.forget(made)
            if pg.status == _OK:
                if drained:
                    pg.exit_pipeline_mode()
                else:
                    # Results left unread or commands unsent: nothing can tell what the
                    # server did, so the connection is closed (the pool then drops it)
                    # rather than handed on out of step with it.
                    driver.close()
            raise
        pg.exit_pipeline_mode()
    if len(results) != len(owners):
        raise errors.InternalError(f"{len(results)} results for {len(owners)} statements")
    for (_, _, _, prepared), group in zip(owners, results, strict=True):
        if prepared is not None and group[-1].status != _COMMAND_OK:
            names.forget(prepared)
    out: list[_Rows] = []
    tx: Any = None
    for (sql, args, read, _), group in zip(owners, results, strict=True):
        res = group[-1]
        status = res.status
        if status == _FATAL:
            error = errors.error_from_result(res, encoding=driver.info.encoding)
            if error.sqlstate == _NO_SUCH_STATEMENT:  # dropped behind our back (DISCARD ALL)
                names.known.clear()
            raise _Failed(error, sql, args, out)
        if not read or status == _ABORTED:  # aborted: after a statement that failed, above
            continue
        if status == _TUPLES:
            if tx is None:
                tx = Transformer(driver)
            tx.set_pgresult(res)
            out.append(_Rows(tx.load_rows(0, res.ntuples, tuple), res.ntuples))
        else:
            count = res.command_tuples
            out.append(_Rows([], -1 if count is None else count))
    return out


def _exchange(pg: Any, drained: list[bool]) -> Any:
    """psycopg's generators for one pipeline: flush what is queued (reading as it goes), then
    every result up to the sync; `drained` is set once the sync is read."""
    yield from send(pg)
    results: list[list[Any]] = []
    while True:
        group = yield from fetch_many(pg)
        if group and group[0].status == _SYNC:
            drained.append(True)
            return results
        if group:
            results.append(group)


# A deferred INSERT's table and the tables its foreign keys reference.
_Movable = tuple[str, frozenset[str]]


def _runs(queued: list[tuple[str, Any, _Movable | None]]) -> list[tuple[str, list[Any]]]:
    """The queue as runs of one statement, (sql, [args, ...]), each sent as one executemany.

    A batch queues rows table by table in turn (evidence, audit event, outbox event, for
    each proof). An INSERT joins the last run of its own statement when everything queued
    after that run is an INSERT into another table that this one does not reference: no row
    it could depend on moves behind it, rows of one table keep their order (the audit chain's
    ids follow its links), and an UPDATE is never passed."""
    out: list[tuple[str, list[Any], _Movable | None]] = []
    for sql, args, moves in queued:
        joined = False
        if out and out[-1][0] == sql:  # the same statement again: nothing is passed
            out[-1][1].append(args)
            joined = True
        elif moves is not None:
            table, references = moves
            for run_sql, run_args, run_moves in reversed(out):
                if run_sql == sql:
                    run_args.append(args)
                    joined = True
                    break
                if run_moves is None or run_moves[0] == table or run_moves[0] in references:
                    break
        if not joined:
            out.append((sql, [args], moves))
    return [(sql, rows) for sql, rows, _ in out]


def fetch_together(
    conn: Connection, calls: list[tuple[Prepared, dict[str, Any]]]
) -> list[list[tuple[Any, ...]]]:
    """Run statements that return rows (SELECT, INSERT ... RETURNING) in order and return each
    one's rows: one round trip on PostgreSQL. Each still runs as a statement of its own (under
    READ COMMITTED each sees what committed before it started, so a lock taken by one is held
    when the next reads)."""
    if not all(p._fast(conn) for p, _ in calls):
        return [p.all(conn, params) for p, params in calls]
    statements, forms = [], []
    for p, params in calls:
        form, args = p._args(conn.dialect, params)
        statements.append((form.sql, args))
        forms.append(form)
    out = []
    for cur, form in zip(_run(conn, statements), forms, strict=True):
        try:
            raw = cur.fetchall()
        finally:
            cur.close()
        out.append(_loaded(form.results, raw))
    return out


def _sync(pg: Any) -> None:
    """End a pipeline's statements: the server answers them all when it reads this."""
    pg.pipeline_sync()


_IDLE = pq.TransactionStatus.IDLE
_OK = pq.ConnStatus.OK
_SYNC = pq.ExecStatus.PIPELINE_SYNC
_FATAL = pq.ExecStatus.FATAL_ERROR
_ABORTED = pq.ExecStatus.PIPELINE_ABORTED
_TUPLES = pq.ExecStatus.TUPLES_OK
_COMMAND_OK = pq.ExecStatus.COMMAND_OK
_FLUSH_EVERY = 32
_NO_SUCH_STATEMENT = "26000"  # invalid_sql_statement_name


def send_deferred(conn: Connection) -> None:
    """Send the connection's deferred writes (and any statement sent behind them) now:
    before a statement that does not go through `Prepared`."""
    if conn.info.get(_QUEUE) or conn.info.get(_BEHIND):
        _run(conn, [])


def send_waiting(conn: Connection) -> None:
    """Send what waits behind the transaction's next statement now, with the deferred writes,
    in a round trip of its own: for a next statement nothing may ride behind."""
    if conn.info.get(_BEHIND):
        _run(conn, [])


def commit_deferred(conn: Connection) -> bool:
    """Send the deferred writes and COMMIT in one round trip; False when nothing was queued
    (the caller commits as usual)."""
    if any(later.check is not None for _, _, later in conn.info.get(_BEHIND, ())):
        send_deferred(conn)  # what is checked on its way back is checked before the COMMIT
    _refuse_unread(conn)
    conn.info.pop(_BEHIND, None)  # only reads are left, and nobody wants them any more
    if not conn.info.get(_QUEUE):
        return False
    _run(conn, [], commit=True)
    return True


def _refuse_unread(conn: Connection) -> None:
    if conn.info.get(_UNREAD):
        # SECURITY: a write sent behind another that nobody read would commit unchecked.
        raise exc.InvalidRequestError("a write sent behind another was never read: not committed")


def drop_deferred(info: dict[Any, Any]) -> None:
    """Forget the writes of a transaction that did not commit (a connection back in the
    pool)."""
    info.pop(_QUEUE, None)
    info.pop(_BEHIND, None)
    info.pop(_UNREAD, None)
    info.pop(DEFERS, None)


def _connections(session: Session) -> list[Connection]:
    """The session transaction's open connections (SessionTransaction keeps them per bind,
    first)."""
    tx = session.get_transaction()
    held = (
        [h[0] if isinstance(h, tuple) else h for h in tx._connections.values()]
        if tx is not None
        else []
    )
    return [c for c in held if isinstance(c, Connection) and not c.closed]


def _send_for_session(session: Session) -> None:
    for conn in _connections(session):
        send_deferred(conn)


# Every Session statement, flush and commit sends the queue first: statements keep their
# order whatever path they take to the database.
@event.listens_for(Session, "do_orm_execute")
def _before_orm_execute(state: ORMExecuteState) -> None:
    _send_for_session(state.session)


@event.listens_for(Session, "before_flush")
def _before_flush(session: Session, _context: Any, _instances: Any) -> None:
    _send_for_session(session)


@event.listens_for(Session, "after_begin")
def _on_begin(session: Session, _transaction: Any, connection: Connection) -> None:
    if session.info.get(DEFERS):
        connection.info[DEFERS] = True


@event.listens_for(Session, "after_transaction_create")
def _before_savepoint(session: Session, transaction: Any) -> None:
    # A queue never spans a savepoint: what came before it is sent before SAVEPOINT.
    if transaction.nested:
        _send_for_session(session)


@event.listens_for(Session, "before_commit")
def _before_commit(session: Session) -> None:
    _send_for_session(session)
    if session.in_nested_transaction():
        return  # a savepoint's release: the transaction's own COMMIT checks what is unread
    for conn in _connections(session):
        _refuse_unread(conn)
