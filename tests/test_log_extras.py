"""Logs as an operator reads them: one JSON object per line, written by
verifier.core.logs.JsonFormatter, the formatter `railproof serve` installs."""

from __future__ import annotations

import io
import json
import logging

from fastapi.testclient import TestClient

from tests.test_console import login
from verifier.core.logs import JsonFormatter
from verifier.http.api import create_app
from verifier.http.console import console_router

GUESSER = "203.0.113.7"


def test_a_failed_console_login_is_logged_with_the_client_address(engine):
    """README, Operator console: "failures are logged with the address". The route passes
    the address as `extra={"client": ...}`, but the JSON formatter keeps only proof_id,
    rail_id, status, code and worker of a record's extras: the line `railproof serve` writes
    says "console login refused: not a staff token" and nothing about who (seen on a real
    server too), so an operator cannot tell whose guesses these are, nor block the address."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    console_log = logging.getLogger("railproof.console")
    console_log.addHandler(handler)
    level = console_log.level
    console_log.setLevel(logging.INFO)
    try:
        app = create_app(engine, console=console_router(engine))
        with TestClient(
            app, raise_server_exceptions=False, follow_redirects=False, client=(GUESSER, 5000)
        ) as c:
            assert login(c, "not-a-staff-token").status_code == 401
    finally:
        console_log.removeHandler(handler)
        console_log.setLevel(level)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    refused = [d for d in lines if "console login refused" in d["msg"]]
    assert refused, lines
    assert any(GUESSER in json.dumps(d) for d in refused), (
        f"the failed login's log line does not name the client address: {refused}"
    )


def test_the_ids_a_line_is_logged_with_are_fields_of_it():
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("railproof.test_extras")
    log.addHandler(handler)
    try:
        log.warning(
            "webhook delivery failed: %s",
            "timeout",
            extra={"delivery_id": "whd_1", "event_id": "evt_1", "session_id": "ses_1"},
        )
    finally:
        log.removeHandler(handler)
    line = json.loads(out.getvalue())
    assert (line["delivery_id"], line["event_id"], line["session_id"]) == (
        "whd_1",
        "evt_1",
        "ses_1",
    )
