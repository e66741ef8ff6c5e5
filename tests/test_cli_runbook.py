"""The operator command lines the runbook uses, against a real API server (issue 14):

- every state-changing command refuses, before sending anything, without --incident-id and
  --operator-reason (exit 2, naming the missing flag);
- the runbook's flags: list-stuck-idempotency-claims --endpoint/--limit, inspect-webhook-event
  --include-payload, replay-webhook-event --confirm-no-live-payment, --limit on every list;
- --base-url and --staff-token-file on every operator command, before or after its name;
- tables print whole ids when stdout is not a terminal;
- dry-run-rail-proof-apply exits 0 when the report was produced (--fail-on-blockers: 1 on a
  standing blocker).
"""

from __future__ import annotations

import json
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from tests import test_cli_ops
from tests.conftest import STAFF_TOKEN, auth
from tests.live_server import closed_port
from verifier.cli.main import app as cli_app
from verifier.core import timeutil
from verifier.services.events import emit
from verifier.storage.models import IdempotencyClaim

world = test_cli_ops.world  # the fixture: a served engine, one proof ready and one blocked
CTX = ["--incident-id", "INC-77", "--operator-reason", "runbook step"]

# Every operator command that changes state, with the arguments it needs besides the context.
STATE_CHANGING = {
    "apply-rail-proof": ["prf_x", "--confirm"],
    "create-rail-proof-receipt": ["prf_x", "--confirm"],
    "pause-rail": ["fake_live", "--confirm"],
    "resume-rail": ["fake_live", "--confirm"],
    "request-rail-production": ["fake_live"],
    "approve-rail-change": ["apr_x", "--confirm"],
    "revoke-entitlement": ["ent_x", "--confirm"],
    "replay-webhook-event": ["evt_x", "--confirm-no-live-payment"],
    "record-release-gate-evidence": ["--rail-id", "fake_live", "--gate", "rate_limit_review"],
}
LIST_COMMANDS = {  # list command -> arguments it needs
    "rail-production-readiness": [],
    "list-proof-contracts": [],
    "list-rail-proofs": [],
    "list-rail-proof-verification-attempts": ["<ready>"],
    "list-rail-proof-settlement-evidence": ["<ready>"],
    "list-stuck-idempotency-claims": ["--min-age-seconds", "0"],
    "list-webhook-events": [],
}
OPERATOR_COMMANDS = (
    set(STATE_CHANGING)
    | set(LIST_COMMANDS)
    | {
        "rail-production-readiness",
        "inspect-rail-proof",
        "dry-run-rail-proof-apply",
        "assurance",
        "inspect-webhook-event",
        "reconcile",
        "list-reconciliation-runs",
        "inspect-reconciliation-run",
        "resolve-finding",
    }
)


def cli(*args: str, env: dict[str, str | None] | None = None):
    base = {
        "RAILPROOF_API_BASE_URL": None,
        "RAILPROOF_STAFF_TOKEN": None,
        "PORT": None,
        "COLUMNS": "200",
    }
    return CliRunner().invoke(cli_app, list(args), env={**base, **(env or {})})


def served(world, *args: str, columns: str = "200"):
    return cli(
        *args,
        env={
            "RAILPROOF_API_BASE_URL": world["url"],
            "RAILPROOF_STAFF_TOKEN": STAFF_TOKEN,
            "COLUMNS": columns,
        },
    )


def served_json(world, *args: str):
    r = served(world, *args, "--json")
    assert r.exit_code == 0, (r.exit_code, r.output)
    return json.loads(r.stdout)


# -- item 3: incident context on every state-changing command -------------------------------


@pytest.mark.parametrize("command", sorted(STATE_CHANGING))
def test_state_changing_commands_refuse_without_context_before_any_request(command):
    # An API that is not there: a request sent would fail with "cannot reach the API".
    env = {
        "RAILPROOF_API_BASE_URL": f"http://127.0.0.1:{closed_port()}",
        "RAILPROOF_STAFF_TOKEN": STAFF_TOKEN,
    }
    args = [command, *STATE_CHANGING[command]]
    cases = [
        ([], ["--incident-id", "--operator-reason"]),
        (["--incident-id", "INC-1"], ["--operator-reason"]),
        (["--operator-reason", "why"], ["--incident-id"]),
        (["--incident-id", "  ", "--operator-reason", "why"], ["--incident-id"]),
    ]
    for extra, missing in cases:
        r = cli(*args, *extra, env=env)
        assert r.exit_code == 2, (extra, r.output)
        assert "cannot reach" not in r.stderr, extra
        named = r.stderr.split("missing", 1)[1].split("(", 1)[0]
        assert sorted(f for f in ("--incident-id", "--operator-reason") if f in named) == missing
    # With the context the command does send (and here finds no API).
    r = cli(*args, *CTX, env=env)
    assert r.exit_code == 2 and "cannot reach the API" in r.stderr


