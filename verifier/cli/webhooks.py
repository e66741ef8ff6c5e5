"""Operator commands for the webhook dead-letter queue: clients of the staff API, in the style
of verifier.cli_ops (same Client, same output, same exit codes: 0 done; 1 refused or a 4xx;
2 usage or connection error)."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from verifier.cli.ops import Client, Incident, JsonOpt, _die, _out

_LIST_COLUMNS = ["delivery_id", "event_id", "type", "owner_id", "resource_id", "status",
                 "attempts", "last_status_code", "last_error", "next_attempt_at", "url"]
_DELIVERY_COLUMNS = ["delivery_id", "endpoint_id", "url", "status", "attempts",
                     "last_status_code", "last_error", "delivered_at", "next_attempt_at"]


def register(app: typer.Typer) -> None:
    @app.command("list-webhook-events")
    def list_events(status: Annotated[Optional[str], typer.Option(
                        "--status", help="pending | delivered | dead_letter | cancelled")] = None,
                    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 100,
                    as_json: JsonOpt = False, incident_id: Incident = None):
        """Webhook deliveries, newest first (e.g. --status dead_letter)."""
        s, d = Client(incident_id, None).request(
            "GET", "/v1/admin/webhook-events", params={"status": status, "limit": limit})
        _out(s, d, as_json, _LIST_COLUMNS, "webhook events")

    @app.command("inspect-webhook-event")
    def inspect(event_id: str, as_json: JsonOpt = False, incident_id: Incident = None):
        """One event (by event or delivery id): its body and every delivery of it."""
        s, d = Client(incident_id, None).request("GET", f"/v1/admin/webhook-events/{event_id}")
        if s >= 400 or as_json:
            _out(s, d, as_json)
            return
        ev = d["event"]
        rows = [{"field": k, "value": v} for k, v in ev.items() if k != "data"]
        rows += [{"field": "resource", "value": f"{d['resource_type']} {d['resource_id']} "
                                                f"#{d['sequence']}"},
                 {"field": "data", "value": json.dumps(ev["data"])}]
        _out(200, rows, False, ["field", "value"], f"webhook event {ev['id']}")
        _out(200, d["deliveries"], False, _DELIVERY_COLUMNS, "deliveries")

    @app.command("replay-webhook-event")
    def replay(event_id: str,
               reason: Annotated[str, typer.Option("--reason",
                                                   help="why (stored in the audit log)")],
               confirm: Annotated[bool, typer.Option("--confirm", help="yes, do it")] = False,
               as_json: JsonOpt = False, incident_id: Incident = None):
        """Send a dead letter again (an event id: all its dead letters), audited."""
        if not confirm:
            _die("replay-webhook-event sends a payment event again: add --confirm "
                 "(and --reason, --incident-id)")
        c = Client(incident_id, reason)
        _out(*c.request("POST", f"/v1/admin/webhook-events/{event_id}/replay",
                        {"confirm": True, "reason": reason, "incident_id": incident_id}),
             as_json, ["event_id", "replayed", "status", "next_attempt_at"], "replayed")
