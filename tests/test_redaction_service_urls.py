"""A Redis or RPC URL its client cannot read is refused, and never quoted.

A password holding an unescaped '#', '/' or '?' ends the host early and urllib reads the rest
as the port, quoting it in its error: `serve` died with that traceback (the rate limiter's
Redis client), and a verification logged it (the Solana transport). RAILPROOF_REDIS_URL and
RAILPROOF_RPC_<NETWORK> are now refused when the settings are read, naming the variable only,
and a transport given such a URL anyway fails the call as RpcUnavailable without any part of
it."""

from __future__ import annotations

import io
import logging

import base58
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from rails.errors import RpcUnavailable
from rails.transport.evm_http import EvmHttpTransport
from rails.transport.solana_http import SolanaRpcTransport
from rails.transport.tron_http import TronHttpTransport
from tests.conftest import auth, make_settings
from tests.live_server import closed_port
from tests.procs import base_env, cli, free_port
from verifier.core.config import Settings, describe_error
from verifier.core.engine import Engine
from verifier.core.logs import configure_logging
from verifier.http.api import create_app

TREASURY = "C1bL1CaQ6PjLKZyYRn11ZtydLqEfGUxdcvUS3frx8ocg"

SECRET = "SekretServicePw"
MISREAD = [f"{SECRET}#x9", f"{SECRET}/x9", f"{SECRET}?x9", "123#" + SECRET]


def _refusal(**settings) -> list[str]:
    with pytest.raises(ValidationError) as e:
        Settings(**settings)
    return describe_error(e.value)


@pytest.mark.parametrize("password", MISREAD)
def test_a_redis_url_its_client_cannot_read_is_refused_naming_the_variable(password):
    lines = _refusal(redis_url=f"redis://:{password}@127.0.0.1:6379/2", env={})
    assert lines[0].startswith("RAILPROOF_REDIS_URL: not a URL that can be read"), lines
    assert SECRET not in "".join(lines)


@pytest.mark.parametrize("password", MISREAD)
def test_an_rpc_url_its_client_cannot_read_is_refused_naming_the_variable(password):
    env = {"RAILPROOF_RPC_SOLANA_MAINNET": f"https://a.example/,http://u:{password}@b.example/"}
    lines = _refusal(env=env)
    assert lines[0].startswith("RAILPROOF_RPC_SOLANA_MAINNET: not a URL that can be read")
    assert SECRET not in "".join(lines)


@pytest.mark.parametrize(
    "env",
    [
        {"RAILPROOF_RPC_ETHEREUM": "ftp://node.example/"},
        {"RAILPROOF_RPC_ETHEREUM": "http:///no-host"},
    ],
)
def test_an_rpc_url_without_an_http_scheme_or_a_host_is_refused(env):
    assert _refusal(env=env)[0].startswith("RAILPROOF_RPC_ETHEREUM: ")


def test_readable_service_urls_are_taken():
    s = Settings(
        redis_url="redis://:p%23w@127.0.0.1:6379/2",
        env={
            "RAILPROOF_RPC_SOLANA_MAINNET": "https://u:p%2Fw@a.example/rpc?api-key=k, http://b:8899",
            "RAILPROOF_RPC_TIMEOUT_S_SOLANA_MAINNET": "3",
        },
    )
    assert s.rpc_urls("solana-mainnet")[1] == "http://b:8899"


def test_serve_refuses_a_redis_password_with_a_hash_and_never_prints_it(tmp_path):
    database = f"sqlite:///{tmp_path}/serve.db"
    tokens = '{"svc-redaction": ["alice"]}'
    assert cli(["db", "upgrade"], base_env(database_url=database)).returncode == 0
    env = base_env(
        database_url=database,
        service_tokens=tokens,
        redis_url=f"redis://:{SECRET}#x9@127.0.0.1:6379/2",
    )
    out = cli(["serve", "--port", str(free_port())], env, timeout=60)
    message = out.stdout + out.stderr
    assert out.returncode == 2, message
    assert "RAILPROOF_REDIS_URL" in message and SECRET not in message, message


@pytest.mark.parametrize(
    "transport, method",
    [
        (SolanaRpcTransport, "getSlot"),
        (EvmHttpTransport, "eth_blockNumber"),
        (TronHttpTransport, "getnowblock"),
    ],
)
def test_a_transport_given_an_unreadable_url_names_no_part_of_it(transport, method):
    url = f"http://rpcuser:{SECRET}#7@127.0.0.1:{closed_port()}/"
    t = transport([url], "x")
    seen: list[str] = []
    t.set_failure_observer(lambda provider, kind: seen.append(provider))
    with pytest.raises(RpcUnavailable, match="not a URL that can be read") as e:
        t.call(method, [])
    assert SECRET not in str(e.value) and seen and SECRET not in "".join(seen)


def test_a_verification_through_an_unreadable_rpc_url_logs_no_part_of_it(db_url):
    """Settings refuse such a URL; a transport given one anyway (a URL set past them) fails
    the call as RpcUnavailable, and neither the answer nor the log quotes it."""
    settings = make_settings(
        db_url, chain="live", clock=None, env={"RAILPROOF_TREASURY_SOLANA_USDC": TREASURY}
    )
    rpc = f"http://rpcuser:{SECRET}#7@127.0.0.1:{closed_port()}/"
    settings.env = {**settings.env, "RAILPROOF_RPC_SOLANA_MAINNET": rpc}
    engine = Engine(settings)
    engine.ensure_rail_states()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging(logging.DEBUG)
        buf = io.StringIO()
        root.handlers[0].setStream(buf)  # type: ignore[attr-defined]
        with TestClient(create_app(engine), raise_server_exceptions=False) as client:
            ps = client.post(
                "/v1/payment-sessions",
                headers=auth(),
                json={
                    "owner_id": "alice",
                    "rail_id": "solana_usdc",
                    "access_product_id": "p",
                    "amount": 5,
                },
            )
            assert ps.status_code == 201, ps.text
            signature = base58.b58encode(bytes(range(64))).decode()
            r = client.post(
                "/v1/proofs",
                headers=auth(),
                json={"session_id": ps.json()["id"], "proof": signature},
            )
            assert r.status_code == 201, r.text
            assert r.json()["failure_code"] == "rpc_unavailable", r.text
            assert SECRET not in r.text
        logs = buf.getvalue()
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        engine.db.dispose()
    assert logs.strip(), "nothing was logged"
    assert SECRET not in logs, [line for line in logs.splitlines() if SECRET in line]
