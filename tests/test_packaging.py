"""Packaging: the wheel is enough to run `make serve`'s demo outside the repository, it ships
`py.typed` and the cassettes the demo and the rehearsal replay (kept identical to fixtures/),
and the pip-compile lock files agree with every pin in pyproject.toml.

The wheel test builds from a copy of the tree (so a concurrent build in the working tree is
not disturbed), installs the wheel into a fresh venv in a temporary directory, and serves on
127.0.0.1 from there with the Makefile's demo environment. The venv gets its dependencies
from this checkout's .venv (a path entry: nothing from the checkout itself is importable);
RAILPROOF_TEST_WHEEL_DEPS=lock installs them from requirements.txt instead (hashes checked,
about a minute more).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.procs import free_port, wait_until
from verifier.core.config import PACKAGED_CASSETTES, REPO_FIXTURES

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
RUNTIME_LOCK = ROOT / "requirements.txt"
DEV_LOCK = ROOT / "requirements-dev.txt"
PACKAGES = ("registry", "rails", "verifier")


def _lock_pins(path: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", line)
        if m:
            pins[canonicalize_name(m.group(1))] = m.group(2)
    return pins


def _project_pins(reqs: list[str]) -> dict[str, str]:
    pins = {}
    for text in reqs:
        req = Requirement(text)
        exact = [s.version for s in req.specifier if s.operator == "=="]
        if exact:
            pins[canonicalize_name(req.name)] = exact[0]
    return pins


# -- the lock files ----------------------------------------------------------------------------


def test_every_pin_in_pyproject_matches_the_lock():
    runtime = _project_pins(PYPROJECT["project"]["dependencies"])
    extras = {
        name: _project_pins(reqs)
        for name, reqs in PYPROJECT["project"].get("optional-dependencies", {}).items()
    }
    assert runtime and extras.get("dev")
    locked, locked_dev = _lock_pins(RUNTIME_LOCK), _lock_pins(DEV_LOCK)
    for name, version in runtime.items():
        assert locked.get(name) == version, (name, version, locked.get(name))
        assert locked_dev.get(name) == version, (name, version, locked_dev.get(name))
    for name, version in extras["dev"].items():
        assert locked_dev.get(name) == version, (name, version, locked_dev.get(name))
    # The runtime lock holds no development tool.
    assert not set(extras["dev"]) & set(locked)


@pytest.mark.parametrize("lock", [RUNTIME_LOCK, DEV_LOCK], ids=lambda p: p.name)
def test_lock_pins_every_package_with_hashes(lock):
    blocks = re.split(r"\n(?=[A-Za-z0-9])", lock.read_text().split("\n", 1)[1])
    reqs = [b for b in blocks if re.match(r"[A-Za-z0-9]", b)]
    assert len(reqs) >= 50
    for block in reqs:
        assert re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*==\S+", block), block[:80]
        assert "--hash=sha256:" in block, block[:80]
    # pip and setuptools are pinned too (--allow-unsafe), or --require-hashes cannot install.
    assert {"pip", "setuptools"} <= set(_lock_pins(lock)) or lock == RUNTIME_LOCK


# -- what the wheel ships ---------------------------------------------------------------------


def test_packaged_cassettes_are_the_fixtures_the_demo_and_rehearsal_replay():
    from verifier.tools.demo import DEMO_CASSETTE
    from verifier.tools.rehearse import DEMO_CASSETTE as REHEARSAL_DEMO
    from verifier.tools.rehearse import ROLLBACK_CASSETTE

    shipped = sorted(p.relative_to(PACKAGED_CASSETTES) for p in PACKAGED_CASSETTES.rglob("*.json"))
    assert set(shipped) == {Path(DEMO_CASSETTE), REHEARSAL_DEMO, ROLLBACK_CASSETTE}
    for rel in shipped:
        assert (PACKAGED_CASSETTES / rel).read_bytes() == (REPO_FIXTURES / rel).read_bytes(), rel


def _build_wheel(tmp: Path) -> Path:
    src = tmp / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for top in PACKAGES:
        shutil.copytree(ROOT / top, src / top, ignore=ignore)
    for f in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / f, src / f)
    dist = tmp / "dist"
    subprocess.run(
        [
            str(Path(sys.executable).parent / "pip"),
            "wheel",
            "-q",
            "--no-deps",
            "-w",
            str(dist),
            ".",
        ],
        cwd=src,
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = dist.glob("railproof-*.whl")
    return wheel


def _demo_env() -> dict[str, str]:
    """The Makefile's DEMO_ENV as its shell evaluates it (so this test follows the Makefile)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAILPROOF_")}
    out = subprocess.run(
        [
            "make",
            "-s",
            "--no-print-directory",
            "--eval",
            "_demo_env: ; @env $(DEMO_ENV) env",
            "_demo_env",
        ],
        cwd=ROOT,
        env=clean,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    demo = dict(line.split("=", 1) for line in out.splitlines() if line.startswith("RAILPROOF_"))
    assert {"RAILPROOF_DATABASE_URL", "RAILPROOF_CHAIN", "RAILPROOF_SERVICE_TOKENS"} <= set(demo)
    assert "RAILPROOF_CASSETTE_DIR" not in demo  # the default must find the cassettes
    return {**clean, **demo, "PYTHONUNBUFFERED": "1"}


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make (the demo environment)")
def test_the_wheel_alone_serves_the_demo(tmp_path):
    wheel = _build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    for top in PACKAGES:
        assert f"{top}/py.typed" in names
    assert "verifier/cassettes/solana/generated/demo_payment.json" in names
    assert not any(n.startswith(("fixtures/", "tests/")) for n in names)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    pip = [str(Path(sys.executable).parent / "pip"), "--python", str(py), "install", "-q"]
    if os.environ.get("RAILPROOF_TEST_WHEEL_DEPS") == "lock":
        subprocess.run([*pip, "--require-hashes", "-r", str(RUNTIME_LOCK)], check=True, timeout=900)
    else:
        site = subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        # A path entry only: .pth files there (this checkout's editable install) are not run.
        Path(site, "_railproof_test_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([*pip, "--no-deps", str(wheel)], check=True, timeout=300)

    run = tmp_path / "run"  # outside the repository: only the wheel can answer
    run.mkdir()
    railproof = str(venv / "bin" / "railproof")
    where = subprocess.run(
        [
            str(py),
            "-c",
            "import verifier, verifier.core.config as c; "
            "print(verifier.__file__); print(c.DEFAULT_CASSETTE_DIR)",
        ],
        cwd=run,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert all(p.startswith(str(venv)) for p in where), where

    env = _demo_env()
    up = subprocess.run(
        [railproof, "db", "upgrade"], cwd=run, env=env, capture_output=True, text=True, timeout=120
    )
    assert up.returncode == 0, up.stderr
    port = free_port()
    server = subprocess.Popen(
        [railproof, "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=run,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"

    def up_() -> bool:
        assert server.poll() is None, server.stdout.read().decode() if server.stdout else ""
        try:
            return httpx.get(base + "/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until("railproof serve from the wheel", up_, timeout=60)
        demo = subprocess.run(
            [railproof, "demo", "--base-url", base],
            cwd=run,
            env={**env, "RAILPROOF_STAFF_TOKEN": "demo-staff-token"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert demo.returncode == 0, demo.stdout + demo.stderr
        ents = httpx.get(
            base + "/v1/entitlements",
            params={"owner_id": "demo-owner"},
            headers={"Authorization": "Bearer demo-service-token"},
            timeout=10,
        ).json()
        assert [e["status"] for e in ents] == ["active"]
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
    assert (run / "railproof.db").exists()

    # The rehearsal replays the packaged cassettes too.
    reh = subprocess.run(
        [railproof, "rehearse", "--database-url", f"sqlite:///{run}/rehearsal.db"]
        + ["--out", str(run / "evidence.json"), "--incident-id", "PKG-1"]
        + ["--operator-reason", "the wheel alone"],
        cwd=run,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert reh.returncode == 0, reh.stdout + reh.stderr
    assert "rehearsal passed" in reh.stdout and "unhandled error" not in reh.stdout + reh.stderr


# -- CONTRIBUTING.md's commands exist -----------------------------------------------------------


def test_contributing_names_only_commands_targets_and_paths_that_exist():
    import typer

    from verifier.cli.main import app

    text = (ROOT / "CONTRIBUTING.md").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.M))
    named_targets = set(re.findall(r"\bmake ([a-z][a-z-]*)", text))
    assert {"test", "lint", "lock"} <= named_targets <= targets, named_targets - targets

    root = typer.main.get_command(app)
    # Each `railproof …` invocation in code (blocks, continuation lines joined, and inline
    # spans): the command and its flags.
    code = re.findall(r"```.*?```", text, flags=re.S) + re.findall(r"`([^`\n]+)`", text)
    joined = "\n".join(code).replace("\\\n", " ")
    calls = re.findall(r"railproof ([a-z][a-z-]*)((?: +(?:--[a-z-]+|<[^>]+>|[^\s`]+))*)", joined)
    checked = 0
    for name, rest in calls:
        cmd = root.commands.get(name)
        assert cmd is not None, name
        opts = {o for p in cmd.params for o in p.opts}
        flags = set(re.findall(r"(?<!\S)(--[a-z][a-z-]*)", rest))
        assert flags <= opts, (name, flags - opts)
        checked += bool(flags)
    assert checked >= 2  # record and verify-offline, with their flags

    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    paths = [
        p
        for p in re.findall(r"`([^`\s<>]+)`", prose)
        if "/" in p and not p.startswith(("http", "-")) and "=" not in p
    ]
    assert len(paths) >= 8
    for p in paths:
        assert (ROOT / p.split(" ")[0]).exists(), p
    assert (ROOT / "scripts" / "make_solana_cassettes.py").is_file()


def test_security_and_changelog_link_only_to_what_exists():
    readme_anchors = {
        re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
        for h in re.findall(r"^#{2,3} (.+)$", (ROOT / "README.md").read_text(), re.M)
    }
    security_anchors = {
        re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
        for h in re.findall(r"^#{2,3} (.+)$", (ROOT / "docs/security.md").read_text(), re.M)
    }
    for doc in ("SECURITY.md", "CONTRIBUTING.md", "CHANGELOG.md"):
        for target in re.findall(r"\]\(([^)]+)\)", (ROOT / doc).read_text()):
            if target.startswith("http"):
                continue
            path, _, anchor = target.partition("#")
            assert (ROOT / path).exists(), (doc, target)
            if anchor and path == "README.md":
                assert anchor in readme_anchors, (doc, target)
            if anchor and path == "docs/security.md":
                assert anchor in security_anchors, (doc, target)
