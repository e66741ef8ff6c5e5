"""The database handle: engine, sessions, migrations.

SQLite (embedded default) serializes writers: every transaction begins IMMEDIATE so a
read-then-write (the audit chain's head, an idempotency claim) cannot interleave.
PostgreSQL (production) runs several API processes and workers; rows are claimed with
FOR UPDATE SKIP LOCKED and the audit chain is appended under an advisory lock. A
Database's connections set lock_timeout and statement_timeout, so a stuck client cannot
hold the gate's locks (or run a statement) for ever: the waiting statement fails
(`is_busy`), its transaction rolls back, and the API answers 503 database_busy.
"""

from __future__ import annotations

import json
import re
import select
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from verifier.core import inline
from verifier.storage.repo.prepared import (
    DEFERS,
    PREPARE_AFTER,
    commit_deferred,
    drop_deferred,
)

UPGRADE_HINT = "railproof db upgrade"


class NotMigrated(RuntimeError):
    pass


SQLITE_SYNCHRONOUS = ("FULL", "NORMAL")
SQLITE_BUSY_TIMEOUT_S = 30  # how long a transaction waits for SQLite's write lock
# SQLite copies its WAL back into the database file (a checkpoint, fsynced) inside the commit
# that crosses its threshold, on the thread that committed: under load, an API request's
# commit. A Database on a file checkpoints from a thread of its own instead, this often
# (`Checkpointer`); the commits' own threshold stays only as a backstop for a process without
# one (docs/bench.md, "The submission path on SQLite on the event loop").
SQLITE_CHECKPOINT_EVERY_S = 0.1
SQLITE_AUTOCHECKPOINT_PAGES = 10_000
# Connections kept open per engine, on either database. A request holds one while it waits
# for the write lock too, so the pool must cover the concurrent requests of a busy API
# process: with SQLAlchemy's default of 5 on SQLite, every request past the fifth opened a
# connection (and ran its pragmas) and closed it again (docs/bench.md, "The HTTP path").
POOL_SIZE = 10
POOL_OVERFLOW = 20


def _json_dumps(value: Any) -> str:
    # JSON columns (evidence, audit data, event payloads) are written on every submission:
    # orjson, with the standard library for what it refuses (integers beyond 64 bits).
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value)


# SECURITY: a database error's text carries its statement's parameters unless hidden (a
# proof's payload, a session's memo), and errors are logged: hidden.
_ENGINE_OPTIONS = {
    "json_serializer": _json_dumps,
    "json_deserializer": orjson.loads,
    "hide_parameters": True,
}


