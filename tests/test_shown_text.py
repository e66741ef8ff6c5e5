"""Tenant- or staff-written text reaching what an operator reads, with characters that make
one value look like another: every character that does not print is shown as its escape
(verifier/core/shown.py) in the CLI and in the console, and an operator's own text is never
read as rich markup."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests import test_cli_ops
from tests.conftest import STAFF_TOKEN, auth
from tests.test_console import app, c, clock, login, paid_proof  # noqa: F401 - fixtures
from verifier.cli.show import plain
from verifier.services import audit

world = test_cli_ops.world  # a served engine (fixture)
run = test_cli_ops.run

REPO = Path(__file__).resolve().parent.parent

# Invisible in a terminal and in a browser: U+200B ZERO WIDTH SPACE, U+2060 WORD JOINER,
# U+FEFF ZERO WIDTH NO-BREAK SPACE, U+00AD SOFT HYPHEN, U+200D ZERO WIDTH JOINER.
INVISIBLE = ["\u200b", "\u2060", "\ufeff", "\u00ad", "\u200d"]


def test_plain_escapes_invisible_characters_too():
    # `INC-42\u200b` prints exactly as `INC-42`: one incident id looks like another.
    for ch in INVISIBLE:
        assert plain(f"INC-42{ch}") != f"INC-42{ch}", f"U+{ord(ch):04X} printed as is"


def test_an_incident_id_with_a_zero_width_space_is_not_shown_as_another(world):
    # Another staff member's action filed under an incident id that prints exactly like the
    # real incident's: the audit listing must show the difference (as it does for \u202e).
    # The API refuses such an id now; a row written before it did is still shown escaped.
    forged = "INC-42\u200b"
    r = httpx.post(
        world["url"] + "/v1/admin/rails/fake_live/pause",
        headers=auth(STAFF_TOKEN),
        json={"confirm": True, "incident_id": forged, "operator_reason": "routine"},
    )
    assert r.status_code == 422, r.text
    e = world["engine"]
    with e.db.tx() as s:
        op = audit.Operator("ops2", forged, "routine")
        audit.append(s, e.now(), op, "rail.paused", "rail", "fake_live", {})
    out = run(world, "list-audit-events", "--limit", "5").stdout
    assert "INC-42" in out
    assert "\u200b" not in out, "the zero-width space reached the operator's terminal"
    assert "INC-42\\u200b" in out


def test_console_shows_a_tenants_memo_without_direction_overrides_or_invisibles(c, chain):  # noqa: F811
    # A tenant's memo holding U+202E (RIGHT-TO-LEFT OVERRIDE) renders reversed in the
    # console's session facts; U+200B hides inside it. The CLI escapes both; the console
    # must not hand them raw to the browser either.
    memo = "\u202e0001-REDRO\u200b"  # displays as "ORDER-1000"
    p = paid_proof(c, chain, memo=memo)
    assert login(c).status_code == 303
    page = c.get(f"/console/proofs/{p['id']}")
    assert page.status_code == 200, page.text
    assert "REDRO" in page.text  # the memo is on the page
    assert "\u202e" not in page.text, "a raw RIGHT-TO-LEFT OVERRIDE reached the console"
    assert "\u200b" not in page.text, "a raw ZERO WIDTH SPACE reached the console"


def _on_a_terminal(
    args: list[str], env: dict[str, str], timeout: float = 60.0
) -> tuple[int, bytes]:
    """Run the CLI with stdout and stderr on a pseudo-terminal; (exit code, bytes written)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "verifier.cli.main", *args],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        env=env,
        cwd=REPO,
    )
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    proc.wait(timeout=10)
    os.close(master)
    return proc.returncode, out


def test_reconcile_scope_is_never_read_as_markup_on_a_terminal(world):
    # On a terminal the progress bar's description holds --scope: rich reads it as markup, so
    # a `[/x]` in it is a MarkupError traceback (bad input must exit 2 with a message, or be
    # refused by the API: exit 1), and `[link=...]` plants a hyperlink.
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "RAILPROOF_API_BASE_URL": world["url"],
        "RAILPROOF_STAFF_TOKEN": STAFF_TOKEN,
        "COLUMNS": "200",
        "TERM": "xterm-256color",
        "FORCE_COLOR": "1",
    }
    code, out = _on_a_terminal(
        [
            "reconcile",
            "--scope",
            "rail_proofs[/x]",
            "--incident-id",
            "INC-1",
            "--operator-reason",
            "check",
        ],
        env,
    )
    text = out.decode("utf-8", "replace")
    assert "Traceback" not in text and "MarkupError" not in text, text[-2000:]
    assert code in (1, 2), (code, text[-2000:])
