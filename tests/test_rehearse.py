"""`railproof rehearse`: refuses production-like databases (exit 2, nothing migrated), and on
a disposable SQLite file or PostgreSQL scratch database runs the live rail end to end and
writes evidence whose checksums can be re-computed."""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text
from typer.testing import CliRunner

from rails.base import canonical_json
from tests.conftest import PG_URL, _pg_admin, _with_db
from verifier.cli.main import app as cli_app
from verifier.core.config import REPO_FIXTURES
from verifier.tools.rehearse import disposable_reason, evidence_bytes

STEPS = [
    "alert_rules",
    "operator_commands",
    "migration_preflight",
    "migrate",
    "session",
    "proof",
    "verify",
    "finality",
    "dry_run",
    "apply",
    "entitlement_active",
    "apply_idempotent",
    "revoke",
    "rollback_session",
    "rollback_proof",
    "forced_rollback",
    "apply_after_rollback",
    "audit_chain",
    "assurance",
    "no_unhandled_errors",
]
CTX = ["--incident-id", "INC-2026-12", "--operator-reason", "pre-release rehearsal"]


def rehearse(*args: str, ctx: list[str] = CTX):
    return CliRunner().invoke(cli_app, ["rehearse", *args, *ctx])


def check_evidence(path: Path, output: str, steps: list[str] = STEPS) -> dict:
    raw = path.read_bytes()
    ev = json.loads(raw)
    assert ev["ok"] is True
    assert [s["name"] for s in ev["steps"]] == steps
    assert all(s["ok"] for s in ev["steps"]), [s for s in ev["steps"] if not s["ok"]]
    # The operator's context is on the record.
    assert ev["operator"] == {
        "incident_id": "INC-2026-12",
        "operator_reason": "pre-release rehearsal",
    }
    # A stable hash: the printed sha256 is the file's, the sidecar agrees, and re-serializing
    # the parsed document gives the same bytes.
    digest = hashlib.sha256(raw).hexdigest()
    assert f"evidence sha256: {digest}" in output
    assert (path.parent / (path.name + ".sha256")).read_text() == f"{digest}  {path.name}\n"
    assert evidence_bytes(ev) == raw
    # Checksums: the cassettes replayed, and each response's canonical JSON.
    assert {c["path"] for c in ev["cassettes"]} == {
        "solana/generated/demo_payment.json",
        "solana/generated/usdc_reference_memo.json",
    }
    for c in ev["cassettes"]:
        assert c["sha256"] == hashlib.sha256((REPO_FIXTURES / c["path"]).read_bytes()).hexdigest()
    with_response = [s for s in ev["steps"] if s["response"] is not None]
    assert len(with_response) >= 17
    for s in with_response:
        assert s["response_sha256"] == hashlib.sha256(canonical_json(s["response"])).hexdigest()
    http = [s for s in ev["steps"] if s["status"] is not None]
    assert len(http) >= 14 and all(s["request"]["path"].startswith("/v1/") for s in http)
    by = {s["name"]: s for s in ev["steps"]}
    assert by["proof"]["response"]["status"] == "verified"
    assert by["forced_rollback"]["status"] == 500
    assert '"receipt": null' in by["forced_rollback"]["detail"]
    assert by["forced_rollback"]["expected_fault"]
    assert [s["name"] for s in ev["steps"] if s["expected_fault"]] == ["forced_rollback"]
    assert by["revoke"]["response"]["status"] == "revoked"
    assert by["alert_rules"]["response"]["problems"] == []
    assert by["operator_commands"]["response"]["missing"] == []
    pre = by["migration_preflight"]["response"]
    assert pre["current"] is None and pre["read_only"] is True and pre["pending"][-1] == pre["head"]
    # The injected fault is reported as the expected outcome, not as an unhandled error.
    assert "unhandled error" not in output
    assert by["no_unhandled_errors"]["response"]["unexpected"] == []
    assert len(by["no_unhandled_errors"]["response"]["expected"]) == 1
    # No credential reaches the evidence.
    assert "rehearsal-service-" not in raw.decode() and "rehearsal-staff-" not in raw.decode()
    return ev


