"""`railproof rehearse`: the live rail end to end on a disposable database, with evidence.

It first checks what a deployment rests on without touching any database:

    alert rules → generated rules match the metric spec, one per alert, each on a metric
                  that /metrics exposes, each with its section in docs/runbook.md
    operator commands → every command (and flag) the runbook names exists in this CLI:
                  RUNBOOK_COMMANDS below, plus README's "Operator CLI" and docs/runbook.md
                  when a source checkout has them

then a migration preflight (Alembic current vs head, read in a read-only transaction that is
rolled back), migrates the database it is given, and drives the real HTTP API in-process (no
socket, no network) over the recorded Solana cassettes, with the clock pinned to when they were
recorded, exactly as `make serve` does:

    session → proof → verify → finality → dry-run → apply (and apply again) → revoke →
    a forced rollback (an injected fault: apply fails after the receipt insert; nothing may
    remain) → the same apply succeeding afterwards → audit chain and assurance clean →
    no unhandled error besides the injected one

With `--scrubbed-snapshot URL` it also opens a scrubbed copy of production read-only: the
migration preflight (what `railproof db upgrade` would run on it) and an inventory of the
sensitive columns by name, counting the non-empty values left (scrub risks) — counts only,
never a value.

Every step is checked; the evidence JSON holds the operator's incident id and reason, each
step's request, status, verdict and the sha256 of the canonical JSON of its response, plus the
sha256 of every cassette replayed. The file is written deterministically
(`evidence_bytes`), its sha256 printed and written next to it as `<out>.sha256`
(`sha256sum -c` format). Exit 0 only when every step behaved; 1 when one did not; 2 when the
database is refused or an argument is invalid.

Which databases are disposable (the rule, kept deliberately narrow):

- SQLite: a file inside the system temporary directory (`tempfile.gettempdir()`);
- PostgreSQL: on 127.0.0.1, ::1 or localhost, and the database name contains one of
  "rehearsal", "test", "tmp", "scratch".

Anything else — another host, another driver, an in-memory or relative SQLite path, a
PostgreSQL name without one of those words — is treated as production-like and refused
unless `--i-understand-this-is-not-production` is given. A database that already holds
payment sessions is refused in every case: a rehearsal never writes next to real data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Text, cast, column, create_engine, func, inspect, select, table
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.pool import NullPool
from sqlalchemy.sql.expression import ColumnClause

from rails.base import canonical_json
from rails.cassette import CassetteTransport
from rails.files import unwritable
from verifier.cli.progress import progress
from verifier.core.config import DEFAULT_CASSETTE_DIR, REPO_FIXTURES
from verifier.services.release_gates import REHEARSAL_STEPS

EVIDENCE_FORMAT = 2
DISPOSABLE_WORDS = ("rehearsal", "test", "tmp", "scratch")
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
DEMO_CASSETTE = Path("solana") / "generated" / "demo_payment.json"
ROLLBACK_CASSETTE = Path("solana") / "generated" / "usdc_reference_memo.json"
SERVICE_TOKEN = "rehearsal-service-" + uuid.uuid4().hex
STAFF_TOKENS = {
    "rehearsal-staff-" + uuid.uuid4().hex: "rehearsal-operator",
    "rehearsal-staff-" + uuid.uuid4().hex: "rehearsal-approver",
}
OWNER = "rehearsal-owner"
API_LOGGER = "railproof.api"
INJECTED_FAULT = "apply fails after the receipt insert (Engine.fail_after_receipt_insert)"

# The commands the runbook (README "Operator CLI") tells an operator to run, with the flags it
# relies on. Introspected from the Typer app: a renamed command or flag fails the rehearsal
# before an incident finds out.
CONTEXT = ("--incident-id", "--operator-reason")
RUNBOOK_COMMANDS: dict[str, tuple[str, ...]] = {
    "rail-production-readiness": (),
    "list-proof-contracts": ("--rail-id",),
    "list-rail-proofs": ("--rail-id", "--status", "--limit"),
    "inspect-rail-proof": (),
    "list-rail-proof-verification-attempts": (),
    "list-rail-proof-settlement-evidence": (),
    "dry-run-rail-proof-apply": ("--fail-on-blockers",),
    "list-stuck-idempotency-claims": ("--min-age-seconds", "--endpoint", "--limit"),
    "assurance": (),
    "list-webhook-events": ("--status",),
    "inspect-webhook-event": ("--include-payload",),
    "list-reconciliation-runs": ("--scope", "--limit"),
    "inspect-reconciliation-run": (),
    "pause-rail": ("--confirm", *CONTEXT),
    "resume-rail": ("--confirm", *CONTEXT),
    "apply-rail-proof": ("--confirm", *CONTEXT),
    "create-rail-proof-receipt": ("--confirm", *CONTEXT),
    "revoke-entitlement": ("--confirm", *CONTEXT),
    "request-rail-production": CONTEXT,
    "approve-rail-change": ("--confirm", *CONTEXT),
    "reject-rail-change": ("--confirm", *CONTEXT),
    "replay-webhook-event": ("--confirm-no-live-payment", *CONTEXT),
    "reconcile": ("--scope", "--rail-id", "--since", "--until", "--apply", "--confirm", *CONTEXT),
    "serve": ("--host", "--port", "--workers"),
    "worker": ("--once",),
    "db upgrade": (),
    "db current": (),
    "db history": (),
    "verify-offline": (),
    "record": (),
    "demo": (),
    "bench": (),
    "rehearse": ("--database-url", "--out", "--scrubbed-snapshot", *CONTEXT),
    "audit verify": ("--checkpoint",),
    "audit checkpoint": ("--out",),
    "alerts generate": ("--out",),
}
GLOBAL_OPTIONS = ("--base-url", "--staff-token-file", "--version")
# The runbook documents, where a source checkout has them: (path, section or "" for all).
SOURCE_ROOT = REPO_FIXTURES.parent
RUNBOOK_DOCS = (("README.md", "## Operator CLI"), ("docs/runbook.md", ""))

# Sensitive columns, by name: a column is sensitive when one of these words is a word of its
# name (split on "_"). Only text and JSON columns are counted (`response_code` is a number).
# Decided from verifier/storage/*models.py: webhook secrets, stored proofs (an x402 payload
# carries a signature), event payloads and cached API responses, payer wallet addresses,
# free-text memos, endpoint URLs (may embed credentials), delivery errors (a receiver's
# answer), and whatever a later table names token/password/email/phone.
SENSITIVE_WORDS: dict[str, str] = {
    "secret": "secret",
    "token": "secret",
    "password": "secret",
    "credential": "secret",
    "raw": "payload",
    "payload": "payload",
    "response": "payload",
    "body": "payload",
    "error": "payload",
    "email": "contact",
    "phone": "contact",
    "payer": "address",
    "address": "address",
    "ip": "address",
    "url": "endpoint",
    "memo": "free_text",
}
EMPTY_VALUES = ("", "null", "{}", "[]", '""')
_TEXTLIKE = re.compile(r"char|text|json|clob|string", re.IGNORECASE)

STEP_NAMES = REHEARSAL_STEPS  # what the e2e_rehearsal release gate requires
SNAPSHOT_STEP_NAMES = ("snapshot_migration_preflight", "snapshot_scrub")


class Refusal(Exception):
    """The database is not one a rehearsal may write to (exit 2)."""


def disposable_reason(url: str) -> str | None:
    """None when `url` is disposable by the rule above, else why it is production-like."""
    try:
        u = make_url(url)
    except Exception:
        return "not a database URL"
    backend = u.get_backend_name()
    if backend == "sqlite":
        if not u.database or u.database == ":memory:":
            return "an in-memory SQLite database cannot be migrated and then reopened"
        path = Path(u.database)
        if not path.is_absolute():
            return "a relative SQLite path (use a file inside the temporary directory)"
        tmp = Path(tempfile.gettempdir()).resolve()
        if not path.resolve().is_relative_to(tmp):
            return f"a SQLite file outside the temporary directory {tmp}"
        return None
    if backend == "postgresql":
        if (u.host or "") not in LOCAL_HOSTS:
            return f"PostgreSQL on {u.host or 'a socket'}, not on 127.0.0.1/localhost"
        name = (u.database or "").lower()
        if not any(w in name for w in DISPOSABLE_WORDS):
            return (
                f"PostgreSQL database {u.database!r} has none of "
                f"{', '.join(DISPOSABLE_WORDS)} in its name"
            )
        return None
    return f"a {backend} database"


def check_target(url: str, confirmed: bool) -> None:
    reason = disposable_reason(url)
    if reason is not None and not confirmed:
        raise Refusal(
            f"{_safe(url)} looks production-like ({reason}); rehearse on a "
            "disposable database, or pass --i-understand-this-is-not-production"
        )


def _safe(url: str) -> str:
    from verifier.storage.db import shown_url

    return shown_url(url)


def _sha256_json(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj)).hexdigest()


def evidence_bytes(doc: dict[str, Any]) -> bytes:
    """The evidence file's exact bytes: sorted keys, two-space indent, ASCII, one trailing
    newline. Re-serializing the parsed file gives the same bytes, hence the same sha256."""
    return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=True) + "\n").encode()


def evidence_sha256(path: Path) -> str:
    """The sha256 of an evidence file as written (what a release gate records)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Step:
    name: str
    ok: bool
    detail: str
    request: dict[str, Any] | None = None
    status: int | None = None
    response: Any = None
    response_sha256: str | None = None
    expected_fault: str | None = None