def make_engine(
    url: str,
    sqlite_synchronous: str = "NORMAL",
    *,
    pg_lock_timeout_ms: int | None = None,
    pg_statement_timeout_ms: int | None = None,
) -> Engine:
    if url.startswith("sqlite"):
        sync = sqlite_synchronous.upper()
        if sync not in SQLITE_SYNCHRONOUS:
            raise ValueError(f"sqlite_synchronous: one of {', '.join(SQLITE_SYNCHRONOUS)}")
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S},
            **_sqlite_pool(url),
            **_ENGINE_OPTIONS,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # pragma: no cover - driver hook
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
            # WAL + NORMAL: a commit is durable once in the WAL file, fsynced at checkpoints
            # only; an application crash loses nothing, a power loss may lose the last commits.
            # FULL fsyncs the WAL on every commit (Settings.sqlite_synchronous).
            cur.execute(f"PRAGMA synchronous={sync}")
            cur.execute(f"PRAGMA wal_autocheckpoint={SQLITE_AUTOCHECKPOINT_PAGES}")
            cur.close()

        # Every transaction takes SQLite's write lock (BEGIN IMMEDIATE). Threads of this
        # process queue for it on a Python lock first: SQLite's own busy handler polls with
        # sleeps of up to 100 ms, so under concurrent requests a waiting writer slept long
        # after the lock was free (docs/bench.md, "The HTTP path"). Other processes still
        # meet SQLite's lock and its busy timeout; the Python lock only orders this one's.
        write_lock = threading.Lock()
        holders: set[int] = set()  # id() of the DBAPI connections holding write_lock
        commit, rollback = engine.dialect.do_commit, engine.dialect.do_rollback

        def _begin_immediate(dbapi_conn):  # pragma: no cover - driver hook
            # The dialect's own begin hook rather than a "begin" event listener: any connection
            # event listener turns on event dispatch around every statement this engine runs.
            # A failure here is wrapped like any statement's (Connection._begin_impl).
            # Bounded: a thread that opens a second transaction while it holds one falls
            # through to SQLite's busy timeout, as before, instead of waiting forever.
            if _READING.get():
                # Database.read: a snapshot beside the writer (WAL), no write lock taken.
                cur = dbapi_conn.cursor()
                try:
                    cur.execute("BEGIN DEFERRED")
                finally:
                    cur.close()
                return
            if inline.on_loop():
                _begin_on_loop(dbapi_conn)
                return
            held = write_lock.acquire(timeout=SQLITE_BUSY_TIMEOUT_S)
            if held:
                holders.add(id(dbapi_conn))
            cur = dbapi_conn.cursor()
            try:
                cur.execute("BEGIN IMMEDIATE")
            except BaseException:
                _release(dbapi_conn)
                raise
            finally:
                cur.close()

        def _begin_on_loop(dbapi_conn):  # pragma: no cover - driver hook
            # Work on the event loop (core.inline) shares its thread with every request of the
            # API process: waiting there for the write lock, on the Python lock or in SQLite's
            # busy handler, stalled them all (reads and /healthz too) for as long as a pool
            # thread, the worker or a migration held it. Here each try is non-blocking, and
            # the loop serves others between tries; the same deadline bounds the wait.
            deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
            pause = _LOCK_POLL_FIRST_S
            while not write_lock.acquire(blocking=False):
                if time.monotonic() >= deadline:
                    break  # SQLite's lock decides, as on a thread
                pause = _pause(pause)
            else:
                holders.add(id(dbapi_conn))
            cur = dbapi_conn.cursor()
            try:
                cur.execute("PRAGMA busy_timeout=0")
                try:
                    while True:
                        try:
                            cur.execute("BEGIN IMMEDIATE")
                            break
                        except sqlite3.OperationalError as e:
                            if not is_busy(e) or time.monotonic() >= deadline:
                                raise
                        pause = _pause(pause)
                finally:
                    # The transaction's own statements wait in SQLite's handler, as before.
                    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
            except BaseException:
                _release(dbapi_conn)
                raise
            finally:
                cur.close()

        def _release(dbapi_conn):  # pragma: no cover - driver hook
            key = id(dbapi_conn)
            if key in holders:
                holders.discard(key)
                write_lock.release()

        def _commit(dbapi_conn):  # pragma: no cover - driver hook
            try:
                commit(dbapi_conn)
            finally:
                _release(dbapi_conn)

        def _rollback(dbapi_conn):  # pragma: no cover - driver hook
            try:
                rollback(dbapi_conn)
            finally:
                _release(dbapi_conn)

        # This engine's dialect instance only (setattr: mypy refuses assigning to a method).
        setattr(engine.dialect, "do_begin", _begin_immediate)  # noqa: B010
        setattr(engine.dialect, "do_commit", _commit)  # noqa: B010
        setattr(engine.dialect, "do_rollback", _rollback)  # noqa: B010

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    url, prepare_threshold = _prepare_threshold(url)
    # Startup options, so they hold on every connection from its first statement (0: off).
    # None (migrations, tools): the server's own, so a long migration is not cut short.
    options = " ".join(
        f"-c {name}={int(ms)}"
        for name, ms in (
            ("lock_timeout", pg_lock_timeout_ms),
            ("statement_timeout", pg_statement_timeout_ms),
        )
        if ms is not None
    )
    # psycopg itself never prepares: the repo's statements are prepared by the repo
    # (storage.repo.prepared `_pipeline`), and psycopg answers any rollback after it has
    # prepared one of its own with DEALLOCATE ALL, which would drop the repo's too.
    connect_args: dict[str, Any] = {"prepare_threshold": None}
    if options:
        connect_args["options"] = options
    engine = create_engine(
        url,
        pool_size=POOL_SIZE,
        max_overflow=POOL_OVERFLOW,
        connect_args=connect_args,
        **_ENGINE_OPTIONS,
    )

    @event.listens_for(engine.pool, "connect")
    def _prepares(_dbapi_conn: Any, record: Any) -> None:  # pragma: no cover - pool hook
        record.info[PREPARE_AFTER] = prepare_threshold

    _ping_when_idle(engine)
    return engine


