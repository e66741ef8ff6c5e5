"""A PostgreSQL outage as the API and the worker meet it: a TCP proxy in front of the server
that the test takes down (listener closed, every connection cut: a restart, a failover) and
brings back, and the termination of every connection to one test database (what a server
restart does to the connections a pool holds)."""

from __future__ import annotations

import socket
import threading
import time

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.procs import DB_PREFIX


class CutProxy:
    """Forwards 127.0.0.1:`port` to `target` until `down()`; `up()` listens again."""

    def __init__(self, port: int, target: tuple[str, int] = ("127.0.0.1", 5432)):
        self.port = port
        self.target = target
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.up()

    def through(self, url: str) -> str:
        """`url` (on `target`) as reached through this proxy."""
        return make_url(url).set(host="127.0.0.1", port=self.port).render_as_string(False)

    def up(self) -> None:
        if self._listener is not None:
            return
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(64)
        self._listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def down(self) -> None:
        ls, self._listener = self._listener, None
        if ls is not None:
            _shut(ls)
        with self._lock:
            socks, self._socks = list(self._socks), set()
        for s in socks:
            _shut(s)

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                client, _ = ls.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._socks.update((client, server))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def _shut(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


def terminate_backends(admin_url: str, url: str, timeout: float = 10.0) -> int:
    """End every connection to `url`'s database (a test's own), as a server restart does, and
    wait until they are gone. How many there were."""
    name = make_url(url).database
    assert name and name.startswith(DB_PREFIX), name  # never another database's
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    others = "FROM pg_stat_activity WHERE datname = :d AND pid <> pg_backend_pid()"
    try:
        with admin.connect() as c:
            n = c.execute(text(f"SELECT count(pg_terminate_backend(pid)) {others}"), {"d": name})
            ended = int(n.scalar() or 0)
            deadline = time.monotonic() + timeout
            while c.execute(text(f"SELECT count(*) {others}"), {"d": name}).scalar():
                assert time.monotonic() < deadline, "connections still open"
                time.sleep(0.02)
    finally:
        admin.dispose()
    return ended
