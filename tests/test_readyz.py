"""GET /readyz: ready when the database answers at the head migration (and, on a live chain,
every live rail has an RPC URL); 503 with the failing checks' reasons otherwise. /healthz
stays liveness only."""

from __future__ import annotations

from alembic.script import ScriptDirectory
from fastapi.testclient import TestClient

from tests.conftest import make_settings
from tests.fake_rail import catalog_with_fake
from verifier.core.engine import Engine
from verifier.http.api import create_app
from verifier.storage.db import alembic_config, head_revision, upgrade


def get(engine: Engine, path: str):
    with TestClient(create_app(engine), raise_server_exceptions=False) as c:
        return c.get(path)


def checks(body: dict) -> dict[str, dict]:
    return {c["name"]: c for c in body["checks"]}


def test_ready_on_a_migrated_database(client):
    r = client.get("/readyz")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ready"
    got = checks(body)
    assert got["database"]["ok"] and got["schema"]["ok"]
    assert all(c["ok"] for c in body["checks"])
    # Cassette mode: no RPC check.
    assert not any(name.startswith("rpc:") for name in got)


def test_one_migration_behind_is_not_ready_and_names_the_schema(tmp_path):
    url = f"sqlite:///{tmp_path}/behind.db"
    head = head_revision(url)
    previous = ScriptDirectory.from_config(alembic_config(url)).get_revision(head).down_revision
    assert isinstance(previous, str)
    upgrade(url, previous)
    engine = Engine(make_settings(url), catalog=catalog_with_fake())
    try:
        r = get(engine, "/readyz")
        assert r.status_code == 503, r.text
        body = r.json()
        assert body["status"] == "not_ready"
        schema = checks(body)["schema"]
        assert not schema["ok"]
        assert previous in schema["detail"] and head in schema["detail"]
        assert "railproof db upgrade" in schema["detail"]
        assert checks(body)["database"]["ok"]
        # Liveness does not care.
        assert get(engine, "/healthz").status_code == 200
    finally:
        engine.db.dispose()


def test_unreachable_database_is_not_ready_without_leaking_its_url(tmp_path):
    url = f"sqlite:///{tmp_path}/no-such-dir/x.db"
    engine = Engine(make_settings(url), catalog=catalog_with_fake())
    try:
        r = get(engine, "/readyz")
        assert r.status_code == 503, r.text
        got = checks(r.json())
        assert not got["database"]["ok"] and not got["schema"]["ok"]
        assert "no-such-dir" not in r.text
    finally:
        engine.db.dispose()


def test_live_chain_needs_an_rpc_url_for_each_live_rail(db_url):
    def live(env: dict[str, str]) -> Engine:
        settings = make_settings(db_url, chain="live", clock=None, env=env)
        return Engine(settings, catalog=catalog_with_fake())

    engine = live({})
    try:
        r = get(engine, "/readyz")
        assert r.status_code == 503, r.text
        got = checks(r.json())
        assert got["database"]["ok"] and got["schema"]["ok"]
        # Live-stage rails only (solana_usdc, the fake live rail), each naming what to set.
        rpc = {n: c for n, c in got.items() if n.startswith("rpc:")}
        assert set(rpc) == {"rpc:solana_usdc", "rpc:fake_live"}
        assert "RAILPROOF_RPC_SOLANA_MAINNET" in rpc["rpc:solana_usdc"]["detail"]
        assert "RAILPROOF_RPC_FAKENET" in rpc["rpc:fake_live"]["detail"]
    finally:
        engine.db.dispose()

    # Configured, never called: the URLs point nowhere that answers.
    secret = "http://127.0.0.1:9/secret-key"
    engine = live({"RAILPROOF_RPC_SOLANA_MAINNET": secret, "RAILPROOF_RPC_FAKENET": secret})
    try:
        r = get(engine, "/readyz")
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "ready"
        assert "secret-key" not in r.text
    finally:
        engine.db.dispose()