# Work on the event loop polls for SQLite's write lock: first after this long, then twice as
# long each time up to the last (SQLite's own handler sleeps up to 100 ms between tries).
_LOCK_POLL_FIRST_S = 0.0005
_LOCK_POLL_MAX_S = 0.01


def _pause(seconds: float) -> float:
    """Lets the loop serve other requests for `seconds`; the next pause's length."""
    inline.pause(seconds)
    return min(seconds * 2, _LOCK_POLL_MAX_S)


def _sqlite_pool(url: str) -> dict[str, int]:
    """A file's pool sized as PostgreSQL's; an in-memory database keeps SQLAlchemy's own (one
    connection per thread, which takes no size)."""
    db = make_url(url).database
    if not db or db == ":memory:" or "mode=memory" in url:
        return {}
    return {"pool_size": POOL_SIZE, "max_overflow": POOL_OVERFLOW}


# The repo prepares a statement on the server once a connection has run it this many times
# (psycopg's own default and rule): the hot path's statements then skip parsing and planning.
# Prepared statements belong to a server session, which PgBouncer in transaction mode does not
# keep for a client: there, put `prepare_threshold=none` in the URL's query (docs/scaling.md).
PREPARE_THRESHOLD = 5
# A pooled connection idle longer than this is pinged before it is handed out, so a server
# restart or a dropped connection costs a reconnect rather than a failed request. One used
# within it is known to be alive: pinging it too cost a round trip per transaction, about a
# tenth of a submission (docs/bench.md, "PostgreSQL").
PING_AFTER_IDLE_S = 1.0


def check_url(url: str) -> None:
    """ValueError when railproof could not open `url`: not a database URL, a database it does
    not run on, text that is not UTF-8, or a `prepare_threshold` that is not one. Said before
    any connection, so a command refuses a typo with a message rather than a driver's
    traceback."""
    # A byte that is not UTF-8 (the environment and argv keep it as a surrogate escape):
    # SQLite's driver and PostgreSQL's cannot pass it on, so `db upgrade` alone would reach a
    # file the other commands then cannot open.
    if not _encodable(url):
        raise ValueError("holds bytes that are not UTF-8 text: give the path or URL in UTF-8")
    try:
        u = make_url(url)
    except exc.ArgumentError:
        raise ValueError(
            "not a database URL (sqlite:///FILE or postgresql+psycopg://...)"
        ) from None
    backend = u.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise ValueError(f"railproof runs on sqlite or postgresql, not {backend!r}")
    if backend == "postgresql":
        _prepare_threshold(url)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# Query parameters whose value is a credential: libpq takes `password` and `sslpassword` in a
# URI's query, and a driver or a proxy may take another such key.
_SECRET_PARAM = re.compile(r"password|secret|key|token", re.IGNORECASE)


def shown_url(url: str) -> str:
    """`url` as messages and evidence show it: backend, user, host, port, database and query,
    with the password hidden wherever it is written (the user information, or a query
    parameter such as libpq's `?password=`)."""
    try:
        u = make_url(url)
        shown = u.set(query={}).render_as_string(hide_password=True)
    except Exception:  # not a URL: nothing of it is repeated
        return "<not a database URL>"
    # SECURITY: hide_password hides the user information's password only.
    params = [
        f"{k}={'***' if _SECRET_PARAM.search(k) else v}"
        for k, values in u.query.items()
        for v in (values if isinstance(values, tuple) else (values,))
    ]
    return shown + ("?" + "&".join(params) if params else "")


def _prepare_threshold(url: str) -> tuple[str, int | None]:
    """The URL without `prepare_threshold` (not a libpq parameter), and its value: an integer
    (0: prepare every statement at once) or `none` (never prepare)."""
    u = make_url(url)
    raw = u.query.get("prepare_threshold")
    if raw is None:
        return url, PREPARE_THRESHOLD
    value = raw[-1] if isinstance(raw, tuple) else raw
    rest = u.difference_update_query(["prepare_threshold"]).render_as_string(hide_password=False)
    if value.lower() == "none":
        return rest, None
    if not (value.isascii() and value.isdigit()):  # "²".isdigit() is true; int() refuses it
        raise ValueError("prepare_threshold: a whole number of executions, or none")
    return rest, int(value)


