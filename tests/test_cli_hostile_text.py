"""What the operator CLI prints of text others wrote, and what it does with an operator's own
odd input: stored text is shown as it is stored (never read as Rich markup, control
characters escaped, so a tenant or a webhook receiver cannot crash a listing or write escape
sequences to an operator's terminal), and bad input exits 2 with a message, never a
traceback."""

from __future__ import annotations

import json

import httpx
import pytest

from tests import test_cli_ops
from tests.conftest import STAFF_TOKEN, auth
from verifier.cli.show import plain

world = test_cli_ops.world  # the fixture: a served engine, one proof ready and one blocked
run = test_cli_ops.run

HOSTILE = "checked [/x] [conceal]hidden[/conceal] \x1b]0;pwned\x07\x1b[2J\x9b31m \u202eevil"


def _pause_with_reason(world, reason: str) -> None:
    r = httpx.post(
        world["url"] + "/v1/admin/rails/fake_live/pause",
        headers=auth(STAFF_TOKEN),
        json={"confirm": True, "incident_id": "INC-77", "operator_reason": reason},
    )
    assert r.status_code == 200, r.text


def test_plain_escapes_control_and_direction_characters():
    assert plain("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert plain("tab\tnew\nline\x7f\x9b") == "tab\\tnew\\nline\\x7f\\x9b"
    assert plain("\u202eevil\u2066") == "\\u202eevil\\u2066"
    assert plain("opérateur [b]ok[/b] 支付") == "opérateur [b]ok[/b] 支付"  # text stays text


def test_stored_text_is_printed_as_stored_never_as_markup_or_escapes(world):
    _pause_with_reason(world, HOSTILE)
    r = run(world, "list-audit-events", "--limit", "5")
    assert r.exit_code == 0, r.output  # `[/x]` was a MarkupError and a traceback
    out = r.stdout
    assert "\x1b" not in out and "\x9b" not in out and "\u202e" not in out
    # Every character is there, markup tags included, control characters as escapes.
    assert "checked [/x] [conceal]hidden[/conceal] \\x1b]0;pwned\\x07\\x1b[2J\\x9b31m" in out
    assert "\\u202eevil" in out
    # JSON shows the stored value exactly.
    r = run(world, "list-audit-events", "--limit", "5", "--json")
    assert any(e["reason"] == HOSTILE for e in json.loads(r.stdout))


def test_an_operator_may_write_incident_and_reason_in_any_language(world):
    r = run(
        world,
        "pause-rail",
        "fake_live",
        "--confirm",
        "--json",
        "--incident-id",
        "INC-été",
        "--operator-reason",
        "opérateur: déjà vu — 支付",
    )
    assert r.exit_code == 0, r.output
    # A read carries them in headers (UTF-8), recorded as written, not as mojibake.
    r = run(world, "list-rail-proofs", "--incident-id", "INC-ü", "--operator-reason", "prüfen")
    assert r.exit_code == 0, r.output
    events = httpx.get(world["url"] + "/v1/admin/audit", headers=auth(STAFF_TOKEN)).json()
    reasons = {(e["incident_id"], e["reason"]) for e in events}
    assert ("INC-été", "opérateur: déjà vu — 支付") in reasons
    assert ("INC-ü", "prüfen") in reasons


def test_headers_that_are_not_utf8_are_refused_naming_them(world):
    for header in ("X-Incident-Id", "X-Operator-Reason"):
        r = httpx.get(
            world["url"] + "/v1/admin/rails/readiness",
            headers=[
                (b"Authorization", f"Bearer {STAFF_TOKEN}".encode()),
                (header.encode(), b"\xff\x9b"),
            ],
        )
        assert r.status_code == 422, r.text
        assert r.json()["error"]["field"] == header


@pytest.mark.parametrize(
    ("args", "token", "needle"),
    [
        (["list-rail-proofs", "--operator-reason", "a\x1b[2J"], None, "--operator-reason"),
        (["list-rail-proofs", "--incident-id", "INC\n2"], None, "--incident-id"),
        (["list-rail-proofs"], "tök", "printable ASCII"),
        (["--base-url", "http://[::1", "list-rail-proofs"], None, "--base-url"),
    ],
)
def test_bad_operator_input_exits_2_with_a_message(world, args, token, needle):
    r = run(world, *args, token=token or STAFF_TOKEN)
    assert r.exit_code == 2, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
    assert needle in r.stderr and "tök" not in r.stderr  # a token is never repeated


def test_a_token_file_that_is_not_text_exits_2(world, tmp_path):
    f = tmp_path / "token"
    f.write_bytes(b"\xff\xfe")
    r = run(world, "--staff-token-file", str(f), "list-rail-proofs")
    assert r.exit_code == 2 and "--staff-token-file" in r.stderr
    assert r.exception is None or isinstance(r.exception, SystemExit)


@pytest.mark.parametrize("token", [f"{STAFF_TOKEN} ", f" {STAFF_TOKEN}", f"{STAFF_TOKEN}\t"])
def test_a_staff_token_with_space_around_it_is_refused_naming_its_variable(world, token):
    """A token pasted with a stray space is printable ASCII, yet HTTP refuses the header it
    makes, and httpx says so by quoting the header: the token was printed on stderr. It is
    refused before anything is sent, naming the variable, never the token."""
    r = run(world, "list-rail-proofs", token=token)
    assert r.exit_code == 2, r.output
    assert "RAILPROOF_STAFF_TOKEN" in r.stderr and "spaces" in r.stderr, r.stderr
    assert STAFF_TOKEN not in r.output, r.output


def test_a_header_httpx_refuses_is_named_never_quoted(world, monkeypatch):
    """Whatever header HTTP refuses, httpx's reason (which quotes the header's value) is never
    printed: the message names where the value came from."""

    def refuse(method, url, headers, **kw):
        raise httpx.LocalProtocolError(f"Illegal header value {headers[b'Authorization']!r}")

    monkeypatch.setattr(httpx, "request", refuse)
    # As if the token's own check had let it through.
    monkeypatch.setattr("verifier.cli.ops.bearer_token_ok", lambda token: True, raising=False)
    r = run(world, "list-rail-proofs", token=f"{STAFF_TOKEN} ")
    assert r.exit_code == 2, r.output
    assert "RAILPROOF_STAFF_TOKEN" in r.stderr and "nothing was sent" in r.stderr, r.stderr
    assert STAFF_TOKEN not in r.output and "Illegal" not in r.output, r.output