def test_rehearsal_on_sqlite(tmp_path):
    out = tmp_path / "evidence.json"
    r = rehearse("--database-url", f"sqlite:///{tmp_path}/rehearsal.db", "--out", str(out))
    assert r.exit_code == 0, r.output
    assert "rehearsal passed" in r.output
    ev = check_evidence(out, r.output)
    assert ev["database"].endswith("rehearsal.db")
    # The file as written is what the e2e_rehearsal release gate accepts, by its hash.
    from verifier.services.release_gates import _check_rehearsal

    passed, detail = _check_rehearsal(out.read_text(), max_age_days=30)
    assert passed and detail["failed_steps"] == [] and detail["rehearsal_operator"]
    # Run again on the same database: it now holds data, so it is no longer disposable.
    r = rehearse(
        "--database-url",
        f"sqlite:///{tmp_path}/rehearsal.db",
        "--out",
        str(tmp_path / "again.json"),
    )
    assert r.exit_code == 2 and "already holds" in r.output
    assert not (tmp_path / "again.json").exists()


@pytest.mark.postgres
def test_rehearsal_on_postgres_scratch_database(tmp_path):
    if not PG_URL:
        pytest.skip("PostgreSQL tests skipped: set RAILPROOF_TEST_POSTGRES_URL")
    name = "railproof_rehearsal_" + uuid.uuid4().hex[:10]
    admin = _pg_admin()
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        out = tmp_path / "evidence.json"
        r = rehearse("--database-url", _with_db(PG_URL, name), "--out", str(out))
        assert r.exit_code == 0, r.output
        check_evidence(out, r.output)
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_production_like_sqlite_is_refused_and_nothing_is_created(tmp_path, monkeypatch):
    # A relative path in the working directory: what a production deployment's file is.
    monkeypatch.chdir(tmp_path)
    r = rehearse("--database-url", "sqlite:///./railproof.db", "--out", "ev.json")
    assert r.exit_code == 2
    assert "production-like" in r.output and "--i-understand-this-is-not-production" in r.output
    assert not (tmp_path / "railproof.db").exists() and not (tmp_path / "ev.json").exists()


@pytest.mark.postgres
def test_production_like_postgres_is_refused_and_nothing_is_migrated(tmp_path):
    if not PG_URL:
        pytest.skip("PostgreSQL tests skipped: set RAILPROOF_TEST_POSTGRES_URL")
    name = "railproof_ledger_" + uuid.uuid4().hex[:10]  # no disposable word in the name
    admin = _pg_admin()
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        url = _with_db(PG_URL, name)
        r = rehearse("--database-url", url, "--out", str(tmp_path / "ev.json"))
        assert r.exit_code == 2 and "production-like" in r.output, r.output
        eng = create_engine(url)
        try:
            assert inspect(eng).get_table_names() == []  # not even alembic_version
        finally:
            eng.dispose()
        assert not (tmp_path / "ev.json").exists()
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.mark.parametrize(
    "url,disposable",
    [
        ("sqlite:////tmp/x/rehearsal.db", True),
        ("sqlite:///./railproof.db", False),
        ("sqlite:////var/lib/railproof/railproof.db", False),
        ("sqlite://", False),
        ("sqlite:///:memory:", False),
        ("postgresql+psycopg://postgres@127.0.0.1:5432/railproof_rehearsal", True),
        ("postgresql://u:pw@localhost/scratch_1", True),
        ("postgresql+psycopg://postgres@127.0.0.1:5432/TMP_db", True),
        ("postgresql+psycopg://postgres@127.0.0.1:5432/railproof", False),
        ("postgresql+psycopg://postgres@127.0.0.1:5432/postgres", False),
        ("postgresql+psycopg://postgres@db.internal:5432/railproof_test", False),
        ("postgresql+psycopg://postgres@10.0.0.5/rehearsal", False),
        ("mysql://u@127.0.0.1/test", False),
        ("not a url", False),
    ],
)
def test_disposable_rule(url, disposable):
    assert (disposable_reason(url) is None) is disposable, disposable_reason(url)


def test_confirmation_flag_overrides_the_rule():
    from verifier.tools.rehearse import Refusal, check_target

    url = "postgresql+psycopg://postgres@127.0.0.1:5432/railproof"
    with pytest.raises(Refusal):
        check_target(url, confirmed=False)
    check_target(url, confirmed=True)  # the operator said so: no refusal


# -- operator context -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ctx,named",
    [
        ([], "--incident-id"),
        (["--incident-id", "INC-1"], "--operator-reason"),
        (["--incident-id", "  ", "--operator-reason", "why"], "--incident-id"),
        (["--incident-id", "INC-1", "--operator-reason", ""], "--operator-reason"),
    ],
)
def test_incident_id_and_reason_are_required(tmp_path, ctx, named):
    out = tmp_path / "ev.json"
    r = rehearse("--database-url", f"sqlite:///{tmp_path}/rehearsal.db", "--out", str(out), ctx=ctx)
    assert r.exit_code == 2 and named in r.output, r.output
    assert not out.exists() and not (tmp_path / "rehearsal.db").exists()