@dataclass
class Rehearsal:
    url: str
    operator: dict[str, str]
    steps: list[Step] = field(default_factory=list)
    on_step: Callable[[str], None] = lambda _name: None

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(s.ok for s in self.steps)

    def add(
        self,
        name: str,
        ok: bool,
        detail: str,
        resp: Any = None,
        request: dict[str, Any] | None = None,
        data: Any = None,
        expected_fault: str | None = None,
    ) -> bool:
        step = Step(name, bool(ok), detail, request, expected_fault=expected_fault)
        if resp is not None:
            step.status = resp.status_code
            try:
                step.response = resp.json()
            except ValueError:
                step.response = resp.text
        elif data is not None:
            step.response = data
        if step.response is not None:
            step.response_sha256 = _sha256_json(step.response)
        self.steps.append(step)
        self.on_step(name)
        return step.ok


@dataclass(frozen=True)
class RehearsalResult:
    code: int  # 0 every step behaved, 1 one did not, 2 refused / invalid argument
    evidence: Path | None = None
    sha256: str | None = None


# -- checks that need no database -------------------------------------------------------------


def check_alert_rules() -> tuple[bool, str, dict[str, Any]]:
    """The generated rules against the metric spec, through the public functions only."""
    from prometheus_client.parser import text_string_to_metric_families

    from verifier.core.metrics import Metrics, alert_rules, spec_document
    from verifier.services.alerts import render_rules

    problems: list[str] = []
    text = render_rules()
    doc = alert_rules()
    if json.loads(text) != doc:
        problems.append("the rules file `railproof alerts generate` writes differs from the spec")
    rules = [r for g in doc.get("groups", []) for r in g.get("rules", [])]
    want: dict[str, tuple[str, dict[str, Any]]] = {}
    for m in spec_document().get("metrics", []):
        for a in m.get("alerts", []):
            want[a["name"]] = (m["name"], a)
    got: dict[str, dict[str, Any]] = {}
    for r in rules:
        if r.get("alert") in got:
            problems.append(f"{r['alert']}: more than one rule")
        got[r.get("alert", "?")] = r
    problems += [f"{n}: in the spec, no rule" for n in sorted(want.keys() - got.keys())]
    problems += [f"{n}: a rule for no alert of the spec" for n in sorted(got.keys() - want.keys())]
    # The runbook's sections by anchor (GitHub's: the heading in lower case), when at hand.
    runbook_doc = SOURCE_ROOT / "docs" / "runbook.md"
    runbook = (
        {h.strip().lower() for h in re.findall(r"^## (.+)$", runbook_doc.read_text(), re.M)}
        if runbook_doc.is_file()
        else None
    )
    exposed: set[str] = set()
    for fam in text_string_to_metric_families(Metrics().render().decode()):
        exposed.add(fam.name)
        exposed.update(fam.name + suffix for suffix in ("_total", "_bucket", "_count", "_sum"))
    for name in sorted(want.keys() & got.keys()):
        metric, a = want[name]
        r = got[name]
        if r.get("expr") != a.get("expr") or "{m}" in str(r.get("expr")):
            problems.append(f"{name}: expr differs from the spec")
        if metric not in str(r.get("expr")):
            problems.append(f"{name}: does not query its metric {metric}")
        if metric not in exposed:
            problems.append(f"{name}: {metric} is not exposed on /metrics")
        if r.get("for") != a.get("for_", a.get("for")):
            problems.append(f"{name}: `for` differs from the spec")
        if (r.get("labels") or {}).get("severity") != a.get("severity"):
            problems.append(f"{name}: severity differs from the spec")
        if not (r.get("annotations") or {}).get("summary"):
            problems.append(f"{name}: no summary")
        url = str((r.get("annotations") or {}).get("runbook_url") or "")
        if runbook is not None and url.partition("#")[0].endswith("runbook.md"):
            if url.partition("#")[2] not in runbook:
                problems.append(f"{name}: {url} has no section in docs/runbook.md")
    data = {
        "rules": len(rules),
        "spec_alerts": len(want),
        "rules_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "runbook_sections_checked": runbook is not None,
        "problems": problems,
    }
    detail = (
        f"{len(rules)} rules match the {len(want)} alerts of the metric spec"
        if not problems
        else "; ".join(problems)
    )
    return not problems, detail, data