def _ping_when_idle(engine: Engine) -> None:
    """`pool_pre_ping`, for connections that sat idle in the pool (PING_AFTER_IDLE_S)."""

    @event.listens_for(engine.pool, "connect")
    @event.listens_for(engine.pool, "checkin")
    def _fresh(_dbapi_conn: Any, record: Any) -> None:  # pragma: no cover - pool hook
        if record is not None:
            record.info[_IDLE_SINCE] = time.monotonic()
            # Writes deferred by a transaction that never committed are never sent.
            drop_deferred(record.info)

    @event.listens_for(engine.pool, "checkout")
    def _checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:  # pragma: no cover
        since = record.info.get(_IDLE_SINCE)
        if (
            since is not None
            and time.monotonic() - since < PING_AFTER_IDLE_S
            and not _hung_up(dbapi_conn)
        ):
            return
        try:
            engine.dialect.do_ping(dbapi_conn)  # as pool_pre_ping does (outside a transaction)
        except Exception as e:
            # The pool discards this connection and checks out a fresh one.
            raise exc.DisconnectionError(str(e)) from e


_IDLE_SINCE = "railproof.idle_since"


def _hung_up(dbapi_conn: Any) -> bool:
    """Whether the server has written to (or closed) a connection idle in the pool, looked
    at without a round trip. Between transactions a live server sends nothing, so anything
    to read is its goodbye: a restart or an administrator's termination (FATAL, then the
    socket closed), or a proxy's cut. Such a connection is pinged, so the pool opens a fresh
    one instead of handing the request a dead one (a lost connection without a goodbye still
    fails the request's first statement: 503 database_unavailable)."""
    try:
        poller = select.poll()
        poller.register(dbapi_conn.fileno(), select.POLLIN | select.POLLPRI)
        return bool(poller.poll(0))
    except (AttributeError, OSError, ValueError, TypeError):
        return True  # no socket to look at (closed, or no poll here): pinged


def is_busy(error: BaseException) -> bool:
    """The database gave up waiting (a lock or statement timeout, or SQLite still locked after
    its busy timeout, or no pooled connection came free in time): the work was rolled back, or
    never began, and may be retried."""
    if isinstance(error, exc.TimeoutError):  # the pool's checkout
        return True
    orig = getattr(error, "orig", error)
    if isinstance(orig, sqlite3.OperationalError):
        return "locked" in str(orig)
    try:
        from psycopg import errors
    except ImportError:  # pragma: no cover - psycopg is installed with the package
        return False
    return isinstance(orig, (errors.LockNotAvailable, errors.QueryCanceled))


# SQLSTATEs of a server that ends or refuses the session: admin_shutdown (a fast shutdown or
# pg_terminate_backend), crash_shutdown, cannot_connect_now (starting up, or in recovery).
_SERVER_GONE = frozenset({"57P01", "57P02", "57P03"})


def is_unavailable(error: BaseException) -> bool:
    """The database could not be reached, or the connection was lost (a restart, a failover,
    a proxy's cut): no connection could be opened, or the one in use was closed. Unlike
    `is_busy`, the work's outcome is not known to have been rolled back: a connection lost
    during a COMMIT may have committed it."""
    if isinstance(error, exc.DBAPIError) and error.connection_invalidated:
        return True
    orig = getattr(error, "orig", error)
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is installed with the package
        return False
    if not isinstance(orig, psycopg.OperationalError):
        return False
    state = orig.sqlstate
    # No SQLSTATE: the client's own failure, to connect or on the connection (refused,
    # reset, closed); class 08 is the server's "connection exception".
    return state is None or state.startswith("08") or state in _SERVER_GONE


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option(
        "script_location", str(resources.files("verifier") / "storage" / "migrations")
    )
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def target_revision(url: str, revision: str) -> str | None:
    """The revision id `revision` names ("base" for none), or None when it names none by
    itself (a relative one, such as +1, or one Alembic cannot find)."""
    try:
        script = ScriptDirectory.from_config(alembic_config(url)).get_revision(revision)
    except Exception:  # alembic raises its own errors (and AssertionError) for these
        return None
    return "base" if script is None else script.revision


