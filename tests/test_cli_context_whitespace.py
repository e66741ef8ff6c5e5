"""An --incident-id or --operator-reason with a leading or trailing space (pasted from a
ticket, read with "$(cat reason.txt)") is sent trimmed: it was put into its header as given,
which HTTP refuses, and the command said "cannot reach the API" while the API was up."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from typer.testing import CliRunner

from verifier.cli.main import app as cli_app


class _Api(BaseHTTPRequestHandler):
    seen: list[dict[str, str]] = []

    def _answer(self) -> None:
        n = int(self.headers.get("content-length") or 0)
        if n:
            self.rfile.read(n)
        _Api.seen.append(dict(self.headers))
        body = json.dumps({"paused": True, "rail_id": "solana_usdc"}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def api():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


CASES = {
    "reason_trailing_space": ("--operator-reason", "card fraud, see ticket "),
    "incident_leading_space": ("--incident-id", " INC-42"),
}


@pytest.mark.parametrize("option, value", list(CASES.values()), ids=list(CASES))
def test_surrounding_space_in_operator_context_is_not_reported_as_an_unreachable_api(
    api, option, value
):
    args = {"--incident-id": "INC-42", "--operator-reason": "card fraud"}
    args[option] = value
    _Api.seen.clear()
    r = CliRunner().invoke(
        cli_app,
        ["pause-rail", "solana_usdc", "--confirm", *[x for kv in args.items() for x in kv]],
        env={"RAILPROOF_API_BASE_URL": api, "RAILPROOF_STAFF_TOKEN": "stf", "COLUMNS": "200"},
    )
    out = r.output
    assert "cannot reach the API" not in out, out
    assert r.exit_code == 0, out
    (sent,) = _Api.seen
    header = {"--incident-id": "X-Incident-Id", "--operator-reason": "X-Operator-Reason"}[option]
    assert sent[header] == value.strip()


def test_a_blank_incident_id_is_missing_for_reconcile_too(api):
    _Api.seen.clear()
    r = CliRunner().invoke(
        cli_app,
        ["reconcile", "--scope", "rail_proofs", "--incident-id", "   ", "--operator-reason", "x"],
        env={"RAILPROOF_API_BASE_URL": api, "RAILPROOF_STAFF_TOKEN": "stf", "COLUMNS": "200"},
    )
    assert r.exit_code == 2 and "--incident-id" in r.output and not _Api.seen, r.output