def documented_commands(root: Path = SOURCE_ROOT) -> dict[str, list[str]]:
    """The commands the runbook documents name, per document (a source checkout only: the
    wheel ships no docs: README's "Operator CLI" section and docs/runbook.md): every
    `railproof X`, and every backticked `x-y …` or `x --flag`/`x ID`."""
    groups = {name.split()[0] for name in RUNBOOK_COMMANDS if " " in name}
    found: dict[str, list[str]] = {}
    for rel, section in RUNBOOK_DOCS:
        path = root / rel
        if not path.is_file():
            continue
        text = path.read_text()
        if section:
            text = text.split(section, 1)[-1].split("\n## ", 1)[0] if section in text else ""
        names: set[str] = set()
        for span in re.findall(r"`([^`\n]+)`", text):
            words = span.split()
            if words and words[0] == "railproof":
                words = words[1:]
            elif not words or not (
                "-" in words[0] or (len(words) > 1 and re.match(r"--|[A-Z]", words[1]))
            ):
                continue  # a bare word (a status, a severity) without a flag or an argument
            if not words or not re.fullmatch(r"[a-z][a-z-]+", words[0]):
                continue  # a flag, a variable, a URL
            two = " ".join(words[:2])
            names.add(two if words[0] in groups and len(words) > 1 else words[0])
        for m in re.finditer(r"railproof ([a-z][a-z-]+)(?: ([a-z][a-z-]+))?", text):
            first, second = m.group(1), m.group(2)
            names.add(f"{first} {second}" if first in groups and second else first)
        found[rel] = sorted(names)
    return found


