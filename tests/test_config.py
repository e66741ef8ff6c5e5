"""Configuration from the environment: names of the design, refusals that guard money."""

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from verifier.cli.main import app
from verifier.core.config import Settings


def test_environment_names(monkeypatch):
    monkeypatch.setenv("RAILPROOF_APPLY_RAIL_ALLOWLIST", "solana_usdc, base_usdc")
    monkeypatch.setenv("RAILPROOF_SERVICE_TOKENS", '{"t1": ["o1", "o2"]}')
    monkeypatch.setenv("RAILPROOF_STAFF_TOKENS", '{"s1": "ana"}')
    monkeypatch.setenv("RAILPROOF_LIVE_APPLY", "1")
    s = Settings(
        env={
            "RAILPROOF_TREASURY_SOLANA_USDC": "T",
            "RAILPROOF_RPC_SOLANA_MAINNET": "http://127.0.0.1:1, http://127.0.0.1:2",
        }
    )
    assert s.apply_rail_allowlist == ["solana_usdc", "base_usdc"]
    assert s.service_owners("t1") == ["o1", "o2"] and s.service_owners("t2") is None
    assert s.staff_name("s1") == "ana" and s.staff_name("") is None
    assert s.live_apply is True
    assert s.rail_overrides("solana_usdc").treasury == "T"
    assert s.rpc_urls("solana-mainnet") == ["http://127.0.0.1:1", "http://127.0.0.1:2"]


def test_a_fixed_clock_is_refused_on_a_live_chain():
    with pytest.raises(ValidationError, match="RAILPROOF_CLOCK is refused"):
        Settings(chain="live", clock="2026-01-01T00:00:00Z", env={})
    assert Settings(chain="cassette", clock="2026-01-01T00:00:00Z", env={}).now().year == 2026


def test_cli_reports_bad_configuration_with_exit_2(monkeypatch):
    monkeypatch.setenv("RAILPROOF_CHAIN", "live")
    monkeypatch.setenv("RAILPROOF_CLOCK", "2026-01-01T00:00:00Z")
    r = CliRunner().invoke(app, ["db", "upgrade"])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "error: RAILPROOF_CLOCK is refused when RAILPROOF_CHAIN=live" in r.output
