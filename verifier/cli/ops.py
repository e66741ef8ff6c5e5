"""Operator commands: a client of the staff API (RAILPROOF_API_BASE_URL, RAILPROOF_STAFF_TOKEN).

Every command prints a readable table, or JSON with --json; --incident-id and
--operator-reason travel with every call and are stored with it (in the audit log).
Exit codes: 0 done; 1 refused (a blocker or a 4xx); 2 usage or connection error.
"""


import json
import os
from typing import Annotated, Any, Optional

import httpx
import typer
from rich.console import Console
from rich.table import Table

JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]
Incident = Annotated[Optional[str], typer.Option("--incident-id", help="incident this belongs to")]
Reason = Annotated[Optional[str], typer.Option("--operator-reason", help="why you do this")]


class Client:
    def __init__(self, incident_id: str | None, reason: str | None):
        self.base = os.environ.get("RAILPROOF_API_BASE_URL", "http://127.0.0.1:8000").rstrip("/")
        token = os.environ.get("RAILPROOF_STAFF_TOKEN")
        if not token:
            _die("RAILPROOF_STAFF_TOKEN is not set: export the staff token the API was "
                 "started with (`make serve` prints one)")
        self.headers = {"Authorization": f"Bearer {token}"}
        if incident_id:
            self.headers["X-Incident-Id"] = incident_id
        if reason:
            self.headers["X-Operator-Reason"] = reason
        self.context = {"incident_id": incident_id, "operator_reason": reason}

    def request(self, method: str, path: str, body: dict[str, Any] | None = None,
                params: dict[str, Any] | None = None) -> tuple[int, Any]:
        try:
            r = httpx.request(method, self.base + path, headers=self.headers, json=body,
                              params={k: v for k, v in (params or {}).items() if v is not None},
                              timeout=30.0)
        except httpx.HTTPError as e:
            _die(f"cannot reach the API at {self.base} ({type(e).__name__}); is "
                 "`railproof serve` running? set RAILPROOF_API_BASE_URL")
        try:
            data = r.json()
        except ValueError:
            _die(f"the API answered {r.status_code} without JSON")
        if r.status_code in (401, 403):
            _die(f"{r.status_code}: {data.get('error', {}).get('message', data)}; check "
                 "RAILPROOF_STAFF_TOKEN", 1 if r.status_code == 403 else 2)
        return r.status_code, data


