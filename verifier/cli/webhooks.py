"""Operator commands for the webhook dead-letter queue: clients of the staff API, in the style
of verifier.cli.ops (same Client, global options, output and exit codes: 0 done; 1 refused or
a 4xx; 2 usage or connection error)."""

from __future__ import annotations

import functools
import json
from typing import Annotated

import typer

from verifier.cli.ops import (
    Client,
    Incident,
    JsonOpt,
    Reason,
    _out,
    api_path,
    operator_command,
    require_operator_context,
)

_LIST_COLUMNS = [
    "delivery_id",
    "event_id",
    "type",
    "owner_id",
    "resource_id",
    "status",
    "attempts",
    "last_status_code",
    "last_error",
    "next_attempt_at",
    "url",
]
_DELIVERY_COLUMNS = [
    "delivery_id",
    "endpoint_id",
    "url",
    "status",
    "attempts",
    "last_status_code",
    "last_error",
    "delivered_at",
    "next_attempt_at",
]
_HIDDEN = "(hidden: add --include-payload)"


def register(app: typer.Typer) -> None:
    command = functools.partial(operator_command, app)

    @command("list-webhook-events")
    def list_events(
        status: Annotated[
            str | None,
            typer.Option("--status", help="pending | delivered | dead_letter | cancelled"),
        ] = None,
        limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 100,
        as_json: JsonOpt = False,
        incident_id: Incident = None,
        operator_reason: Reason = None,
    ):
        """Webhook deliveries, newest first (e.g. --status dead_letter)."""
        s, d = Client(incident_id, operator_reason).request(
            "GET", "/v1/admin/webhook-events", params={"status": status, "limit": limit}
        )
        _out(s, d, as_json, _LIST_COLUMNS, "webhook events")

    @command("inspect-webhook-event")
    def inspect(
        event_id: str,
        include_payload: Annotated[
            bool,
            typer.Option(
                "--include-payload",
                help="show the event's payload (hidden by default: it may hold customer data)",
            ),
        ] = False,
        as_json: JsonOpt = False,
        incident_id: Incident = None,
        operator_reason: Reason = None,
    ):
        """One event (by event or delivery id) and every delivery of it; its payload only
        with --include-payload."""
        s, d = Client(incident_id, operator_reason).request(
            "GET", api_path("/v1/admin/webhook-events/{}", event_id)
        )
        if s >= 400:
            _out(s, d, as_json)
        ev = d["event"]
        if not include_payload:
            ev.pop("data", None)
            d["payload_hidden"] = True
        if as_json:
            _out(s, d, True)
            return
        rows = [{"field": k, "value": v} for k, v in ev.items() if k != "data"]
        rows += [
            {
                "field": "resource",
                "value": f"{d['resource_type']} {d['resource_id']} #{d['sequence']}",
            },
            {"field": "data", "value": json.dumps(ev["data"]) if include_payload else _HIDDEN},
        ]
        _out(200, rows, False, ["field", "value"], f"webhook event {ev['id']}")
        _out(200, d["deliveries"], False, _DELIVERY_COLUMNS, "deliveries")

    @command("replay-webhook-event")
    def replay(
        event_id: str,
        reason: Annotated[
            str | None,
            typer.Option("--operator-reason", "--reason", help="why (stored in the audit log)"),
        ] = None,
        confirm: Annotated[
            bool,
            typer.Option(
                "--confirm-no-live-payment",
                "--confirm",
                help="yes, send it again (no live payment moves)",
            ),
        ] = False,
        as_json: JsonOpt = False,
        incident_id: Incident = None,
    ):
        """Send a dead letter again (an event id: all its dead letters), audited. Needs
        --confirm-no-live-payment (or --confirm), --incident-id and --operator-reason."""
        require_operator_context(
            "replay-webhook-event", incident_id, reason, confirm, "--confirm-no-live-payment"
        )
        c = Client(incident_id, reason)
        _out(
            *c.request(
                "POST",
                api_path("/v1/admin/webhook-events/{}/replay", event_id),
                {"confirm": True, **c.context},
            ),
            as_json,
            ["event_id", "replayed", "status", "next_attempt_at"],
            "replayed",
        )
