"""The x402 repeated-key check parses the payload a second time with the standard library's
`json`, whose recursion limit (the interpreter's, 1000) is lower than orjson's depth limit
(1023): a payload nested ~1000 deep passes orjson and must still be a 4xx naming `proof`,
not a 500. In a fresh API process (before anything imported eth_account, whose py_ecc raises
the limit) the interpreter's own limit holds: run in a subprocess, as a freshly started API
process is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

_SCRIPT = r"""
import json, sys
from datetime import UTC, datetime
from fastapi.testclient import TestClient
from tests.conftest import auth, make_settings
from tests.test_x402_engine import PAY_TO
from verifier.core.engine import Engine
from verifier.http.api import create_app
from verifier.storage.db import upgrade

url, depth = sys.argv[1], int(sys.argv[2])
upgrade(url)
e = Engine(make_settings(url, clock=datetime(2025, 2, 27, 16, 1, 40, tzinfo=UTC),
                         env={"RAILPROOF_NETWORK_X402": "base-sepolia"}))
e.ensure_rail_states()
with TestClient(create_app(e), raise_server_exceptions=False) as c:
    r = c.post("/v1/payment-sessions", headers=auth(), json={
        "owner_id": "alice", "rail_id": "x402", "access_product_id": "api",
        "amount": 10000, "recipient": PAY_TO, "reference": None})
    assert r.status_code == 201, r.text
    proof = '{"x402Version":1,"a":' + "[" * depth + "]" * depth + "}"
    r = c.post("/v1/proofs", headers=auth(), json={"session_id": r.json()["id"], "proof": proof})
print(json.dumps({"status": r.status_code, "body": r.text[:300],
                  "limit": sys.getrecursionlimit()}))
"""


@pytest.mark.parametrize("depth", [980, 1020])
def test_a_deeply_nested_x402_proof_is_a_4xx_naming_the_proof(tmp_path, depth):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    url = f"sqlite:///{tmp_path / 'x.db'}"
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, url, str(depth)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert 400 <= got["status"] < 500, got
    assert "proof" in got["body"], got