def head_revision(url: str) -> str:
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    if head is None:  # the package always ships its migrations
        raise RuntimeError("no migration revisions found")
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def require_migrated(engine: Engine) -> None:
    """The service refuses a database whose schema is not at the latest migration."""
    url = engine.url.render_as_string(hide_password=False)
    current, head = current_revision(engine), head_revision(url)
    if current != head:
        where = shown_url(url)
        if current is not None and not known_revision(url, current):
            raise NotMigrated(f"database {where} is {unknown_revision(current)}")
        state = "empty (never migrated)" if current is None else f"at {current}, head is {head}"
        raise NotMigrated(
            f"database {where} is {state}; "
            f"run `{UPGRADE_HINT}` (with RAILPROOF_DATABASE_URL set to it) first"
        )


def known_revision(url: str, revision: str) -> bool:
    """Whether this version's migrations include `revision` (a newer version's do not)."""
    try:
        return ScriptDirectory.from_config(alembic_config(url)).get_revision(revision) is not None
    except Exception:  # alembic raises its own errors for an unknown id
        return False


def unknown_revision(revision: str) -> str:
    return (
        f"at {revision}, a revision this version of railproof does not know: a newer version "
        "migrated it; run that version (a database is never migrated down)"
    )


# Where a Session made by `Database.sessions` carries the audit chain's key (verifier.audit).
AUDIT_KEY_INFO = "railproof.audit_key"


class Rider:
    """A write that goes first in the next transaction this context opens, and again in the
    one after should that one roll back, until a transaction carrying it commits
    (`Database.carrying`). With `finish`, the work's last transaction can carry a closing
    write too (`Database.finish`): `answer` is what it returned, once committed."""

    def __init__(
        self,
        db: Database,
        write: Callable[[Session], None],
        finish: Callable[[Session, Any], Any] | None = None,
    ):
        self.db = db
        self.write = write
        self.finish = finish
        self.committed = False
        self.aboard: Session | None = None  # the transaction open now, if any
        self.closing: Any = None  # what `finish` returned in the open transaction
        self.answer: Any = None  # ... once that transaction committed


_RIDER: ContextVar[Rider | None] = ContextVar("railproof_rider", default=None)
# Set while a Database.read transaction begins (SQLite: BEGIN DEFERRED, no write lock).
_READING: ContextVar[bool] = ContextVar("railproof_reading", default=False)


class Checkpointer:
    """Checkpoints a SQLite file's WAL every `every_s` seconds from a daemon thread of its own
    (PASSIVE: it never waits for or blocks a writer or a reader; what a reader still needs is
    copied on a later round). The file is opened read-write, never created: until it exists
    a round does nothing."""

    def __init__(self, path: str, every_s: float = SQLITE_CHECKPOINT_EVERY_S):
        self.path = path
        self.every_s = every_s
        self.rounds = 0  # checkpoints run (tests)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while not self._stop.wait(self.every_s):
                try:
                    if conn is None:
                        uri = f"file:{quote(self.path)}?mode=rw"
                        conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=1)
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.rounds += 1
                except sqlite3.Error:
                    continue  # not created yet, or busy: the next round
        finally:
            if conn is not None:
                conn.close()

    def halt(self) -> None:
        """Stop after the current round, without waiting for it."""
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


