"""A process started with another audit key than the chain was written with (a typo in one
host's secret, a key rotated on one process only) started and answered as always, appending
events that never verify: the chain was broken from then on, and only `railproof audit
verify` or an assurance report would say so, later. Commands that append to the chain now
check the key against the chain's newest event first, and refuse to start (exit 2) naming
RAILPROOF_AUDIT_KEY."""

from __future__ import annotations

import pytest

from tests.procs import base_env, cli


@pytest.fixture
def chain_db(tmp_path) -> str:
    """A database whose chain has events, written with the test deployment's key."""
    url = f"sqlite:///{tmp_path}/railproof.db"
    env = base_env(database_url=url, staff_tokens='{"staff-1": "ops1"}')
    assert cli(["db", "upgrade"], env).returncode == 0
    from verifier.core.config import Settings
    from verifier.core.engine import Engine
    from verifier.services import audit, rails_admin

    e = Engine(Settings(database_url=url, audit_key="test-audit-key", chain="cassette"))
    try:
        e.ensure_rail_states()
        rails_admin.set_paused(e, "solana_usdc", True, audit.Operator("ops1", "INC-1", "drill"))
    finally:
        e.db.dispose()
    return url


def test_another_key_is_refused_before_anything_is_appended(chain_db):
    env = base_env(database_url=chain_db, service_tokens='{"svc": ["alice"]}')
    env["RAILPROOF_AUDIT_KEY"] = "another-audit-key"
    out = cli(["worker", "--once"], env, timeout=60)
    message = out.stdout + out.stderr
    assert out.returncode == 2, (out.returncode, message[-800:])
    assert "RAILPROOF_AUDIT_KEY" in message and "another-audit-key" not in message
    assert "Traceback" not in message
    # Nothing was written under the wrong key: the chain still verifies with the right one.
    ok = cli(["audit", "verify", "--json"], base_env(database_url=chain_db), timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr


def test_the_key_the_chain_was_written_with_starts(chain_db):
    env = base_env(database_url=chain_db, service_tokens='{"svc": ["alice"]}')
    out = cli(["worker", "--once"], env, timeout=60)
    assert out.returncode == 0, (out.stdout + out.stderr)[-800:]


def test_an_empty_chain_takes_any_key(tmp_path):
    url = f"sqlite:///{tmp_path}/fresh.db"
    env = base_env(database_url=url, service_tokens='{"svc": ["alice"]}')
    assert cli(["db", "upgrade"], env).returncode == 0
    env["RAILPROOF_AUDIT_KEY"] = "a-new-deployments-key"
    assert cli(["worker", "--once"], env, timeout=60).returncode == 0


def test_the_asgi_factory_refuses_another_key(chain_db, monkeypatch):
    # What a process manager runs directly (`uvicorn --factory verifier.http.asgi:make_app`).
    from verifier.http.asgi import make_app

    monkeypatch.setenv("RAILPROOF_DATABASE_URL", chain_db)
    monkeypatch.setenv("RAILPROOF_SERVICE_TOKENS", '{"svc": ["alice"]}')
    monkeypatch.setenv("RAILPROOF_AUDIT_KEY", "another-audit-key")
    with pytest.raises(RuntimeError) as refused:
        make_app()
    assert "RAILPROOF_AUDIT_KEY" in str(refused.value)
    assert "another-audit-key" not in str(refused.value)
    monkeypatch.setenv("RAILPROOF_AUDIT_KEY", "test-audit-key")
    assert make_app() is not None