def _die(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _out(status: int, data: Any, as_json: bool, columns: list[str] | None = None,
         title: str = "") -> None:
    if status >= 400:
        err = data.get("error", {}) if isinstance(data, dict) else {}
        if as_json:
            typer.echo(json.dumps(data))
        else:
            typer.echo(f"refused ({status}) {err.get('code')}: {err.get('message')}", err=True)
            if "report" in err:
                _report(err["report"])
        raise typer.Exit(1)
    if as_json:
        typer.echo(json.dumps(data))
        return
    rows = data if isinstance(data, list) else [data]
    if not rows:
        typer.echo("(none)")
        return
    cols = columns or list(rows[0].keys())
    t = Table(title=title or None)
    for c in cols:
        t.add_column(c)
    for row in rows:
        t.add_row(*[_cell(row.get(c)) for c in cols])
    Console().print(t)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return str(v)


def _report(rep: dict[str, Any]) -> None:
    t = Table(title=f"dry-run apply {rep['proof_id']}: would_apply={rep['would_apply']}")
    for c in ("check", "passed", "detail"):
        t.add_column(c)
    for c in rep["checks"]:
        t.add_row(c["name"], "yes" if c["passed"] else "NO", c["detail"])
    Console().print(t)


def register(app: typer.Typer) -> None:
    @app.command("rail-production-readiness")
    def readiness(as_json: JsonOpt = False, incident_id: Incident = None, operator_reason: Reason = None):
        """Per rail: stage, production state, pause, verifier, allowlists, blockers."""
        s, d = Client(incident_id, operator_reason).request("GET", "/v1/admin/rails/readiness")
        _out(s, d, as_json, ["rail_id", "stage", "production_enabled", "paused",
                             "live_verifier_configured", "apply_allowlisted",
                             "receipt_creation_allowed", "blockers"], "rail readiness")

    @app.command("list-proof-contracts")
    def contracts(rail_id: Annotated[Optional[str], typer.Option("--rail-id")] = None,
                  as_json: JsonOpt = False, incident_id: Incident = None, operator_reason: Reason = None):
        """What each rail accepts and what a verified proof may lead to."""
        s, d = Client(incident_id, operator_reason).request(
            "GET", "/v1/admin/proof-contracts", params={"rail_id": rail_id})
        _out(s, d, as_json, ["rail_id", "stage", "accepted_proof_types", "finality_requirement",
                             "receipt_mapping", "activation"], "proof contracts")

    @app.command("list-rail-proofs")
    def list_proofs(rail_id: Annotated[Optional[str], typer.Option("--rail-id")] = None,
                    status: Annotated[Optional[str], typer.Option("--status")] = None,
                    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 50,
                    as_json: JsonOpt = False, incident_id: Incident = None, operator_reason: Reason = None):
        """Recent proofs, newest first."""
        s, d = Client(incident_id, operator_reason).request(
            "GET", "/v1/admin/proofs", params={"rail_id": rail_id, "status": status, "limit": limit})
        _out(s, d, as_json, ["id", "rail_id", "status", "failure_code", "owner_id",
                             "session_id", "receipt_id", "created_at"], "proofs")

    @app.command("inspect-rail-proof")
    def inspect(proof_id: str, as_json: JsonOpt = False, incident_id: Incident = None,
                operator_reason: Reason = None):
        """One proof with its status, settlement and receipt."""
        s, d = Client(incident_id, operator_reason).request("GET", f"/v1/admin/proofs/{proof_id}")
        if s < 400 and not as_json:
            _out(s, [{"field": k, "value": v} for k, v in d.items()], False, ["field", "value"],
                 f"proof {proof_id}")
            return
        _out(s, d, as_json)

    @app.command("list-rail-proof-verification-attempts")
    def attempts(proof_id: str, as_json: JsonOpt = False, incident_id: Incident = None,
                 operator_reason: Reason = None):
        """Every verification attempt of a proof, with the redacted evidence."""
        s, d = Client(incident_id, operator_reason).request(
            "GET", f"/v1/admin/proofs/{proof_id}/attempts")
        _out(s, d, as_json, ["id", "status", "failure_code", "rpc_calls", "latency_ms",
                             "source", "created_at", "observed"], "verification attempts")

    @app.command("list-rail-proof-settlement-evidence")
    def evidence(proof_id: str, as_json: JsonOpt = False, incident_id: Incident = None,
                 operator_reason: Reason = None):
        """Settlement evidence rows (finality over time) of a proof."""
        s, d = Client(incident_id, operator_reason).request(
            "GET", f"/v1/admin/proofs/{proof_id}/settlement-evidence")
        _out(s, d, as_json, ["id", "attempt_id", "finality", "is_final", "reorged", "slot",
                             "block_number", "confirmations", "observed_at"], "settlement evidence")

    @app.command("dry-run-rail-proof-apply")
    def dry_run(proof_id: str, as_json: JsonOpt = False, incident_id: Incident = None,
                operator_reason: Reason = None,
                receipt_path: Annotated[bool, typer.Option(
                    "--receipt-path", help="evaluate the staff receipt path (gated rails)")] = False):
        """What would apply do? Every check, nothing changes. Exit 1 when a blocker stands."""
        c = Client(incident_id, operator_reason)
        body = {**c.context, "path": "receipt" if receipt_path else "apply"}
        s, d = c.request("POST", f"/v1/admin/proofs/{proof_id}/dry-run-apply", body)
        if s >= 400:
            _out(s, d, as_json)
        if as_json:
            typer.echo(json.dumps(d))
        else:
            _report(d)
        raise typer.Exit(0 if d.get("would_apply") or d.get("already_applied") else 1)

    @app.command("list-stuck-idempotency-claims")
    def stuck(min_age_seconds: Annotated[Optional[int], typer.Option("--min-age-seconds", min=0)] = None,
              as_json: JsonOpt = False, incident_id: Incident = None, operator_reason: Reason = None):
        """Idempotency claims still in progress past the threshold (never deleted)."""
        s, d = Client(incident_id, operator_reason).request(
            "GET", "/v1/admin/idempotency-claims/stuck", params={"min_age_seconds": min_age_seconds})
        _out(s, d, as_json, ["principal", "endpoint", "key", "status", "created_at"],
             "stuck idempotency claims")

    def _confirmed(confirm: bool, what: str) -> None:
        if not confirm:
            _die(f"{what} changes production state: add --confirm (and --incident-id, "
                 "--operator-reason)")

    def _confirmed_post(what: str, path: str, confirm: bool, as_json: bool,
                        incident_id: str | None, operator_reason: str | None) -> None:
        """A state-changing staff call: refused here without --confirm, sent with the
        operator context otherwise."""
        _confirmed(confirm, what)
        c = Client(incident_id, operator_reason)
        _out(*c.request("POST", path, {"confirm": True, **c.context}), as_json)

    Confirm = Annotated[bool, typer.Option("--confirm", help="yes, do it")]

    @app.command("pause-rail")
    def pause(rail_id: str, confirm: Confirm = False, as_json: JsonOpt = False,
              incident_id: Incident = None, operator_reason: Reason = None):
        """Kill switch: refuse new sessions and proofs on a rail, block apply."""
        _confirmed_post("pause-rail", f"/v1/admin/rails/{rail_id}/pause", confirm, as_json, incident_id,
                        operator_reason)

    @app.command("resume-rail")
    def resume(rail_id: str, confirm: Confirm = False, as_json: JsonOpt = False,
               incident_id: Incident = None, operator_reason: Reason = None):
        """Lift the kill switch of a rail."""
        _confirmed_post("resume-rail", f"/v1/admin/rails/{rail_id}/resume", confirm, as_json, incident_id,
                        operator_reason)

    @app.command("apply-rail-proof")
    def apply(proof_id: str, confirm: Confirm = False, as_json: JsonOpt = False,
              incident_id: Incident = None, operator_reason: Reason = None):
        """Apply a verified, final proof: receipt + active entitlement, or nothing."""
        _confirmed_post("apply-rail-proof", f"/v1/admin/proofs/{proof_id}/apply", confirm, as_json, incident_id,
                        operator_reason)

    @app.command("create-rail-proof-receipt")
    def receipt(proof_id: str, confirm: Confirm = False, as_json: JsonOpt = False,
                incident_id: Incident = None, operator_reason: Reason = None):
        """Staff receipt creation for a gated rail (RAILPROOF_RECEIPT_CREATION_RAILS)."""
        _confirmed_post("create-rail-proof-receipt", f"/v1/admin/proofs/{proof_id}/receipt", confirm, as_json, incident_id,
                        operator_reason)

    @app.command("revoke-entitlement")
    def revoke(entitlement_id: str, confirm: Confirm = False, as_json: JsonOpt = False,
               incident_id: Incident = None, operator_reason: Reason = None):
        """Revoke an active entitlement (needs --incident-id and --operator-reason)."""
        _confirmed_post("revoke-entitlement", f"/v1/admin/entitlements/{entitlement_id}/revoke", confirm, as_json, incident_id,
                        operator_reason)

    @app.command("request-rail-production")
    def request_production(rail_id: str, enable: Annotated[bool, typer.Option("--enable/--disable")] = True,
                           as_json: JsonOpt = False, incident_id: Incident = None,
                           operator_reason: Reason = None):
        """Ask for a production state change (a second staff member approves)."""
        c = Client(incident_id, operator_reason)
        _out(*c.request("POST", f"/v1/admin/rails/{rail_id}/production/request",
                        {"enable": enable, **c.context}), as_json)

    @app.command("approve-rail-change")
    def approve(approval_id: str, confirm: Confirm = False, as_json: JsonOpt = False,
                incident_id: Incident = None, operator_reason: Reason = None):
        """Approve another staff member's request (two-person rule)."""
        _confirmed_post("approve-rail-change", f"/v1/admin/approvals/{approval_id}/approve", confirm, as_json, incident_id,
                        operator_reason)

    @app.command("assurance")
    def assurance(as_json: JsonOpt = False, incident_id: Incident = None, operator_reason: Reason = None):
        """Invariant findings with severity and repair. Exit 1 when any finding is critical."""
        s, d = Client(incident_id, operator_reason).request("GET", "/v1/admin/assurance")
        if s >= 400:
            _out(s, d, as_json)
        if as_json:
            typer.echo(json.dumps(d))
        else:
            sm = d["summary"]
            typer.echo(f"assurance: {sm['status']} (score {sm['score']}, {sm['alert_count']} findings)")
            if d["issues"]:
                _out(200, d["issues"], False, ["severity", "category", "subject", "repair"])
        raise typer.Exit(1 if d["summary"]["status"] == "critical" else 0)
