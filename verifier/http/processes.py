"""`railproof serve --workers N`: N API processes, each listening on a socket of its own,
all bound to the one address with SO_REUSEPORT, so the kernel spreads new connections over
them (by a hash of each connection's addresses).

uvicorn's own multi-process mode binds one socket and shares it: connections made while one
process is still starting are all accepted by the one already up, and a client that keeps
its connection (a backend's keep-alive pool, a load balancer's) stays with it. Measured with
eight clients connecting at the server's first answer and two processes, all eight went to
one process in three runs out of five while the other idled (docs/bench.md, "Two API
processes, one doing the work").

Each process is uvicorn's (`uvicorn.supervisors.multiprocess.Process`: spawned, pinged, ended
with SIGTERM) serving uvicorn's `Server` on its own socket; this module only binds the
sockets and keeps one process per socket alive, as uvicorn's supervisor keeps its processes.
Where the platform has no SO_REUSEPORT, `serve` falls back to uvicorn's mode.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from typing import Any

from uvicorn import Config
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Process

log = logging.getLogger("railproof.serve")

# How often the supervisor looks at its processes, and how long a ping may take.
_LOOK_EVERY_S = 0.5
_PING_TIMEOUT_S = 5.0


def spreads() -> bool:
    """Whether this platform can give each process a socket of its own on one address."""
    return hasattr(socket, "SO_REUSEPORT")


def bind(host: str, port: int, backlog: int) -> socket.socket:
    """A listening socket on (host, port) that other such sockets may share. Listening from
    here on, before its process starts: the kernel spreads connections over listening
    sockets only, so one not listening yet would leave every early connection to the others;
    a connection sent to it waits in its backlog until its process serves (or a replacement
    for one that died)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def check_listen(host: str, port: int) -> None:
    """Raise the OSError binding (host, port) meets, as uvicorn binds (SO_REUSEADDR): an
    address in use, a privileged port, a host that is not this machine's. uvicorn's own
    failure says neither which option to change nor exits 2; the socket is closed again,
    for uvicorn to bind."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))


class Processes:
    """One uvicorn process per socket, replaced when it dies, all ended on SIGINT, SIGTERM or
    SIGHUP (a hang-up must not leave the processes serving without their supervisor)."""

    def __init__(self, config: Config, workers: int):
        self.config = config
        # All bound here, before any process starts: an address in use fails `serve` at once.
        first = bind(config.host, config.port, config.backlog)
        port = first.getsockname()[1]
        more = (bind(config.host, port, config.backlog) for _ in range(workers - 1))
        self.sockets = [first, *more]
        self.processes: list[Process] = []
        self.should_exit = threading.Event()
        self.failed = False

    def run(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._exit)
        try:
            self.processes = [self._start(sock) for sock in self.sockets]
            while not self.should_exit.wait(_LOOK_EVERY_S):
                self._keep_alive()
        finally:
            for p in self.processes:
                p.terminate()
            for p in self.processes:
                p.join()
            for sock in self.sockets:
                sock.close()

    def _exit(self, signum: int, frame: Any) -> None:
        self.should_exit.set()

    def _start(self, sock: socket.socket) -> Process:
        p = _Process(self.config, [sock])
        p.start()
        return p

    def _keep_alive(self) -> None:
        for i, p in enumerate(self.processes):
            if p.is_alive(timeout=_PING_TIMEOUT_S) or self.should_exit.is_set():
                continue
            p.kill()  # hung, or gone already
            p.join()
            if p.exitcode == STARTUP_FAILURE:
                # It never served: the app or the database is broken, and a new process
                # would fail the same way.
                log.error("API process %s failed to start; stopping", p.pid)
                self.failed = True
                self.should_exit.set()
                return
            log.warning("API process %s ended (exit code %s); starting another", p.pid, p.exitcode)
            self.processes[i] = self._start(self.sockets[i])


class _Process(Process):
    """uvicorn's process, which ends (as on SIGTERM: its requests answered first) once its
    supervisor is gone. A supervisor killed outright (SIGKILL: the OOM killer, a deploy tool)
    runs no clean-up: its processes went on serving for good, never replaced nor stopped,
    holding the port, so a `serve` started again could not bind it, or served beside them."""

    def target(self, sockets: list[socket.socket] | None = None) -> None:  # pragma: no cover
        threading.Thread(
            target=_end_when_orphaned, args=(os.getppid(),), daemon=True, name="supervisor"
        ).start()
        super().target(sockets)


def _end_when_orphaned(supervisor: int) -> None:  # pragma: no cover - runs in the process
    # An orphan is adopted by another process (init, a subreaper): its parent id changes.
    while os.getppid() == supervisor:
        time.sleep(_LOOK_EVERY_S)
    log.warning("the supervisor (pid %s) is gone; this API process ends", supervisor)
    os.kill(os.getpid(), signal.SIGTERM)