def check_operator_commands(
    runbook: dict[str, tuple[str, ...]] | None = None, docs_root: Path = SOURCE_ROOT
) -> tuple[bool, str, dict[str, Any]]:
    """Every runbook command, and each flag it relies on, exists in the CLI (introspected):
    the list above, and every command the runbook documents name when they are at hand."""
    import typer

    from verifier.cli.main import app

    book = dict(RUNBOOK_COMMANDS if runbook is None else runbook)
    documented = documented_commands(docs_root)
    for names in documented.values():
        for name in names:
            book.setdefault(name, ())
    root = typer.main.get_command(app)  # duck-typed: Typer ships its own Click
    missing: list[str] = []
    for option in GLOBAL_OPTIONS:
        if not any(option in p.opts for p in root.params):
            missing.append(f"railproof {option}")
    for name, flags in sorted(book.items()):
        cmd: Any = root
        for part in name.split():
            cmd = (getattr(cmd, "commands", None) or {}).get(part)
        if cmd is None:
            missing.append(name)
            continue
        opts = {o for p in cmd.params for o in p.opts}
        missing += [f"{name} {f}" for f in flags if f not in opts]
    data = {"commands": len(book), "documents": sorted(documented), "missing": missing}
    if missing:
        return False, "missing from the CLI: " + ", ".join(missing), data
    return True, f"all {len(book)} runbook commands and their flags exist", data


# -- read-only database checks ----------------------------------------------------------------


def _read_only_engine(url: str):
    """An engine that cannot write: SQLite opened with mode=ro (a missing file is not created),
    PostgreSQL sessions defaulting to read-only transactions."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        path = Path(u.database or "").resolve()
        return create_engine(f"sqlite:///file:{path}?mode=ro&uri=true", poolclass=NullPool)
    if u.get_backend_name() == "postgresql":
        return create_engine(
            u,
            poolclass=NullPool,
            connect_args={"options": "-c default_transaction_read_only=on"},
        )
    return create_engine(u, poolclass=NullPool)


@contextmanager
def read_only(url: str) -> Iterator[tuple[Connection, bool]]:
    """A connection inside a transaction that is read-only and always rolled back; yields it
    and whether the database itself confirmed read-only (PostgreSQL: SET TRANSACTION READ
    ONLY then `transaction_read_only`; SQLite: PRAGMA query_only on a mode=ro file)."""
    eng = _read_only_engine(url)
    try:
        with eng.connect() as conn:
            trans = conn.begin()
            try:
                backend = eng.dialect.name
                if backend == "postgresql":
                    conn.exec_driver_sql("SET TRANSACTION READ ONLY")
                    confirmed = conn.exec_driver_sql("SHOW transaction_read_only").scalar() == "on"
                elif backend == "sqlite":
                    conn.exec_driver_sql("PRAGMA query_only = 1")
                    confirmed = conn.exec_driver_sql("PRAGMA query_only").scalar() == 1
                else:
                    confirmed = False
                yield conn, confirmed
            finally:
                trans.rollback()
    finally:
        eng.dispose()


def migration_preflight(url: str) -> dict[str, Any]:
    """Alembic current vs head, read in a read-only transaction that is rolled back: what
    `railproof db upgrade` would run. Writes nothing, creates no file."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from verifier.storage.db import alembic_config, sqlite_path

    scripts = ScriptDirectory.from_config(alembic_config(url))
    head = scripts.get_current_head()
    known = {r.revision for r in scripts.walk_revisions()}
    path = sqlite_path(url)
    if path is not None and not path.exists():
        current, confirmed = None, True  # nothing to open: no file, nothing to write to
    else:
        with read_only(url) as (conn, confirmed):
            current = MigrationContext.configure(conn).get_current_revision()
    if current is not None and current not in known:
        pending: list[str] = []
    else:
        pending = [r.revision for r in reversed(list(scripts.iterate_revisions(head, current)))]
    return {
        "current": current,
        "head": head,
        "known_revision": current is None or current in known,
        "pending": pending,
        "read_only": confirmed,
    }


