"""The `railproof` command line (Typer). Thin: each command parses, calls one service, prints.

Exit codes: 0 done; 1 refused (a blocker, a 4xx); 2 usage or connection error, with a message
on stderr that says what to do.
"""

import json
import logging
import math
import signal
import sys
import threading
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from verifier.cli import show

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="railproof: rail-proof verification engine for on-chain payments",
)
db_app = typer.Typer(no_args_is_help=True, help="Database schema (Alembic migrations).")
audit_app = typer.Typer(no_args_is_help=True, help="The hash-chained audit log.")
alerts_app = typer.Typer(
    no_args_is_help=True, help="Prometheus alert rules and Grafana dashboard from the metric spec."
)
app.add_typer(db_app, name="db")
app.add_typer(audit_app, name="audit")
app.add_typer(alerts_app, name="alerts")


def fail(message: str, code: int = 2) -> NoReturn:
    show.say(f"error: {message}", err=True)
    raise typer.Exit(code)


def _no_audit_key() -> NoReturn:
    from verifier.core.config import AUDIT_KEY_MISSING

    fail(AUDIT_KEY_MISSING)


def _settings():
    """The settings, or exit 2 with one `error:` line per invalid variable; unknown
    RAILPROOF_* variables (likely typos) are warned about on stderr."""
    from verifier.core.config import describe_error, load_settings, unknown_env

    unknown = unknown_env()
    if unknown:
        typer.echo(
            f"warning: unknown RAILPROOF_* variable(s), ignored (a typo?): {', '.join(unknown)}",
            err=True,
        )
    try:
        return load_settings()
    except ValueError as e:  # pydantic's ValidationError and pydantic-settings' SettingsError
        lines = describe_error(e)
        for line in lines[:-1]:
            typer.echo(f"error: {line}", err=True)
        fail(lines[-1] if lines else "configuration: invalid RAILPROOF_* variables")


def _refuse_unservable(engine) -> None:
    """`serve` refuses a deployment that could not answer: a live chain without RPC URLs for
    the live rails' networks, or no service tokens."""
    from registry.catalog import Stage

    settings = engine.settings
    if settings.chain == "live":
        missing = sorted(
            {
                "RAILPROOF_RPC_" + engine.rail(rid).network.upper().replace("-", "_")
                for rid, d in engine.catalog.rails.items()
                if d.stage is Stage.live and not settings.rpc_urls(engine.rail(rid).network)
            }
        )
        if missing:
            fail(
                "RAILPROOF_CHAIN=live but no RPC URL for the live rails' networks: set "
                + " and ".join(missing)
                + " (comma-separated URLs), or RAILPROOF_CHAIN=cassette for recorded chains"
            )
    if not settings.service_tokens:
        fail(
            "no service tokens: set RAILPROOF_SERVICE_TOKENS to a JSON object of token to "
            """owner ids, e.g. '{"<token>": ["<owner-id>"]}'"""
        )


def _engine(require_migrated: bool = True, writes: bool = True):
    """The engine, refused (exit 2) on an unmigrated database and, when the command `writes`,
    without an audit key."""
    from verifier.core.engine import Engine
    from verifier.storage.db import NotMigrated, shown_url
    from verifier.storage.db import require_migrated as check

    settings = _settings()
    try:
        key = settings.audit_key_bytes()
    except ValueError as e:
        fail(f"configuration: {e}")
    engine = Engine(settings)
    if require_migrated:
        try:
            check(engine.db.engine)
        except NotMigrated as e:
            fail(str(e))
        except Exception as e:  # connection refused, bad URL
            fail(
                f"database: cannot open {shown_url(engine.settings.database_url)}: "
                f"{type(e).__name__}"
            )
    # SECURITY: nothing that appends to the audit log runs without the key: an unkeyed chain
    # can be rewritten and re-hashed by anyone who can write the table.
    if writes and key is None:
        _no_audit_key()
    if require_migrated and writes:
        _check_audit_key(engine)
        engine.ensure_rail_states()
    return engine