def test_missing_confirmation_is_named_with_the_context():
    r = cli("apply-rail-proof", "prf_x")
    assert r.exit_code == 2
    assert all(f in r.stderr for f in ("--confirm", "--incident-id", "--operator-reason"))
    r = cli("replay-webhook-event", "evt_x", *CTX)
    assert r.exit_code == 2 and "--confirm-no-live-payment" in r.stderr


def test_context_reaches_the_audit_log_of_a_production_request(world):
    r = served(world, "request-rail-production", "fake_gated", "--json", *CTX)
    assert r.exit_code == 0, r.output
    approval = json.loads(r.stdout)["approval_id"]
    rows = httpx.get(
        world["url"] + "/v1/admin/audit", params={"limit": 1000}, headers=auth(STAFF_TOKEN)
    ).json()
    mine = [a for a in rows if approval in (a["subject_id"], json.dumps(a.get("detail")))]
    assert mine and {(a["incident_id"], a["reason"]) for a in mine} == {("INC-77", "runbook step")}
    r = served(world, "approve-rail-change", approval, "--confirm")
    assert r.exit_code == 2 and "--incident-id" in r.stderr


# -- item 5: the runbook's flags ---------------------------------------------------------------


def test_stuck_claims_by_endpoint_and_limit(world):
    old = timeutil.process_now() - timedelta(minutes=30)
    with world["engine"].db.tx() as s:
        for i, endpoint in enumerate(
            ["POST /v1/proofs", "POST /v1/proofs", "POST /v1/payment-sessions"]
        ):
            s.add(
                IdempotencyClaim(
                    principal="svc:alice",
                    endpoint=endpoint,
                    key=f"k-{i}-{'x' * 60}",
                    request_hash=f"{i}" * 64,
                    status="in_progress",
                    created_at=old + timedelta(seconds=i),
                )
            )
    everything = served_json(world, "list-stuck-idempotency-claims")
    assert len(everything) == 3
    proofs = served_json(world, "list-stuck-idempotency-claims", "--endpoint", "POST /v1/proofs")
    assert [c["endpoint"] for c in proofs] == ["POST /v1/proofs"] * 2
    by_path = served_json(
        world, "list-stuck-idempotency-claims", "--endpoint", "/v1/payment-sessions"
    )
    assert [c["endpoint"] for c in by_path] == ["POST /v1/payment-sessions"]
    one = served_json(
        world, "list-stuck-idempotency-claims", "--endpoint", "POST /v1/proofs", "--limit", "1"
    )
    assert [c["key"] for c in one] == [proofs[0]["key"]]
    assert served_json(world, "list-stuck-idempotency-claims", "--endpoint", "GET /nope") == []
    r = served(
        world, "list-stuck-idempotency-claims", "--endpoint", "POST /v1/proofs", columns="60"
    )  # narrow, but not a terminal: whole keys
    assert r.exit_code == 0 and all(c["key"] in r.stdout for c in proofs)
    with world["engine"].db.tx() as s:  # listing never deletes
        assert len(s.scalars(select(IdempotencyClaim)).all()) == 3


def _event(world, data: dict) -> str:
    e = world["engine"]
    with e.db.tx() as s:
        return emit(s, e.now(), "proof.verified", "alice", "proof", "p-runbook", data)


