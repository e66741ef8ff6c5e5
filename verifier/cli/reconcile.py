"""Reconciliation commands, with the runbook's names: a client of the staff API
(RAILPROOF_API_BASE_URL, RAILPROOF_STAFF_TOKEN), like the other operator commands.

  railproof reconcile --scope SCOPE [--rail-id R] [--since ISO --until ISO] [--limit N]
                      [--apply --confirm] --incident-id … --operator-reason …
  railproof list-reconciliation-runs [--scope] [--limit]
  railproof inspect-reconciliation-run RUN_ID
  railproof resolve-finding FINDING_ID --resolution R --incident-id … --operator-reason …

A run is a dry run unless --apply (with --confirm); incident id and reason are required for
both. While the run is under way a progress bar is drawn when stdout is a terminal.
Exit codes: 0 the run is complete; 1 refused, or the run is incomplete or failed (what
could not be checked is in its detail); 2 usage or connection error.

resolve-finding records a repair made outside railproof (refunded, credited_by_hand,
attached_by_hand, not_ours, accepted): later runs report the same finding `resolved`, not
drift. Exit codes: 0 resolved; 1 refused (unknown finding, already resolved, applied by its
run); 2 a missing or malformed option, or a connection error.
"""

import json
from typing import Annotated, Any

import typer

from verifier.cli.ops import (
    Client,
    Incident,
    JsonOpt,
    Reason,
    _die,
    _out,
    api_path,
    operator_command,
    require_operator_context,
)
from verifier.cli.progress import progress
from verifier.cli.show import say

RUN_COLUMNS = [
    "id",
    "scope",
    "rail_id",
    "dry_run",
    "status",
    "started_at",
    "staff",
    "incident_id",
    "summary",
]
FINDING_COLUMNS = [
    "id",
    "kind",
    "severity",
    "subjects",
    "detail",
    "proposed_repair",
    "repair_status",
    "repair_result",
]


def _print_run(run: dict[str, Any]) -> None:
    say(
        f"reconciliation run {run['id']}: {run['status']} "
        f"({'dry run' if run['dry_run'] else 'apply'}, scope {run['scope']})"
    )
    if run.get("detail"):
        say(run["detail"])
    typer.echo("summary: " + json.dumps(run.get("summary", {}), sort_keys=True))
    findings = run.get("findings", [])
    _out(200, findings, False, FINDING_COLUMNS, "findings")
    for f in findings:
        r = f.get("repair_result") or {}
        if f.get("repair_status") == "resolved":
            say(
                f"finding {f['id']} resolved: {r.get('resolution')} by {r.get('staff')} at "
                f"{r.get('resolved_at')} (incident {r.get('incident_id')}: "
                f"{r.get('operator_reason')})"
            )


RESOLUTIONS = ("refunded", "credited_by_hand", "attached_by_hand", "not_ours", "accepted")


def register(app: typer.Typer) -> None:
    @operator_command(app, "reconcile")
    def reconcile(
        scope: Annotated[str, typer.Option("--scope", help="rail_proofs | chain_inflows")],
        rail_id: Annotated[str | None, typer.Option("--rail-id")] = None,
        since: Annotated[str | None, typer.Option("--since", help="ISO-8601")] = None,
        until: Annotated[str | None, typer.Option("--until", help="ISO-8601")] = None,
        limit: Annotated[int, typer.Option("--limit", min=1)] = 1000,
        apply: Annotated[bool, typer.Option("--apply", help="repair (default: dry run)")] = False,
        confirm: Annotated[bool, typer.Option("--confirm", help="yes, apply")] = False,
        as_json: JsonOpt = False,
        incident_id: Incident = None,
        operator_reason: Reason = None,
    ):
        """A reconciliation run, persisted with its findings (dry run unless --apply)."""
        if not (incident_id or "").strip() or not (operator_reason or "").strip():
            _die(
                "--incident-id and --operator-reason are required for every reconciliation "
                "run (dry runs too)"
            )
        if apply and not confirm:
            _die("--apply changes state: add --confirm")
        c = Client(incident_id, operator_reason)
        body = {
            "scope": scope,
            "rail_id": rail_id,
            "since": since,
            "until": until,
            "limit": limit,
            "apply": apply,
            "confirm": confirm,
            **c.context,
        }
        # The run is one request whose length is unknown: an indeterminate bar on a terminal.
        with progress(f"reconciliation ({scope})", None):
            status, data = c.request(
                "POST",
                "/v1/admin/reconciliation-runs",
                {k: v for k, v in body.items() if v is not None},
            )
        if status >= 400 or as_json:
            _out(status, data, as_json)
        else:
            _print_run(data)
        raise typer.Exit(0 if data.get("status") == "complete" else 1)

    @operator_command(app, "list-reconciliation-runs")
    def list_runs(
        scope: Annotated[str | None, typer.Option("--scope")] = None,
        limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 50,
        as_json: JsonOpt = False,
        incident_id: Incident = None,
        operator_reason: Reason = None,
    ):
        """Reconciliation runs, newest first."""
        s, d = Client(incident_id, operator_reason).request(
            "GET", "/v1/admin/reconciliation-runs", params={"scope": scope, "limit": limit}
        )
        _out(s, d, as_json, RUN_COLUMNS, "reconciliation runs")

    @operator_command(app, "inspect-reconciliation-run")
    def inspect(
        run_id: str,
        as_json: JsonOpt = False,
        incident_id: Incident = None,
        operator_reason: Reason = None,
    ):
        """A reconciliation run with its findings and their repairs."""
        s, d = Client(incident_id, operator_reason).request(
            "GET", api_path("/v1/admin/reconciliation-runs/{}", run_id)
        )
        if s >= 400 or as_json:
            _out(s, d, as_json)
        else:
            _print_run(d)

    @operator_command(app, "resolve-finding")
    def resolve(
        finding_id: str,
        resolution: Annotated[
            str | None, typer.Option("--resolution", help=" | ".join(RESOLUTIONS))
        ] = None,
        as_json: JsonOpt = False,
        incident_id: Incident = None,
        operator_reason: Reason = None,
    ):
        """Record that a finding was repaired outside railproof; later runs report the same
        finding resolved, not drift (needs --incident-id and --operator-reason)."""
        require_operator_context("resolve-finding", incident_id, operator_reason)
        if resolution not in RESOLUTIONS:
            _die(f"--resolution: one of {', '.join(RESOLUTIONS)}")
        # ASCII digits only: "²".isdigit() is true, and int() refuses it.
        if not (finding_id.isascii() and finding_id.isdigit()) or not 1 <= int(finding_id) < 2**31:
            _die(f"FINDING_ID: a finding's id (a positive integer), not {finding_id!r}")
        c = Client(incident_id, operator_reason)
        s, d = c.request(
            "POST",
            api_path("/v1/admin/reconciliation-findings/{}/resolution", int(finding_id)),
            {"resolution": resolution, **c.context},
        )
        if s >= 400 or as_json:
            _out(s, d, as_json)
            return
        r = d.get("repair_result") or {}
        say(
            f"finding {d['id']} ({d['kind']}, {d.get('subject_key')}) resolved: "
            f"{r.get('resolution')} under incident {r.get('incident_id')}"
        )
        if d.get("also_resolved"):
            typer.echo(f"{d['also_resolved']} finding(s) of other current runs resolved with it")
