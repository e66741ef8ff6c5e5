"""`railproof serve --workers N`: every API process counts into one directory and /metrics
sums them, so every scrape (whichever process answers it) gives the same totals.

Real servers on 127.0.0.1 with a SQLite file and recorded chains. Requests are sent on fresh
connections from several threads until at least two processes have counted some (the kernel
hands connections to the processes sharing the socket), then each of several scrapes must
show exactly what was sent."""

from __future__ import annotations

import http.client
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.procs import Api, base_env, migrate

TOKENS = {"svc-token": ["alice"]}
HEALTHZ = {"route": "/healthz", "method": "GET", "status": "200"}
MAX_REQUESTS = 800


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    env = base_env(
        database_url=f"sqlite:///{tmp}/metrics.db",
        chain="cassette",
        clock="2026-01-01T00:00:00Z",
        service_tokens=json.dumps(TOKENS),
    )
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(extra)
    migrate(env)
    return env


def _get(api: Api, path: str) -> tuple[int, str]:
    """GET on a fresh connection (any process may take it); http.client, as a new httpx
    client per request costs more than the request."""
    c = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read().decode()
    finally:
        c.close()


def _scrape(api: Api) -> float:
    """/healthz requests counted, from one /metrics answer on a fresh connection."""
    status, text = _get(api, "/metrics")
    assert status == 200, text
    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "railproof_http_requests_total"
        and all(s.labels.get(k) == v for k, v in HEALTHZ.items())
    )


def _counted_per_process(metrics_dir: Path) -> dict[str, float]:
    """/healthz requests in each process's own counter file (counter_<pid>.db)."""
    out = {}
    for f in sorted(metrics_dir.glob("counter_*.db")):
        n = sum(
            s.value
            for m in MultiProcessCollector.merge([str(f)])
            for s in m.samples
            if s.name == "railproof_http_requests_total"
            and all(s.labels.get(k) == v for k, v in HEALTHZ.items())
        )
        out[f.stem.removeprefix("counter_")] = n
    return out


def _one(api: Api) -> None:
    assert _get(api, "/healthz")[0] == 200


def _spread(api: Api, metrics_dir: Path) -> int:
    """Send /healthz requests in rounds until two processes have counted some; returns how
    many were sent."""
    sent = 0
    with ThreadPoolExecutor(8) as pool:
        while sent < MAX_REQUESTS:
            list(pool.map(_one, [api] * 40))
            sent += 40
            if sum(1 for n in _counted_per_process(metrics_dir).values() if n > 0) >= 2:
                return sent
    raise AssertionError(f"{MAX_REQUESTS} requests all went to one process")


def _assert_every_scrape_sums(api: Api, want: float) -> None:
    # Several scrapes on fresh connections: each process answers some of them.
    seen = {_scrape(api) for _ in range(12)}
    assert seen == {want}, seen


def test_given_directory_is_cleared_at_start_and_summed_across_workers(tmp_path):
    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir()
    # Counts a previous run left behind: a restarted server must not add them to its own.
    stale = MmapedDict(str(metrics_dir / "counter_999999.db"))
    stale.write_value(
        mmap_key(
            "railproof_http_requests",
            "railproof_http_requests_total",
            list(HEALTHZ),
            list(HEALTHZ.values()),
            "HTTP requests answered, by route template, method and status",
        ),
        1000.0,
        0.0,
    )
    stale.close()
    (metrics_dir / "notes.txt").write_text("not ours: left alone")
    env = _env(tmp_path, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    api = Api(env, tmp_path, workers=2)
    try:
        api.wait_ready()
        assert not (metrics_dir / "counter_999999.db").exists()
        assert (metrics_dir / "notes.txt").read_text() == "not ours: left alone"
        before = _scrape(api)  # wait_ready's own /healthz requests
        assert before < 1000
        sent = _spread(api, metrics_dir)
        per_process = _counted_per_process(metrics_dir)
        assert sum(1 for n in per_process.values() if n > 0) >= 2, per_process
        assert sum(per_process.values()) == before + sent
        _assert_every_scrape_sums(api, before + sent)
    finally:
        api.stop()


def test_workers_get_a_private_directory_removed_at_exit(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = _env(tmp_path, TMPDIR=str(tmp))  # where serve makes its private directory
    api = Api(env, tmp_path, workers=2)
    try:
        api.wait_ready()
        made = list(tmp.glob("railproof-metrics-*"))
        assert len(made) == 1, made
        before = _scrape(api)
        sent = _spread(api, made[0])
        _assert_every_scrape_sums(api, before + sent)
    finally:
        api.stop()
    assert not made[0].exists(), "the private metrics directory outlived the server"