# -- checks without a database ------------------------------------------------------------------


def test_alert_rule_check_catches_a_rule_out_of_step_with_the_spec(monkeypatch):
    from verifier.core import metrics
    from verifier.tools.rehearse import check_alert_rules

    ok, detail, data = check_alert_rules()
    assert ok and data["rules"] == data["spec_alerts"] > 0, detail
    real = metrics.alert_rules

    def drifted():
        doc = real()
        rules = doc["groups"][0]["rules"]
        dropped = rules.pop(0)["alert"]
        rules[0] = dict(rules[0], expr="vector(1)", labels={"severity": "info"})
        drifted.names = (dropped, rules[0]["alert"])
        return doc

    monkeypatch.setattr(metrics, "alert_rules", drifted)
    ok, detail, data = check_alert_rules()
    dropped, changed = drifted.names
    assert not ok
    assert f"{dropped}: in the spec, no rule" in data["problems"]
    assert f"{changed}: expr differs from the spec" in data["problems"]
    assert f"{changed}: severity differs from the spec" in data["problems"]


def test_operator_command_check_introspects_the_cli():
    from verifier.tools.rehearse import RUNBOOK_COMMANDS, check_operator_commands

    ok, detail, data = check_operator_commands()
    assert ok and data["missing"] == [], detail
    book = {
        **RUNBOOK_COMMANDS,
        "no-such-command": (),
        "db vacuum": (),
        "pause-rail": ("--confirm", "--no-such-flag"),
    }
    ok, detail, data = check_operator_commands(book)
    assert not ok
    assert data["missing"] == ["db vacuum", "no-such-command", "pause-rail --no-such-flag"]


def test_commands_the_runbook_documents_name_are_checked(tmp_path):
    from verifier.tools.rehearse import (
        RUNBOOK_COMMANDS,
        check_operator_commands,
        documented_commands,
    )

    found = documented_commands()
    assert len(found["README.md"]) >= 20 and len(found["docs/runbook.md"]) >= 5
    assert {"pause-rail", "reconcile", "audit verify", "db upgrade"} <= set(found["README.md"])
    # Not commands: words, severities, other tools.
    assert not {"curl", "critical", "warning", "jq"} & set(
        found["README.md"] + found["docs/runbook.md"]
    )

    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text(
        "## Operator CLI\n\n`railproof frobnicate --now`, `pause-rail ID --confirm`, "
        "`railproof audit shred`\n\n## Next\n\n`railproof outside-the-section`\n"
    )
    (tmp_path / "docs" / "runbook.md").write_text("Run `list-nonsense ID`, then `assurance`.\n")
    assert documented_commands(tmp_path) == {
        "README.md": ["audit shred", "frobnicate", "pause-rail"],
        "docs/runbook.md": ["list-nonsense"],
    }
    ok, detail, data = check_operator_commands(RUNBOOK_COMMANDS, docs_root=tmp_path)
    assert not ok
    assert data["missing"] == ["audit shred", "frobnicate", "list-nonsense"], detail


def test_alert_rule_check_needs_a_runbook_section_per_alert(tmp_path, monkeypatch):
    from verifier.core.metrics import alert_rules
    from verifier.tools import rehearse as mod

    rules = [r for g in alert_rules()["groups"] for r in g["rules"]]
    if not any("runbook_url" in r.get("annotations", {}) for r in rules):
        pytest.skip("the rules carry no runbook_url")
    (tmp_path / "docs").mkdir()
    sections = "".join(f"## {r['alert']}\n\ntext\n\n" for r in rules[1:])
    (tmp_path / "docs" / "runbook.md").write_text("# Alert runbook\n\n" + sections)
    monkeypatch.setattr(mod, "SOURCE_ROOT", tmp_path)
    ok, _detail, data = mod.check_alert_rules()
    assert not ok
    assert [p for p in data["problems"] if "no section" in p] == [
        f"{rules[0]['alert']}: {rules[0]['annotations']['runbook_url']} has no section in "
        "docs/runbook.md"
    ]


# -- read-only preflight and the scrubbed snapshot ---------------------------------------------


