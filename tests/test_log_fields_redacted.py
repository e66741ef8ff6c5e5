"""A log line never holds, in one field, what it redacted in another.

The JSON formatter redacted a line's message but added the request log's fields as they were,
and the request log named a path no route matched by the path itself: a token pasted into a
URL was masked in `msg` and kept in `route`. Such a path is now logged as route `unmatched`,
as metrics count it, and every text field of the request log is redacted as the message is."""

from __future__ import annotations

import io
import json
import logging

from fastapi.testclient import TestClient

from tests.conftest import make_settings
from verifier.core.engine import Engine
from verifier.core.logs import JsonFormatter, configure_logging
from verifier.http.api import create_app

TOKEN = "SekretBearerTok3n"


def test_a_path_no_route_matched_is_logged_as_unmatched(db_url):
    engine = Engine(make_settings(db_url))
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging(logging.DEBUG)
        buf = io.StringIO()
        root.handlers[0].setStream(buf)  # type: ignore[attr-defined]
        with TestClient(create_app(engine), raise_server_exceptions=False) as client:
            client.get(f"/v1/proofs/x/Bearer%20{TOKEN}")
            client.get(f"/v1/admin/signature={TOKEN}/x")
        logs = buf.getvalue()
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        engine.db.dispose()
    lines = [json.loads(line) for line in logs.splitlines() if '"railproof.request"' in line]
    assert [(line["route"], line["status"]) for line in lines] == [("unmatched", 404)] * 2
    assert TOKEN not in logs


def test_the_request_logs_fields_are_redacted_as_the_message_is():
    record = logging.LogRecord("railproof.request", logging.INFO, __file__, 1, "GET", (), None)
    record.http_request = {
        "route": "/v1/proofs/{proof_id}",
        "status": 200,
        "incident_id": f"INC-1 token={TOKEN}",
        "owner": f"Bearer {TOKEN}",
    }
    doc = json.loads(JsonFormatter().format(record))
    assert doc["incident_id"] == "INC-1 token=[redacted]"
    assert doc["owner"] == "Bearer [redacted]"
    assert (doc["route"], doc["status"]) == ("/v1/proofs/{proof_id}", 200)