def test_inspect_webhook_event_hides_the_payload_unless_asked(world):
    ev = _event(world, {"id": "p-runbook", "customer_note": "secret-ish-value"})
    hidden = served_json(world, "inspect-webhook-event", ev)
    assert hidden["payload_hidden"] is True and "data" not in hidden["event"]
    assert "secret-ish-value" not in json.dumps(hidden)
    r = served(world, "inspect-webhook-event", ev)
    assert r.exit_code == 0 and ev in r.stdout and "secret-ish-value" not in r.stdout
    assert "--include-payload" in r.stdout
    shown = served_json(world, "inspect-webhook-event", ev, "--include-payload")
    assert shown["event"]["data"]["customer_note"] == "secret-ish-value"
    assert "payload_hidden" not in shown
    r = served(world, "inspect-webhook-event", ev, "--include-payload")
    assert r.exit_code == 0 and "secret-ish-value" in r.stdout
    assert served(world, "inspect-webhook-event", "evt_missing").exit_code == 1


def test_replay_takes_confirm_no_live_payment_and_the_generic_confirm(world):
    ev = _event(world, {"id": "p-runbook"})
    # Both spellings pass the CLI and reach the API, which finds no dead letter to replay.
    for flag in ("--confirm-no-live-payment", "--confirm"):
        r = served(world, "replay-webhook-event", ev, flag, *CTX)
        assert r.exit_code == 1 and "not_dead_letter" in r.stderr, (flag, r.output)
    r = served(
        world,
        "replay-webhook-event",
        ev,
        "--confirm",
        "--reason",
        "old spelling",
        "--incident-id",
        "INC-1",
    )
    assert r.exit_code == 1 and "not_dead_letter" in r.stderr
    r = served(world, "replay-webhook-event", ev, *CTX)
    assert r.exit_code == 2 and "--confirm-no-live-payment" in r.stderr


def test_limit_on_every_list_command(world):
    _event(world, {"id": "p-runbook"})
    for command, args in LIST_COMMANDS.items():
        args = [world["ready"] if a == "<ready>" else a for a in args]
        rows = served_json(world, command, *args, "--limit", "1")
        assert isinstance(rows, list) and len(rows) <= 1, command
        assert served(world, command, *args, "--limit", "0").exit_code == 2, command
    assert len(served_json(world, "list-proof-contracts")) > 1
    assert len(served_json(world, "list-proof-contracts", "--limit", "1")) == 1


# -- item 6: --base-url and --staff-token-file --------------------------------------------------


def test_every_operator_command_takes_base_url_and_staff_token_file():
    for command in sorted(OPERATOR_COMMANDS):
        r = cli(command, "--help", env={"COLUMNS": "250"})
        assert r.exit_code == 0, command
        assert "--base-url" in r.stdout and "--staff-token-file" in r.stdout, command
    r = cli("--help", env={"COLUMNS": "250"})
    assert "--base-url" in r.stdout and "--staff-token-file" in r.stdout


