"""`railproof bench --compare / --http / --worker / --scale / --plot` with tiny sizes: the JSON
keys scripts read are there, with their types, and nothing failed. Nothing here looks at how
fast anything was (timings depend on the machine; `railproof bench` measures them)."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from tests.conftest import make_pg_db
from verifier.cli.main import app
from verifier.storage.db import Database
from verifier.storage.models import Proof
from verifier.tools import bench_http, bench_plot, bench_worker

HTTP_KEYS = {
    "http_submit_per_s": float,
    "http_p50_ms": float,
    "http_p95_ms": float,
    "http_p99_ms": float,
    "http_session_p99_ms": float,
    "http_errors": int,
    "http_submissions": int,
}


def _audit_intact(url: str) -> bool:
    from verifier.services import audit

    db = Database(
        url, audit_key=bench_http.server_env(url, Path("."))["RAILPROOF_AUDIT_KEY"].encode()
    )
    try:
        with db.tx() as s:
            return audit.verify_chain(s).ok
    finally:
        db.dispose()


@pytest.mark.slow
def test_http_mode_on_sqlite_reports_every_key_and_no_error(tmp_path):
    url = f"sqlite:///{tmp_path}/http.db"
    out = bench_http.run_http_bench(proofs=24, database_url=url, clients=3, api_workers=1)
    for key, kind in HTTP_KEYS.items():
        assert isinstance(out[key], kind), (key, out[key])
    assert out["http_errors"] == 0
    assert out["http_submissions"] == 24  # every timed unit came back verified
    # Again on the same database: new transfers under new Idempotency-Keys, really submitted
    # (not the first run's answers replayed, nor refused as keys used with other bodies).
    again = bench_http.run_http_bench(proofs=24, database_url=url, clients=3, api_workers=1)
    assert (again["http_errors"], again["http_submissions"]) == (0, 24)
    assert again["http_stored_before"] == 33  # the first run: 24 timed, 3 clients × 3 warm-up
    db = Database(url)
    try:
        with db.tx() as s:
            assert s.scalar(select(func.count()).select_from(Proof)) == 66
    finally:
        db.dispose()
    assert out["http_database"] == "sqlite" and out["http_api_workers"] == 1
    assert out["http_p50_ms"] <= out["http_p95_ms"] <= out["http_p99_ms"]
    # What the API wrote over HTTP is a valid keyed audit chain.
    assert _audit_intact(url)


def test_worker_mode_finalizes_and_applies_every_proof_with_batched_status_calls(db_url):
    # Twice on one database: the second run's transfers are new to it (bench.run_seed).
    for _ in range(2):
        out = bench_worker.run_worker_bench(proofs=30, database_url=db_url)
        assert out["worker_pending_finality"] == 30  # verified, not final, before the worker
        assert out["worker_finalized"] == 30
        assert out["worker_applied"] == 30
        # One getSignatureStatuses for the whole batch of 30 (≤ 256 per call).
        assert out["worker_status_calls"] == 1 and out["worker_rpc_requests"] == 1
        assert out["worker_rpc_calls_per_finalized"] == round(1 / 30, 4)
        assert isinstance(out["worker_finalize_per_s"], float)
        assert isinstance(out["worker_apply_per_s"], float)


@pytest.mark.postgres
def test_worker_processes_share_the_finality_sweeps_without_doing_a_proof_twice(pg_template):
    from verifier.storage.models import SettlementEvidence

    url, drop = make_pg_db(pg_template)
    try:
        # 300 proofs: two batches of ≤ 256, one per process when both claim at once.
        out = bench_worker.run_worker_bench(proofs=300, database_url=url, processes=2)
        db = Database(url)
        try:
            with db.tx() as s:
                final_rows = s.scalar(
                    select(func.count())
                    .select_from(SettlementEvidence)
                    .where(SettlementEvidence.is_final.is_(True))
                )
        finally:
            db.dispose()
    finally:
        drop()
    assert out["worker_processes"] == 2
    assert out["worker_pending_finality"] == 300
    assert out["worker_finalized"] == 300 and out["worker_applied"] == 300
    assert final_rows == 300  # each proof's final settlement recorded once, by one process
    # One call per claimed batch: two, or three when both processes' claims split the last
    # 44 (SKIP LOCKED scans running at once may each lock part of them).
    assert out["worker_status_calls_bound"] == 2
    assert 2 <= out["worker_status_calls"] <= 3


def test_worker_processes_must_be_positive():
    with pytest.raises(ValueError, match="worker processes"):
        bench_worker.run_worker_bench(proofs=10, processes=0)


def test_confirmed_only_proofs_say_confirmed_and_keep_the_transfer():
    (p,) = bench_worker.bench.synthetic_proofs(1)
    c = bench_worker.confirmed_only(p)
    assert c.calls[0] is p.calls[0]
    (status,) = c.calls[1].result["value"]
    assert status["confirmationStatus"] == "confirmed"
    (orig,) = p.calls[1].result["value"]
    assert orig["confirmationStatus"] == "finalized"  # the original is not changed


@pytest.mark.postgres
def test_compare_reports_the_ratio_between_sqlite_and_postgres(pg_template):
    url, drop = make_pg_db(pg_template)
    try:
        # Twice on one database, as `make bench-pg` run again does: the second run's
        # transfers are new to it (bench.run_seed), not refused as already used.
        for _ in range(2):
            res = CliRunner().invoke(
                app, ["bench", "--proofs", "12", "--compare", "--database-url", url, "--json"]
            )
            assert res.exit_code == 0, res.output
    finally:
        drop()
    out = json.loads(res.output.strip().splitlines()[-1])
    assert out["submit_statuses"] == {"verified": 10}  # 12 less the 2 warm-up submissions
    assert out["database"] == "postgresql"
    for key in ("submit_verify_per_s", "sqlite_submit_verify_per_s", "pg_vs_sqlite_ratio"):
        assert isinstance(out[key], float), (key, out[key])
    assert out["pg_vs_sqlite_ratio"] == pytest.approx(
        out["submit_verify_per_s"] / out["sqlite_submit_verify_per_s"], rel=0.01
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--compare"], "--compare: give --database-url"),
        (["--plot", "x.svg"], "--plot: draws the --scale rows"),
        (["--scale", "1k"], "--scale: comma-separated whole numbers"),
    ],
)
def test_bad_mode_options_exit_2_with_a_message(args, message):
    res = CliRunner().invoke(app, ["bench", "--proofs", "10", *args])
    assert res.exit_code == 2
    assert message in res.output


def _no_run(monkeypatch) -> None:
    from verifier.tools import bench, bench_modes

    def ran(*_a, **_k):
        raise AssertionError("the bench ran before its options were checked")

    monkeypatch.setattr(bench, "run_bench", ran)
    monkeypatch.setattr(bench_modes, "run_modes", ran)


def test_a_negative_stored_count_is_refused_before_any_work(monkeypatch):
    _no_run(monkeypatch)  # was taken: the bench ran with --stored -5
    res = CliRunner().invoke(app, ["bench", "--stored", "-5", "--json"])
    assert res.exit_code == 2, (res.exit_code, res.output)
    assert "--stored" in res.output, res.output


@pytest.mark.parametrize(
    "database_url, message",
    [
        ("garbage://x", "railproof runs on sqlite or postgresql, not 'garbage'"),
        ("not a url", "not a database URL"),
        ("sqlite:////nonexistent-dir/bench.db", "cannot connect to sqlite:////nonexistent-dir"),
        ("postgresql+psycopg://postgres:pw-SECRET@127.0.0.1:{port}/bench", "cannot connect to"),
    ],
    ids=["unknown-dialect", "not-a-url", "sqlite-in-no-directory", "unreachable"],
)
@pytest.mark.parametrize("mode", [[], ["--http"]], ids=["default", "http"])
def test_a_bad_database_url_exits_2_naming_it_before_any_work(
    monkeypatch, database_url, message, mode
):
    # NoSuchModuleError / ArgumentError / OperationalError used to escape as tracebacks, some
    # after minutes of work.
    from tests.live_server import closed_port

    _no_run(monkeypatch)
    url = database_url.format(port=closed_port())
    res = CliRunner().invoke(app, ["bench", "--proofs", "10", *mode, "--database-url", url])
    assert res.exit_code == 2, (res.exit_code, repr(res.exception))
    assert "--database-url" in res.output and message in res.output
    assert "pw-SECRET" not in res.output


@pytest.mark.parametrize("where", ["missing-directory", "a-directory"])
def test_an_unwritable_plot_exits_2_naming_it_before_any_work(monkeypatch, tmp_path, where):
    # --plot into a missing directory ran the whole scale bench, then FileNotFoundError.
    _no_run(monkeypatch)
    plot = tmp_path / "missing" / "scale.svg" if where == "missing-directory" else tmp_path
    res = CliRunner().invoke(app, ["bench", "--proofs", "10", "--scale", "10", "--plot", str(plot)])
    assert res.exit_code == 2, (res.exit_code, repr(res.exception))
    assert f"--plot: cannot write {plot}" in res.output


@pytest.mark.slow
def test_scale_rows_and_plot(tmp_path):
    svg_path = tmp_path / "scale.svg"
    res = CliRunner().invoke(
        app,
        ["bench", "--proofs", "12", "--clients", "2", "--scale", "0,30"]
        + ["--plot", str(svg_path), "--json"],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    assert [r["stored"] for r in out["scale"]] == [0, 30]
    assert all(r["http_errors"] == 0 and r["database"] == "sqlite" for r in out["scale"])
    root = ET.fromstring(svg_path.read_text())
    ns = "{http://www.w3.org/2000/svg}"
    assert len(root.findall(f"{ns}polyline")) == 2  # one line per panel, one database
    assert len(root.findall(f"{ns}circle")) == 4  # two points per line


def test_plot_draws_one_line_per_database_and_panel():
    rows = [
        {
            "database": db,
            "api_workers": w,
            "stored": n,
            "http_submit_per_s": 100.0 + n / 1000,
            "http_p99_ms": 20.0,
            "http_p50_ms": 5.0,
            "clients": 8,
            "http_errors": 0,
        }
        for db, w in (("sqlite", 1), ("postgresql", 2))
        for n in (1000, 10_000, 100_000)
    ]
    root = ET.fromstring(bench_plot.svg(rows))
    ns = "{http://www.w3.org/2000/svg}"
    assert len(root.findall(f"{ns}polyline")) == 4
    labels = [t.text for t in root.iter(f"{ns}text")]
    assert "sqlite, 1 API process" in labels and "postgresql, 2 API processes" in labels
    assert "100,000" in labels


# -- through PgBouncer in transaction mode ----------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.postgres
def test_http_bench_through_pgbouncer_in_transaction_mode(pg_template):
    """Every API process reaches PostgreSQL through a PgBouncer in transaction mode (a server
    connection per transaction, not per client): nothing may rely on session state. Prepared
    statements are off (`prepare_threshold=none`); the lock and statement timeouts are the
    database's settings on the server, as docs/scaling.md says to set them."""
    pgbouncer = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
    )
    if pgbouncer is None:
        pytest.skip("pgbouncer is not installed (Debian: apt-get install -y pgbouncer)")
    cmd = [pgbouncer]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root: it drops to the postgres user
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user for PgBouncer to run as")
        cmd += ["-u", "postgres"]
    from sqlalchemy.engine import make_url

    url, drop = make_pg_db(pg_template)
    u = make_url(url)
    port = _free_port()
    # Its own directory, readable by the user PgBouncer runs as.
    conf = Path(tempfile.mkdtemp(prefix="railproof-pgbouncer-"))
    conf.chmod(0o755)
    (conf / "users.txt").write_text(f'"{u.username}" ""\n')
    (conf / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"{u.database} = host={u.host} port={u.port or 5432} dbname={u.database}\n"
        # The bench looks the database up in `postgres` before it migrates it.
        f"postgres = host={u.host} port={u.port or 5432} dbname=postgres\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {conf / 'users.txt'}\n"
        "pool_mode = transaction\ndefault_pool_size = 4\nmax_client_conn = 200\n"
        # The engine's startup `options` (lock and statement timeouts) are not forwarded by
        # PgBouncer; the database's own settings below stand in for them.
        "ignore_startup_parameters = options\n"
    )
    for f in conf.iterdir():
        f.chmod(0o644)
    admin = Database(url)
    with admin.engine.connect() as c:
        c.exec_driver_sql(f'ALTER DATABASE "{u.database}" SET lock_timeout = 5000')
        c.exec_driver_sql(f'ALTER DATABASE "{u.database}" SET statement_timeout = 30000')
        c.commit()
    admin.dispose()
    proc = subprocess.Popen(
        [*cmd, str(conf / "pgbouncer.ini")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    out = proc.communicate()[0].decode(errors="replace")
                    pytest.fail(f"pgbouncer did not start: {out[-2000:]}")
                time.sleep(0.1)
        via = u.set(host="127.0.0.1", port=port, query={"prepare_threshold": "none"})
        bouncer_url = via.render_as_string(hide_password=False)
        out = bench_http.run_http_bench(
            proofs=40, database_url=bouncer_url, clients=4, api_workers=2
        )
        assert out["http_errors"] == 0
        assert out["http_submissions"] == 40
        assert out["http_database"] == "postgresql"
        assert _audit_intact(url)
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
        shutil.rmtree(conf, ignore_errors=True)
        drop()
