"""Real railproof processes for the multi-process tests: the API (`railproof serve`), workers
(`railproof worker`) and CLI commands, each started by the test with its own environment on
127.0.0.1, and a fresh PostgreSQL database migrated by `railproof db upgrade`.

Every wait has a deadline; every process is started in its own process group so the test can
SIGKILL exactly what it started (uvicorn's worker children included) and nothing else.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text

RAILPROOF = str(Path(sys.executable).parent / "railproof")
REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 30.0
AUDIT_KEY = b"test-audit-key"
CLI_TIMEOUT_S = 60.0
# The tests' own databases are named with this prefix (several checkouts sharing a server).
DB_PREFIX = os.environ.get("RAILPROOF_TEST_DB_PREFIX", "railproof_")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(**railproof: str) -> dict[str, str]:
    """The parent's environment without any RAILPROOF_* setting, plus the given ones
    (`database_url="…"` → RAILPROOF_DATABASE_URL)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAILPROOF_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["RAILPROOF_AUDIT_KEY"] = AUDIT_KEY.decode()  # a test deployment's own key
    for k, v in railproof.items():
        env["RAILPROOF_" + k.upper()] = v
    return env


def wait_until(
    what: str, check: Callable[[], bool], timeout: float, interval: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


class Proc:
    """One started process (and its children), output to a log file."""

    def __init__(self, name: str, args: list[str], env: Mapping[str, str], log_dir: Path):
        self.name = name
        self.log = log_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self._fh = self.log.open("wb")
        self.popen = subprocess.Popen(
            args,
            env=dict(env),
            cwd=REPO,
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        self._fh.flush()
        return self.log.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        """SIGKILL: no shutdown handler, no rollback by the process itself."""
        self._signal(signal.SIGKILL)
        self._reap(10)

    def stop(self) -> None:
        if self.alive():
            self._signal(signal.SIGTERM)
            if not self._reap(10):
                self._signal(signal.SIGKILL)
                self._reap(10)
        self._fh.close()

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)  # the group this process leads (started with a new session)
        except ProcessLookupError:
            pass

    def _reap(self, timeout: float) -> bool:
        try:
            self.popen.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False


class Api(Proc):
    def __init__(
        self,
        env: Mapping[str, str],
        log_dir: Path,
        workers: int = 1,
        port: int | None = None,
        name: str = "api",
    ):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(
            name,
            [
                RAILPROOF,
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                str(workers),
            ],
            env,
            log_dir,
        )
        self.workers = workers

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> Api:
        # With several uvicorn workers, every one must answer: ask until `workers` distinct
        # connections succeed in a row (they share one listening socket).
        def ready() -> bool:
            if not self.alive():
                raise AssertionError(f"{self.name} exited: {self.output()}")
            try:
                for _ in range(self.workers * 2):
                    with httpx.Client(timeout=2.0) as c:
                        if c.get(self.url + "/healthz").status_code != 200:
                            return False
                return True
            except httpx.HTTPError:
                return False

        wait_until(f"{self.name} on {self.url}", ready, timeout, 0.1)
        return self


class Worker(Proc):
    def __init__(
        self,
        env: Mapping[str, str],
        log_dir: Path,
        name: str,
        interval: float = 0.2,
        once: bool = False,
    ):
        args = [RAILPROOF, "worker", "--name", name, "--interval", str(interval)]
        if once:
            args.append("--once")
        super().__init__(name, args, env, log_dir)

    def wait(self, timeout: float = CLI_TIMEOUT_S) -> int:
        try:
            return self.popen.wait(timeout)
        finally:
            self._fh.close()


def cli(
    args: list[str], env: Mapping[str, str], timeout: float = CLI_TIMEOUT_S
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [RAILPROOF, *args], env=dict(env), cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def cli_json(args: list[str], env: Mapping[str, str]) -> Any:
    out = cli([*args, "--json"], env)
    assert out.returncode == 0, (
        f"railproof {' '.join(args)}: {out.returncode}\n{out.stdout}\n{out.stderr}"
    )
    return json.loads(out.stdout)


class PgDatabase:
    """A fresh, empty PostgreSQL database on the test server; dropped (with its connections)
    on close."""

    def __init__(self, admin_url: str):
        self.name = DB_PREFIX + "p_" + uuid.uuid4().hex[:12]
        base, _, _ = admin_url.rpartition("/")
        self.url = f"{base}/{self.name}"
        self._admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with self._admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{self.name}"'))

    def close(self) -> None:
        with self._admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        self._admin.dispose()


def migrate(env: Mapping[str, str]) -> None:
    out = cli(["db", "upgrade"], env)
    assert out.returncode == 0, out.stderr