class Database:
    def __init__(
        self,
        url: str,
        sqlite_synchronous: str = "NORMAL",
        audit_key: bytes | None = None,
        *,
        pg_lock_timeout_ms: int = 5000,
        pg_statement_timeout_ms: int = 30000,
    ):
        self.url = url
        self.engine = make_engine(
            url,
            sqlite_synchronous,
            pg_lock_timeout_ms=pg_lock_timeout_ms,
            pg_statement_timeout_ms=pg_statement_timeout_ms,
        )
        self.audit_key = audit_key
        # The key is bound here, once, and reaches every append through the Session; it is
        # never written to the database. None: an unkeyed chain (verifier.audit.event_hash).
        self.sessions = sessionmaker(
            self.engine, expire_on_commit=False, info={AUDIT_KEY_INFO: audit_key, DEFERS: True}
        )
        self.postgres = is_postgres(self.engine)
        self._loop_holder: object | None = None  # the work on the loop in a transaction now
        path = sqlite_path(url)
        memory = path is None or str(path) in ("", ":memory:") or "mode=memory" in url
        self.checkpointer = None if self.postgres or memory else Checkpointer(str(path))
        if self.checkpointer is not None:
            # A Database dropped without dispose() still stops its thread.
            weakref.finalize(self, self.checkpointer.halt)

    @contextmanager
    def tx(self) -> Iterator[Session]:
        """One transaction: commit on success, roll back on any error. On PostgreSQL the
        deferred writes (storage.repo.prepared) go with the COMMIT, in one round trip.
        A rider (`carrying`) not yet committed is written first."""
        rider = _RIDER.get()
        if rider is None or rider.db is not self or rider.aboard is not None:
            with self._tx() as s:
                yield s
            return
        boarding = not rider.committed
        try:
            with self._tx() as s:
                rider.aboard = s
                if boarding:
                    rider.write(s)
                yield s
            rider.committed = True
            if rider.closing is not None:
                rider.answer = rider.closing
        finally:
            rider.aboard = None
            rider.closing = None

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A transaction that only reads. On SQLite it takes no write lock: a long walk (the
        audit chain's, an assurance report) reads a snapshot while writers go on, where a
        `tx` would stop every writer for its length, past their busy timeout on a large
        database. A write inside it is an error on SQLite."""
        token = _READING.set(True)
        try:
            with self._tx() as s:
                yield s
        finally:
            _READING.reset(token)

    def finish(self, s: Session, result: object) -> None:
        """The work of this context ends with transaction `s` and returns `result`: a rider
        that closes (an Idempotency-Key's completion, services.idempotency) writes its answer
        to `result` here, committed with the work's last changes rather than in a
        transaction of its own. Elsewhere nothing happens."""
        rider = _RIDER.get()
        if rider is None or rider.db is not self or rider.finish is None or rider.aboard is not s:
            return
        rider.closing = rider.finish(s, result)

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        # inline.transaction: work on the event loop holds SQLite's write lock until the end
        # of this block, so it must not hand the loop to another request before then.
        with self._loop_turn(), inline.transaction(), self.sessions.begin() as s:
            yield s
            if self.postgres and s.in_transaction():
                s.flush()
                commit_deferred(s.connection())

    @contextmanager
    def _loop_turn(self) -> Iterator[None]:
        """Work on the event loop (SQLite) opens its transactions one at a time. One waiting
        for the write lock (storage.db `_begin_on_loop`) hands the loop to other requests, and
        each of those would otherwise take a pooled connection and wait too: past the pool's
        size the next checkout blocked the loop's thread itself, so none of the waiters could
        resume (a frozen API for the pool's 30 s timeout). They wait here instead, before any
        connection is taken, sleeping on the loop between looks, for as long as a transaction
        waits for the lock itself (then busy, as it would be)."""
        if self.postgres or not inline.on_loop():
            yield
            return
        me = inline.current()
        if self._loop_holder is me:  # a transaction inside its own: no second turn
            yield
            return
        deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
        pause = _LOCK_POLL_FIRST_S
        while self._loop_holder is not None:
            if time.monotonic() >= deadline:
                raise exc.OperationalError(
                    "BEGIN IMMEDIATE", None, sqlite3.OperationalError("database is locked")
                )
            pause = _pause(pause)
        self._loop_holder = me
        try:
            yield
        finally:
            self._loop_holder = None

    @contextmanager
    def carrying(
        self,
        write: Callable[[Session], None],
        finish: Callable[[Session, Any], Any] | None = None,
    ) -> Iterator[Rider]:
        """Within the block, `write` rides with the first of this context's transactions
        that commits, written at its start, instead of taking a commit of its own (an
        Idempotency-Key claim: services.idempotency; on PostgreSQL it goes behind the work's
        first statement and is checked before that statement answers, so the work must do
        nothing outside the database before its first statement). What `write` raises rolls that
        transaction back and leaves the block through whatever opened it; `Rider.committed`
        tells afterwards whether it was written. `finish(s, result)` is called by
        `Database.finish` in the work's last transaction; `Rider.answer` holds what it
        returned once that transaction committed."""
        rider = Rider(self, write, finish)
        token = _RIDER.set(rider)
        try:
            yield rider
        finally:
            _RIDER.reset(token)

    def dispose(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.stop()
        self.engine.dispose()


def sqlite_path(url: str) -> Path | None:
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///") :])
    return None
