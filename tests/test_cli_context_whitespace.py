"""An --incident-id or --operator-reason with a leading or trailing space (pasted from a
ticket, read with "$(cat reason.txt)") is sent trimmed: it was put into its header as given,
which HTTP refuses, and the command said "cannot reach the API" while the API was up."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tests import loopback_http as loopback
from verifier.cli.main import app as cli_app


class _Api(loopback.Handler):
    seen: list[dict[str, str]] = []

    def _answer(self) -> None:
        self.body()
        _Api.seen.append(dict(self.headers))
        self.answer(json.dumps({"paused": True, "rail_id": "solana_usdc"}).encode())

    do_GET = do_POST = _answer  # noqa: N815


@pytest.fixture(scope="module")
def api():
    with loopback.serving(_Api) as base:
        yield base


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
