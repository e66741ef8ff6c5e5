"""`railproof rail-production-readiness` shows each rail's network and the RPC bounds the
deployment gives it (timeout, attempts, total time, submission budget) in its table, as the API
and the console do, not only with --json. Against a real API server on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from tests.conftest import STAFF_TOKEN
from tests.helpers import cassette_engine
from tests.live_server import LiveServer
from verifier.cli.main import app as cli_app
from verifier.http.api import create_app


@pytest.fixture
def served(db_url) -> Iterator[str]:
    e = cassette_engine(
        db_url,
        rpc_attempts=2,
        submit_verify_budget_s=1.5,
        env={
            "RAILPROOF_RPC_TIMEOUT_S_SOLANA_MAINNET": "2.5",
            "RAILPROOF_RPC_TOTAL_S_BASE": "4",
        },
    )
    with LiveServer(create_app(e)) as srv:
        yield srv.url
    e.db.dispose()


def run(url: str, *args: str):
    env = {"RAILPROOF_API_BASE_URL": url, "RAILPROOF_STAFF_TOKEN": STAFF_TOKEN, "COLUMNS": "200"}
    r = CliRunner().invoke(cli_app, ["rail-production-readiness", *args], env=env)
    assert r.exit_code == 0, r.output
    return r.stdout


def row_of(table: str, rail_id: str) -> str:
    (line,) = [ln for ln in table.splitlines() if f" {rail_id} " in ln]
    return line


def test_the_readiness_table_shows_each_networks_rpc_bounds(served):
    table = run(served)
    assert "rpc_policy" in table and "network" in table
    solana = row_of(table, "solana_usdc")
    assert "solana-mainnet" in solana
    assert "timeout_s=2.5 attempts=2 total_s=20.0 submit_budget_s=1.5" in solana
    base = row_of(table, "base_usdc")
    assert "timeout_s=8.0 attempts=2 total_s=4.0 submit_budget_s=1.5" in base

    # The same bounds as --json gives them.
    rows = {r["rail_id"]: r for r in json.loads(run(served, "--json"))}
    assert rows["solana_usdc"]["rpc_policy"] == {
        "timeout_s": 2.5,
        "attempts": 2,
        "total_s": 20.0,
        "submit_budget_s": 1.5,
    }
    assert rows["base_usdc"]["rpc_policy"]["total_s"] == 4.0