def test_base_url_before_or_after_the_command_and_the_environment_defaults(world, tmp_path):
    closed = f"http://127.0.0.1:{closed_port()}"
    token = {"RAILPROOF_STAFF_TOKEN": STAFF_TOKEN}
    proofs = {world["ready"], world["blocked"]}

    r = cli("--base-url", world["url"], "list-rail-proofs", "--json", env=token)
    assert r.exit_code == 0, r.output
    assert {p["id"] for p in json.loads(r.stdout)} == proofs
    r = cli(
        "list-rail-proofs",
        "--json",
        "--base-url",
        world["url"],
        env={**token, "RAILPROOF_API_BASE_URL": closed},
    )  # the flag wins over the variable
    assert r.exit_code == 0, r.output
    r = cli("--base-url", closed, "list-rail-proofs", "--base-url", world["url"], env=token)
    assert r.exit_code == 0, r.output  # after the command name wins
    r = cli("--base-url", closed, "list-rail-proofs", env=token)
    assert r.exit_code == 2 and closed in r.stderr and "--base-url" in r.stderr

    port = world["url"].rsplit(":", 1)[1]
    r = cli("list-rail-proofs", "--json", env={**token, "PORT": port})  # make serve's PORT
    assert r.exit_code == 0, r.output
    r = cli(
        "list-rail-proofs",
        env={**token, "RAILPROOF_API_BASE_URL": world["url"], "PORT": str(closed_port())},
    )
    assert r.exit_code == 0, r.output  # RAILPROOF_API_BASE_URL before PORT

    tok = tmp_path / "staff.token"
    tok.write_text(STAFF_TOKEN + "\n")
    r = cli(
        "--staff-token-file",
        str(tok),
        "--base-url",
        world["url"],
        "inspect-rail-proof",
        world["ready"],
        "--json",
    )
    assert r.exit_code == 0 and json.loads(r.stdout)["id"] == world["ready"], r.output
    r = cli(
        "inspect-webhook-event",
        "evt_missing",
        "--staff-token-file",
        str(tok),
        "--base-url",
        world["url"],
    )
    assert r.exit_code == 1 and "webhook_event_not_found" in r.stderr
    wrong = tmp_path / "wrong.token"
    wrong.write_text("not-a-staff-token")
    r = cli(
        "list-rail-proofs", "--base-url", world["url"], "--staff-token-file", str(wrong), env=token
    )  # the file wins over RAILPROOF_STAFF_TOKEN
    assert r.exit_code == 2 and "401" in r.stderr
    empty = tmp_path / "empty.token"
    empty.write_text("\n")
    for bad in (empty, tmp_path / "absent.token"):
        r = cli("list-rail-proofs", "--base-url", world["url"], "--staff-token-file", str(bad))
        assert r.exit_code == 2 and "--staff-token-file" in r.stderr and str(bad) in r.stderr
    r = cli("list-rail-proofs", "--base-url", world["url"])
    assert r.exit_code == 2 and "RAILPROOF_STAFF_TOKEN" in r.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["reconcile", "--scope", "rail_proofs", *CTX, "--json"],
        ["list-reconciliation-runs", "--json"],
        ["resolve-finding", "999999", "--resolution", "refunded", *CTX],
    ],
    ids=lambda a: a[0],
)
def test_reconciliation_commands_take_the_connection_options_after_their_name(
    world, tmp_path, args
):
    # The runbook's scheduled reconcile, as a scheduler runs it: the options after the name
    # were "No such option" and the run never happened.
    tok = tmp_path / "staff.token"
    tok.write_text(STAFF_TOKEN + "\n")
    r = cli(*args, "--base-url", world["url"], "--staff-token-file", str(tok))
    assert "No such option" not in r.output, r.output
    if args[0] == "resolve-finding":  # reached the API: no such finding
        assert r.exit_code == 1 and "reconciliation_finding_not_found" in r.output, r.output
    else:
        assert r.exit_code == 0, r.output
        json.loads(r.stdout)


# -- item 7: whole ids off a terminal ----------------------------------------------------------


@pytest.mark.parametrize("columns", ["40", "80"])
def test_tables_print_whole_ids_when_stdout_is_not_a_terminal(world, columns):
    r = served(world, "list-rail-proofs", columns=columns)
    assert r.exit_code == 0, r.output
    assert world["ready"] in r.stdout and world["blocked"] in r.stdout
    assert "…" not in r.stdout
    one = served_json(world, "inspect-rail-proof", world["ready"])
    r = served(world, "inspect-rail-proof", world["ready"], columns=columns)
    assert one["fingerprint"] in r.stdout and one["session_id"] in r.stdout and "…" not in r.stdout
    r = served(world, "dry-run-rail-proof-apply", world["blocked"], columns=columns)
    assert world["blocked"] in r.stdout and "…" not in r.stdout


# -- item 10: dry-run exit codes ---------------------------------------------------------------


def test_dry_run_exit_codes(world):
    blocked, ready = world["blocked"], world["ready"]
    r = served(world, "dry-run-rail-proof-apply", blocked)
    assert r.exit_code == 0 and "would_apply=False" in r.stdout
    assert served(world, "dry-run-rail-proof-apply", blocked, "--json").exit_code == 0
    r = served(world, "dry-run-rail-proof-apply", blocked, "--fail-on-blockers", "--json")
    assert r.exit_code == 1 and json.loads(r.stdout)["would_apply"] is False
    assert served(world, "dry-run-rail-proof-apply", ready, "--fail-on-blockers").exit_code == 0
    # A refused call is 1 with or without the flag.
    r = served(world, "dry-run-rail-proof-apply", "prf_missing")
    assert r.exit_code == 1 and "proof_not_found" in r.stderr
    # Already applied: nothing stands in the way, so not a failure even with the flag.
    assert served(world, "apply-rail-proof", ready, "--confirm", *CTX).exit_code == 0
    r = served(world, "dry-run-rail-proof-apply", ready, "--fail-on-blockers")
    assert r.exit_code == 0 and "already applied" in r.stdout