def _preflight_step(reh: Rehearsal, name: str, url: str) -> bool:
    try:
        pf = migration_preflight(url)
    except Exception as e:
        return reh.add(name, False, f"cannot read the schema revision: {type(e).__name__}")
    if not pf["known_revision"]:
        detail = f"schema at {pf['current']}, unknown to this release (head {pf['head']})"
    elif pf["pending"]:
        detail = (
            f"schema at {pf['current'] or 'none'}; upgrade would run {', '.join(pf['pending'])}"
        )
    else:
        detail = f"schema at head {pf['head']}"
    ok = pf["read_only"] and pf["known_revision"]
    if not pf["read_only"]:
        detail += "; the database did not confirm a read-only transaction"
    return reh.add(name, ok, detail + " (read-only, rolled back)", data=pf)


def _sensitive_category(name: str) -> str | None:
    for word in name.lower().split("_"):
        if word in SENSITIVE_WORDS:
            return SENSITIVE_WORDS[word]
    return None


def scrub_inventory(url: str) -> dict[str, Any]:
    """Sensitive columns of every table, by name, each with how many rows hold a non-empty
    value (NULL, '' and empty JSON count as scrubbed). Counts only: no value is read out."""
    columns: list[dict[str, Any]] = []
    with read_only(url) as (conn, confirmed):
        insp = inspect(conn)
        for tname in sorted(insp.get_table_names()):
            for col in insp.get_columns(tname):
                cname = str(col["name"])
                category = _sensitive_category(cname)
                if category is None or not _TEXTLIKE.search(str(col["type"])):
                    continue
                c: ColumnClause[Any] = column(cname)
                as_text = cast(c, Text)
                n = conn.execute(
                    select(func.count())
                    .select_from(table(tname, c))
                    .where(c.is_not(None), as_text.not_in(EMPTY_VALUES))
                ).scalar_one()
                columns.append(
                    {"table": tname, "column": cname, "category": category, "non_empty": int(n)}
                )
    return {
        "read_only": confirmed,
        "sensitive_columns": columns,
        "scrub_risks": sum(c["non_empty"] for c in columns),
    }


def _snapshot_problem(url: str) -> str | None:
    from verifier.storage.db import sqlite_path

    if disposable_reason(url) == "not a database URL":
        return "not a database URL"
    path = sqlite_path(url)
    if path is not None and not path.is_file():
        return f"no SQLite file at {path}"
    return None


def _snapshot_steps(reh: Rehearsal, url: str) -> dict[str, Any]:
    doc: dict[str, Any] = {"database": _safe(url)}
    _preflight_step(reh, "snapshot_migration_preflight", url)
    doc["migration"] = reh.steps[-1].response
    try:
        inv = scrub_inventory(url)
    except Exception as e:
        reh.add("snapshot_scrub", False, f"cannot inventory the snapshot: {type(e).__name__}")
        return doc
    doc.update(inv)
    risky = [
        f"{c['table']}.{c['column']} ({c['non_empty']})"
        for c in inv["sensitive_columns"]
        if c["non_empty"]
    ]
    reh.add(
        "snapshot_scrub",
        inv["read_only"] and not risky,
        (
            f"{len(inv['sensitive_columns'])} sensitive columns, all empty"
            if not risky
            else f"{inv['scrub_risks']} scrub risks (non-empty sensitive values): "
            + ", ".join(risky)
        ),
        data=inv,
    )
    return doc


# -- the run ------------------------------------------------------------------------------------


