"""`railproof` arguments at the edges: exit 2 with a message naming the option, never a
traceback, and never a success message that is not true.

- `db upgrade --revision`: an Alembic error with no text ('' or 'head+1') is named by its type
  and the option; a revision below the database's is no move, and says so (exit 2), rather
  than "database at <that revision>".
- `--out` paths holding bytes that are not UTF-8 (argv keeps them as surrogate escapes) are
  written and echoed with those bytes escaped, in any UTF-8 locale.
- `--incident-id` / `--operator-reason` longer than the API takes are refused before sending,
  naming the option, not by the server's header limit (431).
- `record-release-gate-evidence --evidence-file` with a gate that takes no file is refused
  before sending, rather than recorded without the file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import test_cli_ops
from tests.test_config_errors import cli, env  # noqa: F401  (env: the fixture)
from verifier.http.guards import MAX_INCIDENT_ID, MAX_OPERATOR_REASON
from verifier.storage.db import current_revision, head_revision, make_engine

ROOT = Path(__file__).resolve().parent.parent
world = test_cli_ops.world  # the fixture: a served engine, one proof ready and one blocked
run = test_cli_ops.run


# -- db upgrade --revision ---------------------------------------------------------------------


@pytest.mark.parametrize("revision", ["", "head+1"])
def test_a_revision_alembic_rejects_without_text_exits_2_naming_it(env, revision):  # noqa: F811
    r = cli("db", "upgrade", "--revision", revision)
    assert isinstance(r.exception, SystemExit), repr(r.exception)  # was IndexError
    assert r.exit_code == 2, (r.exit_code, r.output)
    assert f"error: migration failed (--revision {revision!r}): AssertionError" in r.output
    assert "Traceback" not in r.output


def _at(url: str) -> str | None:
    engine = make_engine(url)
    try:
        return current_revision(engine)
    finally:
        engine.dispose()


def test_upgrade_never_reports_a_revision_the_database_is_not_at(env):  # noqa: F811
    url = os.environ["RAILPROOF_DATABASE_URL"]  # the env fixture migrated it to head
    head = head_revision(url)
    r = cli("db", "upgrade", "--revision", "0001")
    assert _at(url) == head  # nothing moved: upgrade never goes down
    assert r.exit_code == 2, (r.exit_code, r.output)
    assert f"--revision '0001': the database stays at {head}, not 0001" in r.output, r.output
    assert "database at 0001" not in r.output
    # Where it goes, it says where it is.
    r = cli("db", "upgrade", "--revision", "head")
    assert r.exit_code == 0 and f"database at {head}: " in r.output, r.output


# -- --out paths that are not UTF-8 ------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["audit", "checkpoint", "--out"],
        ["alerts", "generate", "--out"],
        ["alerts", "dashboard", "--out"],
    ],
    ids=lambda a: " ".join(a[:2]),
)
def test_an_out_path_that_is_not_utf8_is_written_and_echoed_escaped(env, tmp_path, args):  # noqa: F811
    out = os.fsencode(tmp_path) + b"/out-\xff.json"  # a byte that is not UTF-8, as argv has it
    r = subprocess.run(
        [os.fsencode(sys.executable), b"-m", b"verifier.cli.main", *map(os.fsencode, args), out],
        capture_output=True,
        cwd=ROOT,
        timeout=120,
        # A UTF-8 locale other than C (en_US.UTF-8 ...): stdout encodes strictly.
        env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONIOENCODING": "utf-8"},
    )
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 0 and "Traceback" not in err, (r.returncode, err[-600:])
    assert os.path.exists(out)
    assert b"wrote " + out.replace(b"\xff", rb"\xff") in r.stdout, r.stdout


def test_rehearse_refuses_an_out_path_that_is_not_text(tmp_path):
    out = os.fsencode(tmp_path) + b"/evidence-\xff.json"
    r = subprocess.run(
        [os.fsencode(sys.executable), b"-m", b"verifier.cli.main", b"rehearse"]
        + [b"--database-url", f"sqlite:///{tmp_path}/r.db".encode(), b"--out", out]
        + [b"--incident-id", b"INC-1", b"--operator-reason", b"drill"],
        capture_output=True,
        cwd=ROOT,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONIOENCODING": "utf-8"},
    )
    assert r.returncode == 2, r.stderr[-600:]
    assert b"error: --out: not valid text" in r.stderr and not os.path.exists(out)


# -- over-long operator context ----------------------------------------------------------------

LONG = "I" * 20_000  # a paste gone wrong: more than the API takes, more than a header holds


@pytest.mark.parametrize(
    "args",
    [
        ["list-rail-proofs", "--incident-id", LONG],
        ["list-rail-proofs", "--operator-reason", LONG],
        ["list-rail-proofs", "--incident-id", "é" * (MAX_INCIDENT_ID // 2 + 1)],  # bytes count
        ["pause-rail", "fake_live", "--confirm", "--incident-id", LONG, "--operator-reason", "r"],
    ],
    ids=["read --incident-id", "read --operator-reason", "two-byte text", "pause-rail"],
)
def test_overlong_operator_context_exits_2_naming_the_option(world, args):
    r = run(world, *args)
    option = next(a for a in args if a.startswith("--") and a != "--confirm")
    assert r.exit_code == 2, (r.exit_code, r.output[-300:])
    assert f"error: {option}: at most " in r.output and "nothing was sent" in r.output, r.output


def test_operator_context_at_the_api_limits_is_sent(world):
    r = run(
        world,
        "list-rail-proofs",
        "--json",
        "--incident-id",
        "I" * MAX_INCIDENT_ID,
        "--operator-reason",
        "r" * MAX_OPERATOR_REASON,
    )
    assert r.exit_code == 0, (r.exit_code, r.output[-300:])


# -- record-release-gate-evidence --evidence-file -----------------------------------------------


@pytest.mark.parametrize("gate", ["rate_limit_review", "provider_alerting_review"])
def test_an_evidence_file_for_an_attestation_gate_is_refused_before_any_call(
    env,  # noqa: F811
    tmp_path,
    gate,
):
    # Nothing listens at this address: a call would say "cannot reach".
    env.setenv("RAILPROOF_API_BASE_URL", "http://127.0.0.1:9")
    env.setenv("RAILPROOF_STAFF_TOKEN", "staff-token-ops1")
    env.setenv("COLUMNS", "200")
    evidence = tmp_path / "review.json"
    evidence.write_text("{}")
    for path in (evidence, tmp_path / "missing.json"):
        r = cli(
            "record-release-gate-evidence",
            "--rail-id",
            "evm_usdc",
            "--gate",
            gate,
            "--note",
            "reviewed",
            "--evidence-file",
            str(path),
            "--incident-id",
            "INC-1",
            "--operator-reason",
            "review",
        )
        assert r.exit_code == 2, r.output
        assert (
            "error: --evidence-file is for e2e_rehearsal and alert_rule_integrity only, "
            f"not {gate}" in r.stderr
        ), r.stderr
        assert "cannot reach" not in r.stderr