def _check_audit_key(engine) -> None:
    from verifier.services.queries import audit_key_refusal

    refusal = audit_key_refusal(engine)
    if refusal is not None:
        fail(refusal)


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[
        str, typer.Option(help="the Alembic revision to migrate to (see `railproof db history`)")
    ] = "head",
) -> None:
    """Migrate the database at RAILPROOF_DATABASE_URL to the latest schema."""
    from verifier.storage.db import (
        known_revision,
        shown_url,
        target_revision,
        unknown_revision,
        upgrade,
    )

    settings = _settings()
    url = settings.database_url
    try:
        upgrade(url, revision)
    except Exception as e:
        current = _revision_or_none(url)
        if current is not None and not known_revision(url, current):
            fail(f"migration failed: the database is {unknown_revision(current)}")
        # Alembic answers some revisions ('', 'head+1') with an AssertionError and no text.
        lines = str(e).strip().splitlines()
        detail = f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
        option = f" (--revision {revision!r})" if revision != "head" else ""
        fail(f"migration failed{option}: {detail}; {_left_at(url)}")
    # An upgrade to a revision below the database's is no move at all: say where it is.
    at = _revision_or_none(url) or "base"
    wanted = target_revision(url, revision)
    if wanted is not None and at != wanted:
        fail(
            f"--revision {revision!r}: the database stays at {at}, not {wanted} "
            f"(`db upgrade` never goes down): {shown_url(url)}"
        )
    typer.echo(f"database at {at}: {shown_url(url)}")


def _left_at(url: str) -> str:
    """Where a failed upgrade left the database, as read after it. SQLite commits each
    revision (Alembic runs no DDL in a transaction there), so it stops at the one before the
    failing revision; PostgreSQL runs every pending revision in one transaction, so a failure
    rolls all of them back, and the previous version goes on running on the schema it knows."""
    from verifier.storage.db import current_revision, make_engine

    try:
        engine = make_engine(url)
        try:
            at = current_revision(engine)
        finally:
            engine.dispose()
    except Exception as e:  # the database went away, or the failure was opening it
        return f"the database's revision could not be read ({type(e).__name__})"
    if at is None:
        return "the database is left unmigrated (no revision)"
    return f"the database is left at revision {at}"


def _revision_or_none(url: str) -> str | None:
    """The database's revision, or None when it has none or cannot be read."""
    from verifier.storage.db import current_revision, make_engine

    try:
        engine = make_engine(url)
        try:
            return current_revision(engine)
        finally:
            engine.dispose()
    except Exception:
        return None


@db_app.command("current")
def db_current() -> None:
    """Print the database's Alembic revision and whether it is at head (exit 1 when not)."""
    from verifier.storage.db import (
        current_revision,
        head_revision,
        known_revision,
        make_engine,
        shown_url,
        sqlite_path,
        unknown_revision,
    )

    settings = _settings()
    where = shown_url(settings.database_url)
    path = sqlite_path(settings.database_url)
    if path is not None and not path.exists():  # opening it would create it
        fail(f"database: no SQLite file at {path}; run `railproof db upgrade` to create it")
    try:
        engine = make_engine(settings.database_url)
        try:
            current = current_revision(engine)
        finally:
            engine.dispose()
    except Exception as e:  # connection refused, bad URL
        fail(f"database: cannot open {where}: {type(e).__name__}")
    head = head_revision(settings.database_url)
    if current == head:
        typer.echo(f"{current} (head): {where}")
        return
    if current is not None and not known_revision(settings.database_url, current):
        typer.echo(f"{where}: {unknown_revision(current)}")
        raise typer.Exit(1)
    state = "empty (never migrated)" if current is None else f"{current}, head is {head}"
    typer.echo(f"{state}: {where}; run `railproof db upgrade`")
    raise typer.Exit(1)


