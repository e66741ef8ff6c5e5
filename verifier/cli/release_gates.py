"""Release-gate commands: a client of the staff API, like the other operator commands.

  railproof list-release-gates --rail-id R
  railproof record-release-gate-evidence --rail-id R --gate GATE [--evidence-file F]
      [--note TEXT] [--confirm] --incident-id … --operator-reason …

The kill-switch drill runs on the server (--confirm: it pauses the rail for its duration);
`e2e_rehearsal` takes the evidence file `railproof rehearse` wrote, `alert_rule_integrity` the
rules file deployed to Prometheus — each sent whole with its sha256, which the record keeps;
the reviews are attestations by the staff member whose token is used.
Exit codes: 0 recorded and passed (or listed); 1 refused, or the evidence failed; 2 usage.
"""

import hashlib
from pathlib import Path
from typing import Annotated

import typer

from rails.files import read_regular
from verifier.cli.ops import (
    Client,
    Confirm,
    Incident,
    JsonOpt,
    Reason,
    _die,
    _out,
    api_path,
    operator_command,
    require_operator_context,
)
from verifier.cli.show import say

GATE_COLUMNS = ["gate", "kind", "status", "recorded_by", "recorded_at", "incident_id", "sha256"]
FILE_GATES = ("e2e_rehearsal", "alert_rule_integrity")


def register(app: typer.Typer) -> None:
    @operator_command(app, "list-release-gates")
    def list_gates(
        rail_id: Annotated[str, typer.Option("--rail-id", help="the rail to show")],
        as_json: JsonOpt = False,
    ):
        """Each release gate of a rail: passed, failed, missing or expired, and its evidence."""
        status, data = Client(None, None).request(
            "GET", api_path("/v1/admin/rails/{}/release-gates", rail_id)
        )
        if status >= 400 or as_json:
            _out(status, data, as_json)
            return
        rows = []
        for g in data["gates"]:
            ev = g.get("evidence") or {}
            rows.append(
                {
                    "gate": g["gate"],
                    "kind": g["kind"],
                    "status": g["status"],
                    "recorded_by": ev.get("recorded_by"),
                    "recorded_at": ev.get("recorded_at"),
                    "incident_id": ev.get("incident_id"),
                    "sha256": ev.get("evidence_sha256"),
                }
            )
        title = f"release gates of {rail_id}: {'complete' if data['complete'] else 'INCOMPLETE'}"
        _out(200, rows, False, GATE_COLUMNS, title)

    @operator_command(app, "record-release-gate-evidence")
    def record(
        rail_id: Annotated[str, typer.Option("--rail-id", help="the rail the evidence is for")],
        gate: Annotated[
            str,
            typer.Option(
                "--gate",
                help="kill_switch_drill | e2e_rehearsal | alert_rule_integrity | "
                "rate_limit_review | provider_alerting_review",
            ),
        ],
        evidence_file: Annotated[
            Path | None,
            typer.Option(
                "--evidence-file",
                help="rehearsal evidence JSON (e2e_rehearsal) or deployed alert rules "
                "(alert_rule_integrity)",
            ),
        ] = None,
        note: Annotated[
            str | None, typer.Option("--note", help="what was reviewed (attestations)")
        ] = None,
        confirm: Confirm = False,
        as_json: JsonOpt = False,
        incident_id: Incident = None,
        operator_reason: Reason = None,
    ):
        """Record release-gate evidence for a rail (the kill-switch drill runs it)."""
        require_operator_context(
            "record-release-gate-evidence",
            incident_id,
            operator_reason,
            confirm if gate == "kill_switch_drill" else None,
        )
        body: dict[str, object] = {"confirm": confirm}
        if gate in FILE_GATES:
            if evidence_file is None:
                _die(f"--evidence-file is required for {gate}")
            try:
                raw = read_regular(evidence_file)
                text = raw.decode()
            except OSError as e:
                _die(f"--evidence-file: cannot read {evidence_file} ({e.strerror or e})")
            except UnicodeDecodeError as e:
                _die(f"--evidence-file: cannot read {evidence_file} ({e})")
            body.update(evidence=text, evidence_sha256=hashlib.sha256(raw).hexdigest())
        elif evidence_file is not None:
            # Not sent with any other gate: recording the gate without it would leave the
            # operator believing the file went on the record.
            _die(f"--evidence-file is for {' and '.join(FILE_GATES)} only, not {gate}")
        if note:
            body["note"] = note
        c = Client(incident_id, operator_reason)
        status, data = c.request(
            "POST",
            api_path("/v1/admin/rails/{}/release-gates/{}/evidence", rail_id, gate),
            {**body, **c.context},
        )
        _out(status, data, as_json)
        if status < 400 and data.get("outcome") != "passed":
            say(f"{gate}: evidence recorded as FAILED: {data.get('detail')}", err=True)
            raise typer.Exit(1)