def test_scrub_inventory_counts_without_reading_values(tmp_path):
    from verifier.tools.rehearse import scrub_inventory

    url = f"sqlite:///{tmp_path}/snap.db"
    eng = create_engine(url)
    with eng.begin() as c:
        c.execute(
            text(
                "CREATE TABLE customers (id INTEGER PRIMARY KEY, api_token TEXT, "
                "customer_email VARCHAR(80), response_code INTEGER, note TEXT, payload JSON)"
            )
        )
        c.execute(
            text(
                "INSERT INTO customers (api_token, customer_email, response_code, note, payload)"
                " VALUES ('tok-1', 'a@example.org', 200, 'x', '{}'), "
                "(NULL, '', 500, 'y', '{\"k\": 1}'), ('tok-3', NULL, NULL, NULL, 'null')"
            )
        )
    eng.dispose()
    inv = scrub_inventory(url)
    assert inv["read_only"] is True
    cols = {
        (c["table"], c["column"]): (c["category"], c["non_empty"]) for c in inv["sensitive_columns"]
    }
    assert cols == {
        ("customers", "api_token"): ("secret", 2),
        ("customers", "customer_email"): ("contact", 1),
        ("customers", "payload"): ("payload", 1),
    }
    assert inv["scrub_risks"] == 4


def _scrub(url: str) -> None:
    eng = create_engine(url)
    with eng.begin() as c:
        for tname, cname in (
            ("proofs", "raw"),
            ("payment_sessions", "memo"),
            ("payment_sessions", "payer"),
            ("idempotency_claims", "response"),
            ("outbox_events", "payload"),
            ("webhook_endpoints", "secret"),
            ("webhook_endpoints", "url"),
            ("webhook_deliveries", "last_error"),
        ):
            c.execute(text(f"UPDATE {tname} SET {cname} = ''"))
    eng.dispose()


def test_scrubbed_snapshot_mode_on_sqlite(tmp_path):
    # A production-like copy: a database that went through a full rehearsal holds payments.
    snap = tmp_path / "snapshot.db"
    r = rehearse("--database-url", f"sqlite:///{snap}", "--out", str(tmp_path / "first.json"))
    assert r.exit_code == 0, r.output
    # Values only the snapshot holds: none may reach the output or the evidence.
    sentinel = "scrub-sentinel-" + uuid.uuid4().hex
    eng = create_engine(f"sqlite:///{snap}")
    with eng.begin() as c:
        c.execute(text("UPDATE payment_sessions SET memo = :v, payer = :v"), {"v": sentinel})
    eng.dispose()
    before = snap.read_bytes()

    # Not scrubbed: the run fails on the scrub check, naming columns and counts only.
    out = tmp_path / "unscrubbed.json"
    r = rehearse(
        "--database-url",
        f"sqlite:///{tmp_path}/r2.db",
        "--out",
        str(out),
        "--scrubbed-snapshot",
        f"sqlite:///{snap}",
    )
    assert r.exit_code == 1, r.output
    ev = json.loads(out.read_text())
    by = {s["name"]: s for s in ev["steps"]}
    assert by["snapshot_migration_preflight"]["ok"] is True
    assert by["snapshot_migration_preflight"]["response"]["pending"] == []
    assert by["snapshot_scrub"]["ok"] is False
    risky = {
        f"{c['table']}.{c['column']}": c["non_empty"]
        for c in ev["scrubbed_snapshot"]["sensitive_columns"]
        if c["non_empty"]
    }
    assert risky["proofs.raw"] == 2 and risky["payment_sessions.memo"] == 2
    assert ev["scrubbed_snapshot"]["scrub_risks"] == sum(risky.values())
    assert risky["payment_sessions.payer"] == 2
    assert sentinel not in r.output and sentinel not in out.read_text()
    # Everything else still passed: only the snapshot's scrub failed.
    assert [s["name"] for s in ev["steps"] if not s["ok"]] == ["snapshot_scrub"]
    assert snap.read_bytes() == before  # opened read-only

    _scrub(f"sqlite:///{snap}")
    out = tmp_path / "scrubbed.json"
    r = rehearse(
        "--database-url",
        f"sqlite:///{tmp_path}/r3.db",
        "--out",
        str(out),
        "--scrubbed-snapshot",
        f"sqlite:///{snap}",
    )
    assert r.exit_code == 0, r.output
    ev = check_evidence(
        out,
        r.output,
        STEPS[:2] + ["snapshot_migration_preflight", "snapshot_scrub"] + STEPS[2:],
    )
    assert ev["scrubbed_snapshot"]["scrub_risks"] == 0
    assert {c["column"] for c in ev["scrubbed_snapshot"]["sensitive_columns"]} >= {
        "raw",
        "memo",
        "payer",
        "response",
        "payload",
        "secret",
        "url",
    }


def test_scrubbed_snapshot_that_is_not_there_is_refused(tmp_path):
    r = rehearse(
        "--database-url",
        f"sqlite:///{tmp_path}/r.db",
        "--out",
        str(tmp_path / "ev.json"),
        "--scrubbed-snapshot",
        f"sqlite:///{tmp_path}/missing.db",
    )
    assert r.exit_code == 2 and "--scrubbed-snapshot" in r.output
    assert not (tmp_path / "missing.db").exists() and not (tmp_path / "ev.json").exists()


