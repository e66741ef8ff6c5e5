"""Shared fixtures: an engine on SQLite and on PostgreSQL (RAILPROOF_TEST_POSTGRES_URL), the
fake rail, and an HTTP client. PostgreSQL tests skip with a reason when no URL is given, and
fail instead of skipping under CI.

Each test gets a database of its own, migrated to head: on SQLite a copy of one file migrated
once per run; on PostgreSQL a database created from a migrated template. Creating one costs
~0.6 s of the server's disk syncs, so a background thread keeps a few ready and drops used
ones while the tests run."""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from tests.fake_rail import ScriptedChain, catalog_with_fake
from verifier.core.config import Settings
from verifier.core.engine import Engine
from verifier.http.api import create_app
from verifier.storage.db import Database, upgrade

PG_URL = os.environ.get("RAILPROOF_TEST_POSTGRES_URL")
SERVICE_TOKEN = "svc-token-alice"
OTHER_SERVICE_TOKEN = "svc-token-bob"
STAFF_TOKEN = "staff-token-ops1"
STAFF_TOKEN_2 = "staff-token-ops2"
CLOCK = datetime(2026, 1, 1, tzinfo=UTC)
# Several checkouts may share a server: RAILPROOF_TEST_DB_PREFIX names their databases apart.
_DB_PREFIX = os.environ.get("RAILPROOF_TEST_DB_PREFIX", "railproof_")
_TEMPLATE = _DB_PREFIX + "tpl_" + uuid.uuid4().hex[:8]


def _pg_admin():
    return create_engine(PG_URL, isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    if not PG_URL:
        if os.environ.get("CI"):
            pytest.fail("RAILPROOF_TEST_POSTGRES_URL is unset under CI: PostgreSQL tests must run")
        pytest.skip(
            "PostgreSQL tests skipped: set RAILPROOF_TEST_POSTGRES_URL "
            "(e.g. postgresql+psycopg://postgres@127.0.0.1:5432/postgres)"
        )
    admin = _pg_admin()
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{_TEMPLATE}"'))
    upgrade(_with_db(PG_URL, _TEMPLATE))
    create_engine(_with_db(PG_URL, _TEMPLATE)).dispose()
    yield _TEMPLATE
    spares = _SPARES.pop(_TEMPLATE, None)
    if spares is not None:
        spares.close()
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{_TEMPLATE}" WITH (FORCE)'))
    admin.dispose()


def _with_db(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


class _Spares:
    """Databases created from the template ahead of need, and used ones dropped, by two
    background threads (one creates, one drops: a test takes less than a create and a drop
    together): the tests' own time hides the server's."""

    READY = 3

    def __init__(self, template: str):
        self.template = template
        self.admin = _pg_admin()
        self.ready: queue.Queue[str] = queue.Queue()
        self.creates: queue.Queue[str | None] = queue.Queue()
        self.drops: queue.Queue[str | None] = queue.Queue()
        self.workers = [
            threading.Thread(target=self._run, args=(self.creates, True), daemon=True),
            threading.Thread(target=self._run, args=(self.drops, False), daemon=True),
        ]
        for w in self.workers:
            w.start()
        for _ in range(self.READY):
            self.creates.put(_DB_PREFIX + "t_" + uuid.uuid4().hex[:12])

    def _run(self, jobs: queue.Queue[str | None], create: bool) -> None:
        while (name := jobs.get()) is not None:
            with self.admin.connect() as c:
                if create:
                    c.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"'))
                else:
                    c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            if create:
                self.ready.put(name)

    def take(self) -> str:
        self.creates.put(_DB_PREFIX + "t_" + uuid.uuid4().hex[:12])
        return self.ready.get(timeout=120)

    def give_back(self, name: str) -> None:
        self.drops.put(name)

    def close(self) -> None:
        self.creates.put(None)
        self.drops.put(None)
        for w in self.workers:
            w.join(timeout=120)
        while not self.ready.empty():
            with self.admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{self.ready.get()}" WITH (FORCE)'))
        self.admin.dispose()


_SPARES: dict[str, _Spares] = {}


def make_pg_db(template: str) -> tuple[str, callable]:
    """A fresh database migrated to head, and the function that drops it."""
    spares = _SPARES.get(template)
    if spares is None:
        spares = _SPARES[template] = _Spares(template)
    name = spares.take()
    return _with_db(PG_URL, name), lambda: spares.give_back(name)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("template") / "railproof.db"
    upgrade(f"sqlite:///{path}")
    return str(path)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path) -> Iterator[str]:
    if request.param == "sqlite":
        # A copy of the migrated template (the backup API copies a consistent database).
        target = tmp_path / "railproof.db"
        with (
            sqlite3.connect(request.getfixturevalue("sqlite_template")) as src,
            sqlite3.connect(target) as dst,
        ):
            src.backup(dst)
        src.close()
        dst.close()
        yield f"sqlite:///{target}"
        return
    template = request.getfixturevalue("pg_template")
    url, drop = make_pg_db(template)
    yield url
    drop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_url(request, tmp_path) -> Iterator[str]:
    """An empty database, never migrated (a migration test brings it to the revision it
    needs)."""
    if request.param == "sqlite":
        (tmp_path / "empty.db").touch()
        yield f"sqlite:///{tmp_path}/empty.db"
        return
    request.getfixturevalue("pg_template")  # skips (or fails under CI) without PostgreSQL
    # From template0, not from the migrated template.
    url, drop = make_pg_db("template0")
    yield url
    drop()


def make_settings(db_url: str, **kw) -> Settings:
    base = dict(
        database_url=db_url,
        chain="cassette",
        service_tokens={SERVICE_TOKEN: ["alice", "alice-2"], OTHER_SERVICE_TOKEN: ["bob"]},
        staff_tokens={STAFF_TOKEN: "ops1", STAFF_TOKEN_2: "ops2"},
        apply_rail_allowlist=["solana_usdc", "fake_live"],
        clock=CLOCK,
        env={},
        audit_key="test-audit-key",
    )
    base.update(kw)
    return Settings(**base)


@pytest.fixture
def chain() -> ScriptedChain:
    return ScriptedChain()


@pytest.fixture
def db(db_url) -> Iterator[Database]:
    """The database handle alone (no engine), on the test's database."""
    d = Database(db_url)
    yield d
    d.dispose()


@pytest.fixture
def engine(db_url, chain) -> Iterator[Engine]:
    e = Engine(make_settings(db_url), catalog=catalog_with_fake())
    e.chains.set_transport("fakenet", chain)
    e.ensure_rail_states()
    yield e
    e.db.dispose()


@pytest.fixture
def client(engine) -> Iterator[TestClient]:
    with TestClient(create_app(engine), raise_server_exceptions=False) as c:
        yield c


def auth(token: str = SERVICE_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """A test that runs `serve` or `worker` in process configures the root logger with the
    stderr of that moment (pytest's capture, closed once the test ends): later tests' log
    lines would meet a closed stream. Each test gets the root logger back as it was."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