def run_rehearsal(
    database_url: str,
    out: Path,
    confirmed: bool = False,
    echo: Callable[[str], None] = print,
    *,
    incident_id: str,
    operator_reason: str,
    scrubbed_snapshot: str | None = None,
    progress_stream: IO[str] | None = None,
) -> RehearsalResult:
    """Run the rehearsal and write its evidence; the result holds the exit code and the
    evidence file's sha256. A progress bar is drawn on `progress_stream` (default stdout)
    only when it is a terminal."""
    for flag, value in (("--incident-id", incident_id), ("--operator-reason", operator_reason)):
        if not value or not value.strip():
            echo(f"error: {flag}: required, and not blank (it is recorded in the evidence)")
            return RehearsalResult(2)
    # Before any work: the rehearsal takes a while, and its evidence would be lost to an
    # error at the end. OUT's directories are made; OUT.sha256 is written beside it.
    for path in (out, _digest_path(out)):
        if (why := unwritable(path, make_dirs=True)) is not None:
            echo(f"error: --out: cannot write {path}: {why}")
            return RehearsalResult(2)
    if scrubbed_snapshot is not None:
        problem = _snapshot_problem(scrubbed_snapshot)
        if problem:
            echo(f"error: --scrubbed-snapshot: {problem}")
            return RehearsalResult(2)
    try:
        check_target(database_url, confirmed)
        _refuse_non_empty(database_url)
    except Refusal as e:
        echo(f"error: {e}")
        return RehearsalResult(2)
    operator = {"incident_id": incident_id.strip(), "operator_reason": operator_reason.strip()}
    total = len(STEP_NAMES) + (len(SNAPSHOT_STEP_NAMES) if scrubbed_snapshot else 0)
    root = DEFAULT_CASSETTE_DIR
    cassettes = [root / DEMO_CASSETTE, root / ROLLBACK_CASSETTE]
    started = datetime.now(UTC)
    snapshot_doc: dict[str, Any] | None = None
    with progress("rehearsal", total, stream=progress_stream) as advance:
        reh = Rehearsal(database_url, operator, on_step=advance)
        try:
            for name, check in (
                ("alert_rules", check_alert_rules),
                ("operator_commands", check_operator_commands),
            ):
                ok, detail, data = check()
                reh.add(name, ok, detail, data=data)
            if scrubbed_snapshot:
                snapshot_doc = _snapshot_steps(reh, scrubbed_snapshot)
            if _preflight_step(reh, "migration_preflight", database_url):
                _run(reh, database_url, root, cassettes)
        except Exception as e:  # a crash is a failed rehearsal, on the record, not a traceback
            # The first line only: a driver's message may go on to quote parameters.
            first = (str(e).splitlines() or [""])[0][:200]
            reh.add("unexpected_error", False, f"{type(e).__name__}: {first}")
    evidence = {
        "railproof_rehearsal": EVIDENCE_FORMAT,
        "operator": operator,
        "database": _safe(database_url),
        "confirmed_not_production": confirmed,
        "started_at": started.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "ok": reh.ok,
        "cassettes": [
            {
                "path": p.relative_to(root).as_posix(),
                "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
            }
            for p in cassettes
            if p.is_file()
        ],
        "scrubbed_snapshot": snapshot_doc,
        "steps": [s.__dict__ for s in reh.steps],
    }
    for s in reh.steps:
        mark = "ok  " if s.ok else "FAIL"
        note = " (expected: injected fault)" if s.expected_fault and s.ok else ""
        echo(f"{mark} {s.name}: {s.detail}{note}")
    body = evidence_bytes(evidence)
    digest = hashlib.sha256(body).hexdigest()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(body)
        _digest_path(out).write_text(f"{digest}  {out.name}\n")
    except OSError as e:  # checked up front; still possible (a full disk)
        echo(f"error: --out: cannot write {out}: {e.strerror or e}; no evidence was kept")
        return RehearsalResult(2)
    echo(f"rehearsal {'passed' if reh.ok else 'FAILED'}; evidence in {out}")
    echo(f"evidence sha256: {digest}")
    return RehearsalResult(0 if reh.ok else 1, out, digest)


def _digest_path(out: Path) -> Path:
    """OUT.sha256, beside OUT."""
    return out.with_name(out.name + ".sha256") if out.name else out / ".sha256"


def _refuse_non_empty(url: str) -> None:
    from verifier.storage.db import make_engine
    from verifier.storage.models import PaymentSession

    eng = make_engine(url)
    try:
        if not inspect(eng).has_table(PaymentSession.__tablename__):
            return
        with eng.connect() as c:
            n = c.execute(select(func.count()).select_from(PaymentSession)).scalar_one()
    except Exception as e:
        raise Refusal(f"cannot open {_safe(url)}: {type(e).__name__}") from None
    finally:
        eng.dispose()
    if n:
        raise Refusal(
            f"{_safe(url)} already holds {n} payment sessions; a rehearsal runs "
            "on an empty disposable database only"
        )


class _UnhandledErrors(logging.Filter):
    """Counts the API's "unhandled error" records; while the injected fault is armed its
    record is the expected outcome (counted and kept off the log), any other is a finding."""

    def __init__(self) -> None:
        super().__init__()
        self.expecting = False
        self.expected: list[str] = []
        self.unexpected: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("unhandled error"):
            return True
        if self.expecting:
            self.expected.append(record.getMessage())
            return False
        self.unexpected.append(record.getMessage())
        return True


def _run(reh: Rehearsal, url: str, root: Path, cassettes: list[Path]) -> None:
    from fastapi.testclient import TestClient

    from verifier.core.config import Settings
    from verifier.core.engine import Engine
    from verifier.http.api import create_app
    from verifier.http.ratelimit import RateLimiter
    from verifier.storage.db import current_revision, head_revision, upgrade

    upgrade(url)
    demo_doc = json.loads(cassettes[0].read_text())
    demo = demo_doc["demo"]
    second = json.loads(cassettes[1].read_text())
    settings = Settings(
        database_url=url,
        chain="cassette",
        cassette_dir=root,
        clock=datetime.fromisoformat(demo["clock"].replace("Z", "+00:00")),
        service_tokens={SERVICE_TOKEN: [OWNER]},
        staff_tokens=STAFF_TOKENS,
        apply_rail_allowlist=["solana_usdc"],
        live_apply=False,
        auto_apply=False,
        env={},
    )
    engine = Engine(settings)
    errors = _UnhandledErrors()
    api_log = logging.getLogger(API_LOGGER)
    api_log.addFilter(errors)
    try:
        rev, head = current_revision(engine.db.engine), head_revision(url)
        if not reh.add("migrate", rev == head, f"schema at {rev} (head {head})"):
            return
        engine.ensure_rail_states()
        # Exactly the recorded calls listed in the evidence answer for the network.
        engine.chains.set_transport(
            "solana-mainnet", CassetteTransport.from_files(cassettes, "solana-mainnet")
        )
        app = create_app(engine)
        app.state.rate_limiter = RateLimiter(rate=0)
        with TestClient(app, raise_server_exceptions=False) as client:
            _steps(reh, client, engine, demo, second, errors)
        reh.add(
            "no_unhandled_errors",
            not errors.unexpected,
            "the API logged no error besides the injected fault"
            if not errors.unexpected
            else f"{len(errors.unexpected)} unhandled error(s): " + "; ".join(errors.unexpected),
            data={"expected": errors.expected, "unexpected": errors.unexpected},
        )
    finally:
        api_log.removeFilter(errors)
        engine.db.dispose()