@db_app.command("history")
def db_history() -> None:
    """List the migrations, oldest first, with their one-line descriptions."""
    from alembic.script import ScriptDirectory

    from verifier.storage.db import alembic_config

    scripts = ScriptDirectory.from_config(alembic_config("sqlite://"))
    for rev in reversed(list(scripts.walk_revisions())):
        # rev.doc is the docstring's first paragraph (up to "Revision ID:"), on one line.
        doc = " ".join((rev.doc or "").split())
        typer.echo(f"{rev.revision}  {doc}".rstrip())


# The ASGI factory every API process runs (one engine per process).
APP = "verifier.http.asgi:make_app"


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="port to listen on (default: $PORT, else 8000)"),
    ] = None,
    workers: Annotated[int, typer.Option(help="API processes")] = 1,
) -> None:
    """Serve the HTTP API (refuses an unmigrated database)."""
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE

    from verifier.core.logs import configure_logging
    from verifier.http import processes
    from verifier.http.wire import HTTP_PROTOCOL

    configure_logging()
    if workers < 1:
        fail("--workers: must be at least 1")
    # Before anything builds a metric: the processes then count into one shared directory.
    from verifier.core.multiproc import prepare_metrics_dir

    try:
        prepare_metrics_dir(workers)
    except OSError as e:
        fail(f"PROMETHEUS_MULTIPROC_DIR: cannot prepare it: {e.strerror}")
    engine = _engine()
    port_source = "--port" if port is not None else "PORT"
    port = port if port is not None else engine.settings.port  # PORT: 1..65535 (Settings)
    # Refuse early, with the migration hint or what to set, before binding the port.
    _refuse_unservable(engine)
    options: dict[str, Any] = {
        "factory": True,
        "host": host,
        "port": port,
        # The C HTTP parser (with the refusals llhttp leaves to the server: header size, HTTP
        # version, Host) and event loop: h11 and asyncio's own loop cost the API process about
        # an eighth of its CPU per request (docs/bench.md, "This round's changes").
        "http": HTTP_PROTOCOL,
        "loop": "uvloop",
        "server_header": False,  # no "server: uvicorn" on every answer: nothing to fingerprint
        "log_config": None,
        "access_log": False,
    }
    if workers > 1 and processes.spreads():
        # A socket per process, so connections spread over them (http/processes.py).
        try:
            supervisor = processes.Processes(uvicorn.Config(APP, **options), workers)
        except OSError as e:
            _cannot_listen(host, port, port_source, e)
        supervisor.run()
        if supervisor.failed:
            raise typer.Exit(STARTUP_FAILURE)
        return
    try:
        processes.check_listen(host, port)
    except OSError as e:
        _cannot_listen(host, port, port_source, e)
    uvicorn.run(APP, workers=workers, **options)


def _cannot_listen(host: str, port: int, port_source: str, e: OSError) -> NoReturn:
    import errno
    import socket

    # The host when it is not an address of this machine (or no address at all), else the
    # port (in use by another process, or a privileged one).
    host_is_why = isinstance(e, socket.gaierror) or e.errno == errno.EADDRNOTAVAIL
    fail(
        f"{'--host' if host_is_why else port_source}: cannot listen on {host}:{port}: {e.strerror}"
    )


# --interval: how long a sweep that found nothing waits. Above 0 (else the worker polls the
# database in a busy loop) and at most a day (a longer pause is not a worker).
MAX_WORKER_INTERVAL = 86_400.0
# A claim's ids go back to the database as one IN list: SQLite allows 32766 parameters.
MAX_WORKER_BATCH = 10_000


def _worker_interval(value: float) -> float:
    # NaN passes any range check (every comparison is false): refuse it by name.
    if not math.isfinite(value) or not 0 < value <= MAX_WORKER_INTERVAL:
        raise typer.BadParameter(
            f"{value} seconds: give a number above 0 and at most {MAX_WORKER_INTERVAL:.0f} (a day)"
        )
    return value


