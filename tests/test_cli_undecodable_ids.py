"""Operator commands given an id or option that is not valid text (a byte that is not UTF-8
on the command line arrives as a lone surrogate, e.g. `railproof inspect-webhook-event
$'\\xff'`) exit 2 with a message naming it, before sending anything, wherever the value would
travel (URL path, query, JSON body, or --base-url itself); an id too long for a URL is not
blamed on --base-url."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tests.conftest import STAFF_TOKEN
from tests.live_server import closed_port
from verifier.cli.main import app as cli_app

BAD = "evt_\udcff"  # what Python makes of the byte 0xff in argv
OPS = ("--incident-id", "INC-1", "--operator-reason", "receiver fixed")


def _run(*args: str):
    env = {
        "RAILPROOF_API_BASE_URL": f"http://127.0.0.1:{closed_port()}",
        "RAILPROOF_STAFF_TOKEN": STAFF_TOKEN,
    }
    return CliRunner().invoke(cli_app, list(args), env=env)


@pytest.mark.parametrize(
    "args, named",
    [
        (("inspect-webhook-event", BAD), "an id argument"),
        (("inspect-webhook-event", BAD, "--json"), "an id argument"),
        (("replay-webhook-event", BAD, "--confirm-no-live-payment", *OPS), "an id argument"),
        (("inspect-rail-proof", BAD), "an id argument"),
        (("inspect-entitlement", BAD), "an id argument"),
        (("list-webhook-events", "--status", "dead\udcff"), "--status"),
    ],
)
def test_undecodable_argument_exits_2_naming_it(args, named):
    r = _run(*args)
    assert r.exit_code == 2, (r.exit_code, repr(r.exception), r.output)
    assert isinstance(r.exception, SystemExit), repr(r.exception)
    assert f"error: {named}: not valid text" in r.output, r.output
    assert "cannot reach the API" not in r.output  # refused before any request


def test_overlong_event_id_is_not_blamed_on_base_url():
    r = _run("inspect-webhook-event", "evt_" + "0" * 70_000)
    assert r.exit_code == 2, (r.exit_code, repr(r.exception), r.output)
    assert "--base-url" not in r.output and "an id or option" in r.output, r.output


def test_a_bad_base_url_is_still_named():
    r = CliRunner().invoke(
        cli_app,
        ["inspect-webhook-event", "evt_1"],
        env={"RAILPROOF_API_BASE_URL": "http://[::1", "RAILPROOF_STAFF_TOKEN": STAFF_TOKEN},
    )
    assert r.exit_code == 2 and "--base-url" in r.output, r.output


@pytest.mark.parametrize(
    "args, named",
    [
        (("assurance-repair", "idempotency_claim_stuck:\udcff", "--confirm", *OPS), "an id"),
        (
            (
                "record-release-gate-evidence",
                "--rail-id",
                "evm_usdc",
                "--gate",
                "rate_limit_review",
                "--note",
                "20/s\udcff",
                *OPS,
            ),
            "--note",
        ),
        (
            ("request-treasury-change", "--rail-id", "solana_usdc", "--treasury", "C1\udcff", *OPS),
            "--treasury",
        ),
        (("reconcile", "--scope", "rail_proofs\udcff", *OPS), "--scope"),
        (
            ("reconcile", "--scope", "chain_inflows", "--rail-id", "solana_usdc\udcff", *OPS),
            "--rail-id",
        ),
        (
            (
                "reconcile",
                "--scope",
                "chain_inflows",
                "--rail-id",
                "solana_usdc",
                "--since",
                "2026-01-01\udcff",
                *OPS,
            ),
            "--since",
        ),
    ],
    ids=["assurance-repair", "gate-note", "treasury", "scope", "rail-id", "since"],
)
def test_undecodable_value_in_a_request_body_exits_2_naming_it(args, named):
    # A value sent in the JSON body (not the URL) escaped as UnicodeEncodeError, exit 1.
    r = _run(*args)
    assert isinstance(r.exception, SystemExit), repr(r.exception)
    assert r.exit_code == 2, (r.exit_code, repr(r.exception), r.output)
    assert f"error: {named}" in r.output and "not valid text" in r.output, r.output
    assert "cannot reach the API" not in r.output  # refused before any request


@pytest.mark.parametrize("where", ["option", "environment"])
def test_undecodable_base_url_exits_2_naming_it(where):
    url = f"http://127.0.0.1:{closed_port()}/\udcff"
    if where == "option":
        r = CliRunner().invoke(
            cli_app,
            ["--base-url", url, "list-approvals"],
            env={"RAILPROOF_STAFF_TOKEN": STAFF_TOKEN},
        )
    else:
        r = CliRunner().invoke(
            cli_app,
            ["list-approvals"],
            env={"RAILPROOF_API_BASE_URL": url, "RAILPROOF_STAFF_TOKEN": STAFF_TOKEN},
        )
    assert isinstance(r.exception, SystemExit), repr(r.exception)
    assert r.exit_code == 2, (r.exit_code, repr(r.exception), r.output)
    assert "error: --base-url" in r.output and "not valid text" in r.output, r.output
    if where == "environment":
        assert "RAILPROOF_API_BASE_URL" in r.output, r.output