def _steps(
    reh: Rehearsal,
    client: Any,
    engine: Any,
    demo: dict[str, Any],
    second: dict[str, Any],
    errors: _UnhandledErrors,
) -> None:
    svc = {"Authorization": "Bearer " + SERVICE_TOKEN}
    staff = {"Authorization": "Bearer " + next(iter(STAFF_TOKENS))}

    def call(
        method: str,
        path: str,
        headers: dict[str, str],
        body: Any = None,
        params: dict[str, str] | None = None,
    ):
        kw: dict[str, Any] = {"headers": headers}
        if body is not None:
            kw["json"] = body
        if params:
            kw["params"] = params
        return client.request(method, path, **kw), {"method": method, "path": path}

    # 1. session, for the recorded demo payment
    r, req = call(
        "POST",
        "/v1/payment-sessions",
        {**svc, "Idempotency-Key": "rehearsal-s1"},
        {
            "owner_id": OWNER,
            "rail_id": "solana_usdc",
            "access_product_id": "rehearsal-pro",
            "amount": demo["amount"],
            "recipient": demo["recipient"],
            "reference": demo["reference"],
            "memo": demo["memo"],
        },
    )
    sess = r.json()
    if not reh.add(
        "session",
        r.status_code == 201 and sess.get("status") == "open",
        f"HTTP {r.status_code}, session {sess.get('id')}",
        r,
        req,
    ):
        return

    # 2. proof: the payer's signature
    r, req = call(
        "POST",
        "/v1/proofs",
        {**svc, "Idempotency-Key": "rehearsal-p1"},
        {"session_id": sess["id"], "proof": demo["signature"]},
    )
    proof = r.json()
    if not reh.add(
        "proof",
        r.status_code == 201 and proof.get("status") == "verified",
        f"HTTP {r.status_code}, status {proof.get('status')} "
        f"{proof.get('failure_code') or ''}".strip(),
        r,
        req,
    ):
        return
    pid = proof["id"]

    # 3. verify: the attempt says what the chain said
    r, req = call("GET", f"/v1/admin/proofs/{pid}/attempts", staff)
    atts = r.json() if r.status_code == 200 else []
    last = atts[-1] if atts else {}
    obs = last.get("observed") or {}
    reh.add(
        "verify",
        last.get("status") == "verified"
        and last.get("source") == "cassette"
        and str(obs.get("amount")) == str(demo["amount"])
        and obs.get("recipient") == demo["recipient"],
        f"{len(atts)} attempt(s); observed amount {obs.get('amount')} to {obs.get('recipient')}",
        r,
        req,
    )

    # 4. finality: finalized settlement evidence
    r, req = call("GET", f"/v1/admin/proofs/{pid}/settlement-evidence", staff)
    evs = r.json() if r.status_code == 200 else []
    ev = evs[-1] if evs else {}
    reh.add(
        "finality",
        ev.get("finality") == "finalized" and ev.get("is_final") is True and not ev.get("reorged"),
        f"{ev.get('finality')} at slot {ev.get('slot')}",
        r,
        req,
    )

    # 5. dry-run: every check passes, nothing changes
    r, req = call("POST", f"/v1/admin/proofs/{pid}/dry-run-apply", staff, reh.operator)
    rep = r.json()
    failed = [c["name"] for c in rep.get("checks", []) if not c["passed"]]
    reh.add(
        "dry_run",
        r.status_code == 200 and rep.get("would_apply") is True and not failed,
        "would apply" if not failed else "blocked by " + ", ".join(failed),
        r,
        req,
    )

    # 6. apply, then the entitlement is active; apply again changes nothing
    r, req = call("POST", f"/v1/admin/proofs/{pid}/apply", staff, {"confirm": True, **reh.operator})
    applied = r.json()
    if not reh.add(
        "apply",
        r.status_code == 200
        and applied.get("applied") is True
        and applied.get("already_applied") is False,
        f"receipt {applied.get('receipt_id')}, entitlement {applied.get('entitlement_id')}",
        r,
        req,
    ):
        return
    r, req = call("GET", "/v1/entitlements", svc, params={"owner_id": OWNER})
    ents = {e["id"]: e for e in (r.json() if r.status_code == 200 else [])}
    ent = ents.get(applied["entitlement_id"], {})
    reh.add(
        "entitlement_active",
        ent.get("status") == "active" and ent.get("receipt_id") == applied["receipt_id"],
        f"status {ent.get('status')}",
        r,
        req,
    )
    r, req = call("POST", f"/v1/admin/proofs/{pid}/apply", staff, {"confirm": True, **reh.operator})
    again = r.json()
    reh.add(
        "apply_idempotent",
        r.status_code == 200
        and again.get("already_applied") is True
        and again.get("receipt_id") == applied["receipt_id"],
        "second apply changed nothing",
        r,
        req,
    )

    # 7. revoke
    r, req = call(
        "POST",
        f"/v1/admin/entitlements/{applied['entitlement_id']}/revoke",
        staff,
        {"confirm": True, **reh.operator},
    )
    reh.add(
        "revoke",
        r.status_code == 200 and r.json().get("status") == "revoked",
        f"HTTP {r.status_code}, status {r.json().get('status')}",
        r,
        req,
    )

    # 8. forced rollback: a second payment whose apply fails after the receipt insert
    _forced_rollback(reh, call, engine, svc, staff, second, errors)

    # 9. the stored record holds together
    r, req = call("GET", "/v1/admin/audit/verify", staff)
    chain = r.json()
    reh.add(
        "audit_chain",
        r.status_code == 200 and chain.get("ok") is True,
        f"{chain.get('events')} events, {chain.get('message')}",
        r,
        req,
    )
    r, req = call("GET", "/v1/admin/assurance", staff)
    summary = r.json().get("summary", {})
    reh.add(
        "assurance",
        r.status_code == 200 and summary.get("status") == "ok",
        f"{summary.get('status')} score {summary.get('score')}",
        r,
        req,
    )