def _worker_name(value: str | None) -> str | None:
    from verifier.storage.models import WORKER_NAME_MAX

    # Written into every claim and attempt: a name the column cannot hold would fail every
    # claim on PostgreSQL, so the worker would re-check and credit nothing.
    if value is not None and len(value) > WORKER_NAME_MAX:
        raise typer.BadParameter(f"{len(value)} characters: give at most {WORKER_NAME_MAX}")
    if value is not None and any(not c.isprintable() for c in value):
        raise typer.BadParameter("holds a control character (NUL, newline, ...): give a plain name")
    return value


@app.command()
def worker(
    once: bool = typer.Option(False, help="one sweep, then exit"),
    interval: float = typer.Option(
        2.0, callback=_worker_interval, help="seconds between sweeps (above 0, at most a day)"
    ),
    batch: int = typer.Option(
        100, min=1, max=MAX_WORKER_BATCH, help="proofs per sweep (each step claims this many)"
    ),
    name: str | None = typer.Option(
        None,
        callback=_worker_name,
        help="worker name in claims and attempts, at most 64 characters "
        "(default: <hostname>:<pid>, the hostname cut to fit)",
    ),
) -> None:
    """Re-verify pending proofs, refresh finality, check reorgs, auto-apply when enabled."""
    from verifier.core.logs import configure_logging
    from verifier.worker.loop import SchemaMoved, run_worker

    configure_logging()
    stop = _stop_on_signals()
    try:
        run_worker(_engine(), once=once, interval=interval, batch=batch, name=name, stop=stop)
    except SchemaMoved as e:
        # Exit 2, as at start on such a database: the supervisor starts the process again,
        # and the version that matches the schema is the one to run.
        fail(str(e))


def _stop_on_signals() -> threading.Event:
    """An event SIGTERM or SIGINT sets (a supervisor's stop, a rolling deploy, Ctrl-C): the
    worker ends its sweep after the node call under way, gives back the proofs it claimed and
    did not work on, and exits 0. A second signal ends it at once, as the default would (its
    claims then wait out their lease)."""
    stop = threading.Event()
    log = logging.getLogger("railproof.worker")

    def _on_signal(signum: int, _frame: object) -> None:
        if stop.is_set():
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        log.info("%s: stopping after the current call", signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _on_signal)
    return stop


def _dt(value: str | None, flag: str) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        fail(f"{flag}: not an ISO-8601 time: {value!r}")


