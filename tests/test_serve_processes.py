"""`railproof serve --workers N` (verifier/http/processes.py): each API process listens on a
socket of its own on the one address (SO_REUSEPORT), so keep-alive connections opened in a
burst are spread over the processes instead of all going to the one that waits first; a
process that dies is replaced; SIGTERM (or a hang-up) ends them all.

Real servers on 127.0.0.1 with a SQLite file and recorded chains. Which process holds a
connection is read from /proc: the socket inodes each process has open, matched against the
established connections to the server's port in /proc/net/tcp."""

from __future__ import annotations

import http.client
import os
import signal
import threading
from pathlib import Path

import pytest

from tests.procs import Api, base_env, migrate, wait_until
from verifier.http import processes

pytestmark = pytest.mark.skipif(
    not processes.spreads() or not Path("/proc/net/tcp").exists(),
    reason="SO_REUSEPORT and /proc are Linux's",
)

BURST = 16


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:  # its parent
            out.append(int(entry))
    return out


def _api_processes(api: Api) -> list[int]:
    """The processes serving: the supervisor's children that listen on the port (not the
    multiprocessing helper it also starts)."""
    return [p for p in _children(api.pid) if _held(p, api.port, listening=True)]


def _established(port: int) -> set[int]:
    """Socket inodes of the server side of established connections to `port`."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, inode = fields[1], fields[3], int(fields[9])
        if int(local.split(":")[1], 16) == port and state == "01":  # TCP_ESTABLISHED
            inodes.add(inode)
    return inodes


def _listening(port: int) -> set[int]:
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "0A":  # TCP_LISTEN
            inodes.add(int(fields[9]))
    return inodes


def _sockets(pid: int) -> set[int]:
    out = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                out.add(int(target[8:-1]))
    except OSError:
        pass
    return out


def _held(pid: int, port: int, listening: bool = False) -> int:
    wanted = _listening(port) if listening else _established(port)
    return len(_sockets(pid) & wanted)


def _burst(api: Api) -> list[http.client.HTTPConnection]:
    """BURST keep-alive connections opened at once, each answered once and left open."""
    barrier = threading.Barrier(BURST)
    conns: list[http.client.HTTPConnection] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def one() -> None:
        try:
            c = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
            barrier.wait(10)
            c.request("GET", "/healthz")
            r = c.getresponse()
            r.read()
            assert r.status == 200
            with lock:
                conns.append(c)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(BURST)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not errors, errors
    return conns


@pytest.fixture
def env(tmp_path):
    e = base_env(
        database_url=f"sqlite:///{tmp_path}/serve.db",
        chain="cassette",
        clock="2026-01-01T00:00:00Z",
        service_tokens='{"svc-token": ["alice"]}',
    )
    e.pop("PROMETHEUS_MULTIPROC_DIR", None)
    migrate(e)
    return e


def _answers(api: Api) -> bool:
    """One /healthz answered (by any process), as a client starting up would look."""
    try:
        c = http.client.HTTPConnection("127.0.0.1", api.port, timeout=2)
        try:
            c.request("GET", "/healthz")
            return c.getresponse().status == 200
        finally:
            c.close()
    except OSError:
        return False


def test_each_process_listens_on_a_socket_of_its_own(env, tmp_path):
    """uvicorn's processes share the one socket it binds; here each has its own (and only
    its own) on the port."""
    api = Api(env, tmp_path, workers=3).wait_ready()
    try:
        wait_until("three API processes listening", lambda: len(_api_processes(api)) == 3, 30)
        listening = _listening(api.port)
        mine = [_sockets(pid) & listening for pid in _api_processes(api)]
        assert [len(m) for m in mine] == [1, 1, 1], mine
        assert len(set().union(*mine)) == 3, mine
    finally:
        api.stop()


def test_connections_opened_at_once_are_spread_over_the_processes(env, tmp_path):
    """A burst of keep-alive connections as soon as the server first answers, as a backend
    (or the bench) starts: with one shared socket the process that was up first took most or
    all of them (16/0, 14/2, 13/3 measured); with a socket each, where a connection goes is
    decided when it connects, and one sent to a process still starting waits for it."""
    api = Api(env, tmp_path, workers=2)
    try:
        wait_until("the first answer", lambda: _answers(api), 30)
        conns = _burst(api)  # every one answered: both processes serve by now
        try:
            pids = _api_processes(api)
            held = {pid: _held(pid, api.port) for pid in pids}
            assert len(pids) == 2 and sum(held.values()) == BURST, held
            # All 16 to one socket by the kernel's hash: a chance of 2 in 65,536.
            assert all(n > 0 for n in held.values()), held
        finally:
            for c in conns:
                c.close()
    finally:
        api.stop()


@pytest.mark.parametrize("ending", [signal.SIGTERM, signal.SIGHUP])
def test_a_process_that_dies_is_replaced_and_a_signal_ends_them_all(env, tmp_path, ending):
    api = Api(env, tmp_path, workers=2).wait_ready()
    try:
        wait_until("two API processes listening", lambda: len(_api_processes(api)) == 2, 30)
        first = _api_processes(api)
        os.kill(first[0], signal.SIGKILL)
        wait_until(
            "a replacement listening",
            lambda: (
                len(set(_api_processes(api)) - set(first)) == 1 and len(_api_processes(api)) == 2
            ),
            30,
        )
        # Every socket serves again: a burst is answered in full.
        for c in _burst(api):
            c.close()
        serving = _api_processes(api)
        os.kill(api.pid, ending)  # to the supervisor alone: it ends its processes
        assert api._reap(20), api.output()
        assert api.popen.returncode == 0, api.output()
        for pid in serving:
            assert not Path(f"/proc/{pid}").exists() or "Z" in _state(pid), pid
    finally:
        api.stop()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_every_process_writes_the_request_log(env, tmp_path):
    """The request log (JSON, redacted) the runbook reads comes from every API process, not
    only from a single-process server: spawned processes configure logging themselves."""
    api = Api(env, tmp_path, workers=2).wait_ready()
    try:
        wait_until("two API processes listening", lambda: len(_api_processes(api)) == 2, 30)
        for c in _burst(api):
            c.request("GET", "/v1/payment-sessions/nope", headers={"Authorization": "Bearer x"})
            c.getresponse().read()
            c.close()

        def logged() -> list[dict]:
            import json

            api.output()  # flushes
            text = api.log.read_text(errors="replace")
            lines = [ln for ln in text.splitlines() if '"railproof.request"' in ln]
            return [json.loads(ln) for ln in lines]

        wait_until("request lines logged", lambda: len(logged()) >= 2 * BURST, 15)
        assert {line["pid"] for line in logged()} == set(_api_processes(api))
        assert {line.get("status") for line in logged()} >= {200, 401}
        assert "Bearer x" not in api.output()
    finally:
        api.stop()