def _forced_rollback(
    reh: Rehearsal,
    call: Callable,
    engine: Any,
    svc: dict[str, str],
    staff: dict[str, str],
    second: dict[str, Any],
    errors: _UnhandledErrors,
) -> None:
    from verifier.storage.models import (
        AuditEvent,
        Entitlement,
        PaymentSession,
        Receipt,
    )

    exp = second["expect"]
    sig = second["calls"][0]["params"][0]
    r, req = call(
        "POST",
        "/v1/payment-sessions",
        {**svc, "Idempotency-Key": "rehearsal-s2"},
        {
            "owner_id": OWNER,
            "rail_id": "solana_usdc",
            "access_product_id": "rehearsal-rollback",
            "amount": exp["amount"],
            "recipient": exp["recipient"],
            "reference": exp["reference"],
            "memo": exp["memo"],
        },
    )
    sess = r.json()
    if not reh.add("rollback_session", r.status_code == 201, f"session {sess.get('id')}", r, req):
        return
    r, req = call(
        "POST",
        "/v1/proofs",
        {**svc, "Idempotency-Key": "rehearsal-p2"},
        {"session_id": sess["id"], "proof": sig},
    )
    proof = r.json()
    if not reh.add(
        "rollback_proof",
        r.status_code == 201 and proof.get("status") == "verified",
        f"status {proof.get('status')}",
        r,
        req,
    ):
        return
    pid = proof["id"]
    with engine.db.tx() as s:
        audit_before = s.scalar(select(func.count()).select_from(AuditEvent))
    # The injected fault: its 500 and its log record are the expected outcome of this step.
    engine.fail_after_receipt_insert = errors.expecting = True
    try:
        r, req = call(
            "POST", f"/v1/admin/proofs/{pid}/apply", staff, {"confirm": True, **reh.operator}
        )
    finally:
        engine.fail_after_receipt_insert = errors.expecting = False
    with engine.db.tx() as s:
        receipt = s.scalar(select(Receipt.id).where(Receipt.proof_id == pid))
        ent = s.scalar(select(Entitlement).where(Entitlement.session_id == sess["id"]))
        ps = s.get(PaymentSession, sess["id"])
        audit_after = s.scalar(select(func.count()).select_from(AuditEvent))
        state = {
            "receipt": receipt,
            "entitlement": ent.status if ent else None,
            "session": ps.status,
            "audit_rows_added": audit_after - audit_before,
        }
    body_ok = r.status_code == 500 and "Traceback" not in r.text
    reh.add(
        "forced_rollback",
        body_ok
        and len(errors.expected) == 1
        and receipt is None
        and state["entitlement"] == "pending"
        and state["session"] == "open"
        and state["audit_rows_added"] == 0,
        "injected fault answered HTTP 500 as expected; apply failed after the receipt insert "
        "and left " + json.dumps(state, sort_keys=True),
        r,
        req,
        expected_fault=INJECTED_FAULT,
    )
    r, req = call("POST", f"/v1/admin/proofs/{pid}/apply", staff, {"confirm": True, **reh.operator})
    reh.add(
        "apply_after_rollback",
        r.status_code == 200
        and r.json().get("applied") is True
        and r.json().get("already_applied") is False,
        "the same apply succeeds once the fault is gone",
        r,
        req,
    )