@app.command("verify-offline")
def verify_offline_cmd(
    rail: Annotated[str, typer.Option(help="rail id, e.g. solana_usdc")],
    proof: Annotated[str, typer.Option(help="signature / tx hash / x402 payload file or header")],
    recipient: Annotated[str, typer.Option(help="who must receive")],
    amount: Annotated[str, typer.Option(help="base units, an integer")],
    cassette: Annotated[Path | None, typer.Option(help="recorded chain responses")] = None,
    asset: Annotated[str | None, typer.Option(help="expected asset (default: the rail's)")] = None,
    network: Annotated[
        str | None, typer.Option(help="expected network (default: the rail's)")
    ] = None,
    reference: Annotated[str | None, typer.Option(help="expected payment reference")] = None,
    memo: Annotated[str | None, typer.Option(help="expected memo")] = None,
    payer: Annotated[
        str | None,
        typer.Option(help="expected sender, on rails that bind a payer (EVM, Tron, x402)"),
    ] = None,
    not_before: Annotated[
        str | None, typer.Option("--not-before", help="ISO-8601: paid no earlier than this")
    ] = None,
    not_after: Annotated[
        str | None, typer.Option("--not-after", help="ISO-8601: paid no later than this")
    ] = None,
    now: Annotated[
        str | None, typer.Option(help="ISO-8601: judge as of this time (default: now)")
    ] = None,
    at_least: Annotated[bool, typer.Option("--at-least", help="accept overpayment")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Verify one recorded proof against an expected payment: no database, no network."""
    from verifier.services.offline import OfflineRequest, UsageError, verify_offline

    if not (amount.isascii() and amount.isdigit()):  # "²".isdigit() is True, int() refuses it
        fail("--amount: must be an integer of base units, e.g. 1500000")
    if len(amount.lstrip("0")) > 78:  # int() refuses past 4,300 digits; no token holds them
        fail("--amount: at most 78 digits (a uint256 of base units)")
    from rails import reads_chain

    if cassette is None and reads_chain(rail):  # the proof is a chain transaction
        fail("--cassette: required for this rail")
    req = OfflineRequest(
        rail=rail,
        proof=proof,
        recipient=recipient,
        amount=int(amount),
        cassette=cassette,
        asset=asset,
        network=network,
        reference=reference,
        memo=memo,
        payer=payer,
        not_before=_dt(not_before, "--not-before"),
        not_after=_dt(not_after, "--not-after"),
        now=_dt(now, "--now"),
        at_least=at_least,
    )
    try:
        out = verify_offline(req)
    except UsageError as e:
        fail(str(e))
    if as_json:
        sys.stdout.write(json.dumps(out) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=show.text(f"{rail}: {out['status']}"))
    t.add_column("field")
    t.add_column("value")
    t.add_row("failure_code", show.text(out["failure_code"]))
    t.add_row("detail", show.text(out["detail"]))
    for k, v in out["observed"].items():
        t.add_row(show.text(k), show.text(v))
    t.add_row("rpc_calls", show.text(out["rpc_calls"]))
    Console().print(t)


@app.command()
def record(
    network: Annotated[str, typer.Option(help="e.g. solana-mainnet, ethereum, base")],
    out: Annotated[Path, typer.Option(help="cassette file to write")],
    proof: Annotated[list[str], typer.Option(help="signature / tx hash; repeatable")],
    recipient: Annotated[str, typer.Option(help="the expected recipient (shapes the calls)")],
    rail: Annotated[str, typer.Option(help="rail whose adapter makes the calls")] = "solana_usdc",
    rpc: Annotated[
        list[str] | None, typer.Option(help="RPC URL; default RAILPROOF_RPC_<NETWORK>")
    ] = None,
) -> None:
    """Record a cassette from a live RPC: the calls one verification makes, per proof."""
    from verifier.tools.recorder import record_cassette

    settings = _settings()
    urls = rpc or settings.rpc_urls(network)
    if not urls:
        fail(
            "--rpc: no RPC URL given and "
            f"RAILPROOF_RPC_{network.upper().replace('-', '_')} is unset"
        )
    try:
        n = record_cassette(rail, network, urls, proof, out, recipient)
    except ValueError as e:
        fail(str(e))
    typer.echo(f"wrote {show.path(out)} ({n} calls)")


@audit_app.command("verify")
def audit_verify(
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="a file from `railproof audit checkpoint`: the chain must still hold its head"
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Check the audit hash chain (and a checkpoint of it); names the first broken link.
    Exit 0 intact, 1 broken."""
    from verifier.services.audit import check_checkpoint, verify_chain

    cp = _read_checkpoint(checkpoint)
    engine = _engine(writes=False)
    if engine.db.audit_key is None:
        if cp is not None:
            _no_audit_key()
        typer.echo(
            "warning: no audit key (RAILPROOF_AUDIT_KEY or RAILPROOF_AUDIT_KEY_FILE): "
            "checked as an unkeyed chain, which anyone who can write the table can "
            "recompute",
            err=True,
        )
    with engine.db.read() as s:
        rep = verify_chain(s)
        cpr = check_checkpoint(s, cp, rep) if cp is not None else None
    ok = rep.ok and (cpr is None or cpr.ok)
    if as_json:
        doc = rep.as_dict()
        if cpr is not None:
            doc.update(ok=ok, checkpoint=cpr.as_dict())
        typer.echo(json.dumps(doc))
    else:
        show.say(f"{'ok' if rep.ok else 'BROKEN'}: {rep.message} ({rep.events} events checked)")
        if cpr is not None:
            show.say(f"{'ok' if cpr.ok else 'BROKEN'}: {cpr.message}")
    raise typer.Exit(0 if ok else 1)


def _read_checkpoint(checkpoint: Path | None) -> Any:
    """The JSON of `--checkpoint FILE` (None without one); exit 2 when it cannot be read."""
    if checkpoint is None:
        return None
    import orjson  # stops at 1,024 levels (json.loads: the EVM libraries' recursion limit)

    try:
        from rails.files import read_regular

        return orjson.loads(read_regular(checkpoint))
    except OSError as e:
        fail(f"--checkpoint: cannot read {checkpoint}: {e.strerror}")
    except orjson.JSONDecodeError as e:
        fail(f"--checkpoint: {checkpoint} is not a checkpoint (not JSON: {e})")


@audit_app.command("checkpoint")
def audit_checkpoint(
    out: Annotated[Path | None, typer.Option(help="file; default stdout")] = None,
) -> None:
    """Sign the chain's head and length with the audit key. Keep the output off this host and
    check it later with `railproof audit verify --checkpoint FILE`."""
    from verifier.services.audit import make_checkpoint

    engine = _engine(writes=False)
    if engine.db.audit_key is None:
        _no_audit_key()
    with engine.db.read() as s:
        rep, cp = make_checkpoint(s, engine.now())
    if cp is None:
        fail(f"audit chain BROKEN, no checkpoint written: {rep.message}", 1)
    doc = json.dumps(cp) + "\n"
    if out:
        try:
            out.write_text(doc)
        except OSError as e:
            fail(f"--out: cannot write {out}: {e.strerror}")
        typer.echo(f"wrote {show.path(out)} ({cp['events']} events, head event {cp['head_id']})")
    else:
        sys.stdout.write(doc)


@audit_app.command("adopt-key")
def audit_adopt_key(
    incident_id: Annotated[
        str | None, typer.Option("--incident-id", help="incident or change this belongs to")
    ] = None,
    operator_reason: Annotated[
        str | None, typer.Option("--operator-reason", help="why you do this")
    ] = None,
    confirm: Annotated[bool, typer.Option("--confirm", help="yes, do it")] = False,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="a file from `railproof audit checkpoint`: refused unless the chain still "
            "holds its head"
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Once, after upgrading a database written by railproof 0.1.0: anchor its audit chain,
    hashed without a key, under RAILPROOF_AUDIT_KEY. The whole chain must verify as plain
    SHA-256 and hold only events 0.1.0 wrote; one keyed event `audit.key_adopted` then pins
    its head, and `serve` and `worker` start. Exit 0 adopted; 2 refused (nothing written)."""
    from verifier.cli.ops import require_operator_context
    from verifier.core.errors import EngineError
    from verifier.services.audit import KEY_ADOPTED, KeyAdoptionRefused, Operator
    from verifier.services.queries import adopt_audit_key

    require_operator_context("audit adopt-key", incident_id, operator_reason, confirm)
    cp = _read_checkpoint(checkpoint)
    engine = _engine(writes=False)
    if engine.db.audit_key is None:
        _no_audit_key()
    op = Operator("system", (incident_id or "").strip(), (operator_reason or "").strip())
    try:
        adopted = adopt_audit_key(engine, op, cp)
    except KeyAdoptionRefused as e:
        fail(f"{e.code}: {e.message}")
    except EngineError as e:  # the operator context is not text the audit row can hold
        option = {"incident_id": "--incident-id", "operator_reason": "--operator-reason"}.get(
            e.field or ""
        )
        fail(f"{option}: {e.code}: {e.message}" if option else f"{e.code}: {e.message}")
    if as_json:
        doc = {"adopted": True, "action": KEY_ADOPTED, "unkeyed_head": adopted.unkeyed_head}
        typer.echo(json.dumps({**doc, "unkeyed_events": adopted.unkeyed_events}))
    else:
        show.say(
            f"adopted: {adopted.unkeyed_events} events written without a key, head "
            f"{adopted.unkeyed_head}, anchored under the key ({KEY_ADOPTED})"
        )


@alerts_app.command("generate")
def alerts_generate(
    out: Annotated[
        Path | None, typer.Option("--out", "--output", help="file; default stdout")
    ] = None,
    runbook_base: Annotated[
        str, typer.Option(help="where runbook_url annotations point (your copy's URL)")
    ] = "docs/runbook.md",
) -> None:
    """Write Prometheus alert rules generated from the metric spec (loaded only once added
    to Prometheus' rule_files)."""
    from verifier.services.alerts import render_rules

    _write(render_rules(runbook_base), out)


@alerts_app.command("dashboard")
def alerts_dashboard(
    out: Annotated[
        Path | None, typer.Option("--out", "--output", help="file; default stdout")
    ] = None,
) -> None:
    """Write the Grafana dashboard generated from the metric spec (import it in Grafana)."""
    from verifier.services.alerts import render_dashboard

    _write(render_dashboard(), out)


def _write(text: str, out: Path | None) -> None:
    if out is None:
        sys.stdout.write(text)
        return
    try:
        out.write_text(text)
    except OSError as e:
        fail(f"--out: cannot write {out}: {e.strerror}")
    typer.echo(f"wrote {show.path(out)}")


@app.command()
def demo(base_url: Annotated[str | None, typer.Option(help="API base URL")] = None) -> None:
    """Walk one Solana USDC payment from session to active entitlement against `make serve`."""
    from verifier.tools.demo import run_demo

    code = run_demo(base_url)
    raise typer.Exit(code)


@app.command()
def bench(
    proofs: Annotated[int, typer.Option("--proofs", min=10, help="proofs per measurement")] = 2000,
    database_url: Annotated[
        str | None,
        typer.Option("--database-url", help="a disposable database (default: a temporary SQLite)"),
    ] = None,
    stored: Annotated[
        int | None, typer.Option("--stored", min=0, help="proofs stored for dry-run latency")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print compact JSON")] = False,
    compare: Annotated[
        bool, typer.Option("--compare", help="submission on SQLite and --database-url, one run")
    ] = False,
    http: Annotated[
        bool, typer.Option("--http", help="drive `railproof serve` over HTTP on loopback")
    ] = False,
    clients: Annotated[int, typer.Option("--clients", min=1, help="HTTP clients")] = 8,
    api_workers: Annotated[
        int, typer.Option("--api-workers", min=1, help="API processes for --http")
    ] = 1,
    worker: Annotated[
        bool, typer.Option("--worker", help="finality and apply sweeps on a loopback RPC")
    ] = False,
    worker_processes: Annotated[
        int,
        typer.Option(
            "--worker-processes", min=1, max=64, help="processes running --worker's finality sweeps"
        ),
    ] = 1,
    scale: Annotated[
        str | None,
        typer.Option("--scale", help="HTTP runs with these proofs stored first, e.g. 1000,10000"),
    ] = None,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="draw the --scale rows as an SVG file")
    ] = None,
    live_rpc: Annotated[
        bool,
        typer.Option(
            "--live-rpc", help="verify through the live Solana transport on a loopback replay node"
        ),
    ] = False,
) -> None:
    """Measure verification, submission and dry-run-apply throughput (JSON with --json);
    --compare, --http, --worker and --scale measure those modes instead (docs/bench.md)."""
    from verifier.tools.bench_modes import terminal_progress

    sizes = None
    if scale is not None:
        try:
            sizes = [int(x) for x in scale.split(",") if x.strip()]
        except ValueError:
            fail("--scale: comma-separated whole numbers of stored proofs, e.g. 1000,10000")
        if not sizes or min(sizes) < 0:
            fail("--scale: comma-separated whole numbers of stored proofs, e.g. 1000,10000")
    if plot is not None and not sizes:
        fail("--plot: draws the --scale rows; give --scale too")
    if compare and database_url is None:
        fail("--compare: give --database-url (the PostgreSQL database to compare with SQLite)")
    # Before any work: a run takes minutes, and its figures are lost to an error at the end.
    from rails.files import unwritable

    if plot is not None and (why := unwritable(plot)) is not None:
        fail(f"--plot: cannot write {plot}: {why}")
    if database_url is not None:
        from verifier.tools.bench import check_database_url

        try:
            check_database_url(database_url)
        except ValueError as e:
            fail(str(e))
    from verifier.tools.host_cpu import watched

    with terminal_progress(sys.stdout.isatty()) as progress, watched() as host:
        if compare or http or worker or sizes:
            from verifier.tools.bench_modes import run_modes

            result = run_modes(
                proofs,
                database_url,
                compare=compare,
                http=http,
                worker=worker,
                clients=clients,
                api_workers=api_workers,
                worker_processes=worker_processes,
                stored=stored,
                scale=sizes,
                plot=plot,
                progress=progress,
            )
        elif live_rpc:
            result = {}
        else:
            from verifier.tools.bench import run_bench

            result = run_bench(
                proofs=proofs, database_url=database_url, stored=stored, progress=progress
            )
        if live_rpc:
            from verifier.tools.bench_live import run_live_bench

            result.update(run_live_bench(proofs))
    result.update(host)  # the host's steal and idle over the run: read the figures with them
    typer.echo(json.dumps(result, indent=None if as_json else 2))


@app.command()
def rehearse(
    database_url: Annotated[str, typer.Option("--database-url", help="a disposable database")],
    out: Annotated[Path, typer.Option(help="evidence JSON to write (and OUT.sha256)")],
    incident_id: Annotated[
        str, typer.Option("--incident-id", help="incident or change this rehearsal is for")
    ],
    operator_reason: Annotated[
        str, typer.Option("--operator-reason", help="why it is run (kept in the evidence)")
    ],
    scrubbed_snapshot: Annotated[
        str | None,
        typer.Option(
            "--scrubbed-snapshot",
            help="URL of a scrubbed production copy, opened read-only: migration preflight "
            "and sensitive-column scrub check",
        ),
    ] = None,
    confirmed: Annotated[
        bool,
        typer.Option(
            "--i-understand-this-is-not-production", help="allow a URL that looks production-like"
        ),
    ] = False,
) -> None:
    """Migrate a disposable database and run the live rail end to end on recorded chains;
    prints the evidence file's sha256."""
    from verifier.tools.rehearse import run_rehearsal

    # Its name goes into OUT.sha256 and the messages: bytes that are not UTF-8 cannot.
    if show.path(out) != show.plain(out):
        fail("--out: not valid text in this locale's encoding")
    result = run_rehearsal(
        database_url,
        out,
        confirmed,
        echo=typer.echo,
        incident_id=incident_id,
        operator_reason=operator_reason,
        scrubbed_snapshot=scrubbed_snapshot,
    )
    raise typer.Exit(result.code)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"railproof {version('railproof')}")
        except PackageNotFoundError:
            fail("railproof is not installed as a package (pip install -e .)")
        raise typer.Exit(0)


def _register_operator_commands() -> None:
    from verifier.cli import ops as cli_ops
    from verifier.cli import webhooks as cli_webhooks

    @app.callback()
    def root(
        ctx: typer.Context,
        base_url: cli_ops.BaseUrl = None,
        staff_token_file: cli_ops.TokenFile = None,
        version: Annotated[
            bool,
            typer.Option(
                "--version", is_eager=True, callback=_print_version, help="print the version"
            ),
        ] = False,
    ) -> None:
        """railproof: rail-proof verification engine for on-chain payments"""
        # --base-url, --staff-token-file before the command apply to the command that follows
        cli_ops.global_options(ctx, base_url, staff_token_file)

    cli_ops.register(app)
    cli_webhooks.register(app)
    from verifier.cli import reconcile as cli_reconcile

    cli_reconcile.register(app)  # noqa: E702
    from verifier.cli import release_gates as cli_release_gates

    cli_release_gates.register(app)


_register_operator_commands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
