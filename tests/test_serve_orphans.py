"""`railproof serve --workers N` whose supervisor is killed outright (SIGKILL: the OOM killer, a
deploy tool's kill -9 of the service's pid) runs no clean-up: its API processes went on
serving without it. Each ends on its own now once its supervisor is gone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import httpx
import pytest

from tests.procs import Api, base_env, migrate, wait_until
from tests.test_pg_concurrency import pg_db  # noqa: F401

TOKENS = dict(
    service_tokens=json.dumps({"svc-1": ["alice"]}), staff_tokens=json.dumps({"staff-1": "ops1"})
)


@pytest.fixture
def procs() -> Iterator[list]:
    started: list = []
    yield started
    for p in started:
        p.stop()


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as f:
            out += [int(c) for c in f.read().split()]
    return out


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_api_processes_do_not_outlive_a_killed_supervisor(pg_db, procs, tmp_path):  # noqa: F811
    """`railproof serve --workers 2` whose supervisor is SIGKILLed (the OOM killer, a deploy
    tool's kill -9 of the service's pid): its API processes must not go on serving without
    it. They did, for good: never replaced, never stopped, holding the port, so a restarted
    `serve --workers 1` could not bind it and one with more workers served beside them (old
    code after a deploy)."""
    env = base_env(database_url=pg_db.url, **TOKENS)
    migrate(env)
    api = Api(env, tmp_path, workers=2)
    procs.append(api)
    api.wait_ready()
    kids = _children(api.pid)
    assert kids, "serve --workers 2 started no API processes"
    try:
        os.kill(api.pid, 9)  # the supervisor only, as the OOM killer would
        api.popen.wait(10)
        try:
            wait_until(
                "the API processes to end with their supervisor",
                lambda: not any(_running(k) for k in kids),
                10.0,
            )
        except AssertionError:
            served = None
            try:
                served = httpx.get(api.url + "/healthz", timeout=3).status_code
            except httpx.HTTPError:
                pass
            alive = [k for k in kids if _running(k)]
            raise AssertionError(
                f"API processes {alive} still run 10 s after their supervisor was killed; "
                f"GET /healthz on its port answers {served}"
            ) from None
    finally:
        for k in kids:  # only what this test started
            try:
                os.kill(k, 9)
            except ProcessLookupError:
                pass
