"""`railproof bench` modes beyond the default in-process run, all reported in one JSON object:

    --compare          the in-process submission on a temporary SQLite and on --database-url
                       (PostgreSQL), in one run: `pg_vs_sqlite_ratio`
    --http             the API over HTTP (verifier.tools.bench_http): `http_*`
    --worker           finality and apply sweeps (verifier.tools.bench_worker): `worker_*`;
                       --worker-processes K runs the finality sweeps in K processes at once
    --scale N,N,...    the HTTP mode repeated with N proofs stored first, per database: `scale`
    --plot FILE.svg    the scale rows drawn (verifier.tools.bench_plot)

With --compare, the HTTP and scale figures are measured on SQLite (one API process: SQLite
has one writer) as well, under `sqlite_`-prefixed keys and rows. Nothing here prints except
the progress bar, which the CLI draws on stderr only when stdout is a terminal.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from verifier.tools import bench
from verifier.tools.bench_http import Progress


def run_compare(proofs: int, database_url: str, progress: Progress | None = None) -> dict[str, Any]:
    """The in-process submission rate on a fresh temporary SQLite and on `database_url`, one
    after the other, in the same process and run."""
    sqlite = bench.submit_only(proofs, None, progress=_label(progress, "compare: sqlite"))
    other = bench.submit_only(proofs, database_url, progress=_label(progress, "compare: db"))
    ratio = other["submit_verify_per_s"] / sqlite["submit_verify_per_s"]
    return {
        "database": other["database"],
        "submit_verify_per_s": other["submit_verify_per_s"],
        "submit_statuses": other["submit_statuses"],
        "sqlite_submit_verify_per_s": sqlite["submit_verify_per_s"],
        "pg_vs_sqlite_ratio": round(ratio, 3),
    }


def run_modes(
    proofs: int,
    database_url: str | None,
    *,
    compare: bool = False,
    http: bool = False,
    worker: bool = False,
    clients: int = 8,
    api_workers: int = 1,
    worker_processes: int = 1,
    stored: int | None = None,
    scale: list[int] | None = None,
    plot: Path | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    from verifier.tools.bench_http import run_http_bench

    if compare and database_url is None:
        raise ValueError("--compare: give --database-url (the PostgreSQL database to compare)")
    out: dict[str, Any] = {"proofs": proofs}
    if compare:
        assert database_url is not None
        out.update(run_compare(proofs, database_url, progress))
    legs: list[tuple[str, str | None, int]] = [("", database_url, api_workers)]
    if compare:
        legs.append(("sqlite_", None, 1))
    if http:
        for prefix, url, workers in legs:
            got = run_http_bench(
                proofs,
                url,
                clients=clients,
                api_workers=workers,
                stored=stored,
                progress=_label(progress, f"http {prefix or 'db'}"),
            )
            out.update({prefix + k: v for k, v in got.items()})
    if scale:
        rows = []
        for prefix, url, workers in legs:
            for n in scale:
                # A fresh database per row: the history is bulk-inserted to exactly n.
                with _fresh(url, "scale") as fresh:
                    got = run_http_bench(
                        proofs,
                        fresh,
                        clients=clients,
                        api_workers=workers,
                        stored=n,
                        progress=_label(progress, f"scale {prefix or 'db'} {n}"),
                    )
                rows.append(
                    {
                        "database": got["http_database"],
                        "api_workers": workers,
                        "clients": clients,
                        "stored": got["http_stored_before"],
                        "http_submit_per_s": got["http_submit_per_s"],
                        "http_p50_ms": got["http_p50_ms"],
                        "http_p99_ms": got["http_p99_ms"],
                        "http_errors": got["http_errors"],
                    }
                )
        out["scale"] = rows
    if worker:
        from verifier.tools.bench_worker import run_worker_bench

        # A database of its own: the apply sweep takes every final, unapplied proof, and the
        # other modes leave theirs unapplied.
        with _fresh(database_url, "worker") as url:
            out.update(
                run_worker_bench(
                    proofs, url, progress=_label(progress, "worker"), processes=worker_processes
                )
            )
    if plot is not None:
        from verifier.tools.bench_plot import write_plot

        write_plot(out.get("scale") or [], plot)
        out["plot"] = str(plot)
    return out


@contextmanager
def _fresh(url: str | None, suffix: str) -> Iterator[str | None]:
    """A fresh database for one measurement: a new PostgreSQL database named after the given
    one (`NAME_suffix`), dropped afterwards; None (a temporary SQLite file) otherwise."""
    if url is None:
        yield None
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    u = make_url(url)
    if u.get_backend_name() != "postgresql":
        yield None  # a SQLite file: a fresh temporary one instead
        return
    name = f"{u.database}_{suffix}"
    admin = create_engine(
        u.set(drivername="postgresql+psycopg", database="postgres", query={}),
        isolation_level="AUTOCOMMIT",
    )
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        yield u.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _label(progress: Progress | None, label: str) -> Progress | None:
    if progress is None:
        return None

    def step(phase: str, done: int, total: int) -> None:
        progress(f"{label}: {phase}", done, total)

    return step


@contextmanager
def terminal_progress(enabled: bool) -> Iterator[Progress | None]:
    """A rich progress bar on stderr (one task per phase), or None when not `enabled`."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    tasks: dict[str, Any] = {}
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=False,
    ) as bar:

        def step(phase: str, done: int, total: int) -> None:
            task = tasks.get(phase)
            if task is None:
                task = tasks[phase] = bar.add_task(phase, total=total)
            bar.update(task, completed=done, total=total)

        yield step