@pytest.mark.postgres
def test_migration_preflight_on_postgres_is_read_only(tmp_path):
    if not PG_URL:
        pytest.skip("PostgreSQL tests skipped: set RAILPROOF_TEST_POSTGRES_URL")
    from verifier.storage.db import current_revision, head_revision, upgrade
    from verifier.tools.rehearse import migration_preflight, read_only

    name = "railproof_snapshot_" + uuid.uuid4().hex[:10]  # production-like: read only
    admin = _pg_admin()
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        url = _with_db(PG_URL, name)
        upgrade(url, "0002")
        pf = migration_preflight(url)
        assert pf["read_only"] is True and pf["current"] == "0002"
        assert pf["pending"][0] == "0003" and pf["pending"][-1] == head_revision(url)
        with read_only(url) as (conn, confirmed), pytest.raises(Exception, match="read-only"):
            conn.execute(text("CREATE TABLE written (id int)"))
        eng = create_engine(url)
        try:
            assert current_revision(eng) == "0002"
            assert "written" not in inspect(eng).get_table_names()
        finally:
            eng.dispose()
        r = rehearse(
            "--database-url",
            f"sqlite:///{tmp_path}/r.db",
            "--out",
            str(tmp_path / "ev.json"),
            "--scrubbed-snapshot",
            url,
        )
        assert r.exit_code == 0, r.output
        ev = json.loads((tmp_path / "ev.json").read_text())
        assert ev["scrubbed_snapshot"]["migration"]["current"] == "0002"
        assert ev["scrubbed_snapshot"]["read_only"] is True
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# -- progress --------------------------------------------------------------------------------


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_is_drawn_on_a_terminal_only(tmp_path):
    from verifier.tools.rehearse import run_rehearsal

    tty = _Tty()
    res = run_rehearsal(
        f"sqlite:///{tmp_path}/a.db",
        tmp_path / "a.json",
        echo=lambda _line: None,
        incident_id="INC-1",
        operator_reason="progress",
        progress_stream=tty,
    )
    assert res.code == 0 and "rehearsal" in tty.getvalue() and "\x1b[" in tty.getvalue()
    assert res.sha256 == hashlib.sha256((tmp_path / "a.json").read_bytes()).hexdigest()
    piped = io.StringIO()
    res = run_rehearsal(
        f"sqlite:///{tmp_path}/b.db",
        tmp_path / "b.json",
        echo=lambda _line: None,
        incident_id="INC-1",
        operator_reason="progress",
        progress_stream=piped,
    )
    assert res.code == 0 and piped.getvalue() == ""


@pytest.mark.parametrize("where", ["a directory", "under a file", "its .sha256 a directory"])
def test_unwritable_out_is_refused_before_any_work(tmp_path, where):
    # `--out DIR` ran the whole rehearsal, then died writing the evidence (IsADirectoryError,
    # a traceback): the run was lost. Like `bench --plot`, --out is checked first.
    db = tmp_path / "rehearsal.db"
    if where == "a directory":
        out = tmp_path
    elif where == "under a file":
        (tmp_path / "plain").write_text("x")
        out = tmp_path / "plain" / "ev.json"
    else:
        out = tmp_path / "ev.json"
        (tmp_path / "ev.json.sha256").mkdir()
    r = rehearse("--database-url", f"sqlite:///{db}", "--out", str(out))
    assert isinstance(r.exception, SystemExit), repr(r.exception)
    assert r.exit_code == 2, (r.exit_code, r.output[-500:])
    assert "error: --out: cannot write" in r.output, r.output[-500:]
    assert "ok  " not in r.output  # no step ran
    assert not db.exists(), "nothing is migrated before --out is known to be writable"


def test_evidence_that_cannot_be_written_at_the_end_is_a_message_not_a_traceback(
    tmp_path, monkeypatch
):
    # Checked up front, the write can still fail (a full disk): say so, exit 2.
    from verifier.tools import rehearse as mod

    def full(self, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mod, "_run", lambda *a, **k: None)
    monkeypatch.setattr(Path, "write_bytes", full)
    out = tmp_path / "ev.json"
    r = rehearse("--database-url", f"sqlite:///{tmp_path}/rehearsal.db", "--out", str(out))
    assert isinstance(r.exception, SystemExit), repr(r.exception)
    assert r.exit_code == 2, (r.exit_code, r.output[-500:])
    assert "--out: cannot write" in r.output and "No space left" in r.output, r.output
