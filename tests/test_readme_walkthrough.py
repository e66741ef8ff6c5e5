"""The README's quick start, run as a new user would: `PORT=… make serve`, then the demo, then
the curl walk-through block exactly as the README shows it (bash, curl, jq) — after the demo,
on the same database."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.procs import RAILPROOF, REPO, Proc, free_port, wait_until

pytestmark = pytest.mark.slow


def _walkthrough() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## A walk-through with curl", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "the walk-through has no sh block"
    return block.group(1)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAILPROOF_")}
    env.update(extra)
    return env


def test_make_serve_demo_then_the_curl_walkthrough(tmp_path: Path):
    missing = [tool for tool in ("make", "curl", "jq", "bash") if shutil.which(tool) is None]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing} missing under CI")
        pytest.skip(f"the walk-through needs {missing}")
    port = str(free_port())
    env = _env(
        PORT=port,
        RAILPROOF_DATABASE_URL=f"sqlite:///{tmp_path}/quickstart.db",
        PATH=f"{Path(RAILPROOF).parent}:{os.environ['PATH']}",
    )
    serve = Proc("make-serve", ["make", "-s", "serve"], {**env}, tmp_path)
    try:
        import httpx

        def up() -> bool:
            if not serve.alive():
                raise AssertionError(serve.output())
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until("make serve", up, 90.0, 0.2)
        assert f"http://127.0.0.1:{port}" in serve.output()

        # The demo finds the server from PORT alone, as `make serve` says.
        demo = subprocess.run(
            [RAILPROOF, "demo"],
            env={**env, "RAILPROOF_STAFF_TOKEN": "demo-staff-token"},
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
        )
        assert demo.returncode == 0, demo.stdout + demo.stderr

        walk = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", _walkthrough()],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
        assert walk.returncode == 0, walk.stdout + walk.stderr
        out = walk.stdout
        assert '"verified"' in out and "order-1001" in out, out
        # The last command prints the owner's entitlements: the demo's and the walk-through's.
        ents = json.loads(out[out.rindex("\n[") + 1 :])
        assert sorted(e["access_product_id"] for e in ents if e["status"] == "active") == [
            "api-credits",
            "pro-monthly",
        ], out
    finally:
        serve.stop()
