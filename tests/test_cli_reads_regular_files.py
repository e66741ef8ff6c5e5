"""Files the CLI is told to read (a cassette, a staff token file, release-gate evidence) are
read only when they are regular files: a named pipe, a device or a directory exits 2 naming the
option, instead of hanging on a pipe no one writes to. Run as real subprocesses with a timeout,
so a command that waits shows as a failure, not as a stuck suite."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from rails.files import MAX_READ_BYTES, NotARegularFile, read_regular
from rails.transport.cassette import discover

ROOT = Path(__file__).resolve().parent.parent
RAILPROOF = str(Path(sys.executable).parent / "railproof")
SOL_SIG = "2S2rTZjaqzxYRw9mnqzwtyqitKtSsnE8GVqLn1KrD5R2YpXZnU4GdjppsgfSAbrzJfaqadfi8CtrqEBy588WVQ3E"
SOL_TO = "3i476kTBBTy7pBGx4CXwJpJ6phuwLQgcwLTdHhU3c7ui"
NOWHERE = "http://127.0.0.1:9"  # never reached: the file is refused first


def command(option: str, path: Path) -> list[str]:
    if option == "--cassette":
        return [
            *("verify-offline", "--rail", "solana_usdc", "--cassette", str(path)),
            *("--proof", SOL_SIG, "--recipient", SOL_TO, "--amount", "1000", "--json"),
        ]
    if option == "--staff-token-file":
        return ["--staff-token-file", str(path), "--base-url", NOWHERE, "list-rail-proofs"]
    if option == "--checkpoint":
        return ["audit", "verify", "--checkpoint", str(path)]
    if option == "RAILPROOF_AUDIT_KEY_FILE":
        return ["audit", "verify"]
    return [
        *("--base-url", NOWHERE, "record-release-gate-evidence", "--rail-id", "evm_usdc"),
        *("--gate", "e2e_rehearsal", "--evidence-file", str(path)),
        *("--incident-id", "INC-1", "--operator-reason", "rehearsal evidence"),
    ]


def railproof(args: list[str], **railproof_env: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAILPROOF_")}
    env["RAILPROOF_STAFF_TOKEN"] = "staff-token"
    env.update(railproof_env)
    try:
        return subprocess.run(
            [RAILPROOF, *args], capture_output=True, text=True, cwd=ROOT, timeout=30, env=env
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"railproof {' '.join(args)}: still waiting after 30 s")


OPTIONS = [
    "--cassette",
    "--staff-token-file",
    "--evidence-file",
    "--checkpoint",
    "RAILPROOF_AUDIT_KEY_FILE",
]


def _env(option: str, path: Path, tmp_path: Path) -> dict[str, str]:
    """The environment a command reading `path` needs (an audit key file is an environment
    variable; audit verify needs a database and a key)."""
    if option == "RAILPROOF_AUDIT_KEY_FILE":
        return {"RAILPROOF_AUDIT_KEY_FILE": str(path), "RAILPROOF_DATABASE_URL": "sqlite://"}
    if option == "--checkpoint":
        return {"RAILPROOF_AUDIT_KEY": "k" * 32, "RAILPROOF_DATABASE_URL": "sqlite://"}
    return {}


@pytest.mark.parametrize("option", OPTIONS)
def test_a_named_pipe_is_refused_not_waited_on(tmp_path, option):
    # Each command used to open the pipe and wait forever for a writer.
    pipe = tmp_path / "pipe.json"
    os.mkfifo(pipe)
    r = railproof(command(option, pipe), **_env(option, pipe, tmp_path))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert option in r.stderr and "a named pipe, not a regular file" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("special", ["/dev/null", "directory"])
def test_a_device_or_a_directory_is_refused(tmp_path, option, special):
    # A device used to be read like a file (/dev/zero until memory ran out).
    path = tmp_path if special == "directory" else Path(special)
    r = railproof(command(option, path), **_env(option, path, tmp_path))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert option in r.stderr and "not a regular file" in r.stderr


def test_read_regular_reads_a_file_and_follows_a_link(tmp_path):
    f = tmp_path / "token"
    f.write_bytes(b"staff-token\n")
    link = tmp_path / "link"
    link.symlink_to(f)
    assert read_regular(f) == read_regular(link) == b"staff-token\n"
    with pytest.raises(FileNotFoundError):
        read_regular(tmp_path / "missing")
    with pytest.raises(NotARegularFile) as e:
        read_regular(tmp_path)
    assert e.value.strerror == "a directory, not a regular file"


def test_a_pipe_among_a_directorys_cassettes_is_skipped(tmp_path):
    # RAILPROOF_CASSETTE_DIR is searched for *.json at startup: a pipe there held the service.
    cassette = ROOT / "fixtures" / "solana" / "usdc_transfer.json"
    (tmp_path / "a.json").write_bytes(cassette.read_bytes())
    pipe = tmp_path / "b.json"
    os.mkfifo(pipe)
    found: list[list[Path]] = []
    t = threading.Thread(target=lambda: found.append(discover(tmp_path)), daemon=True)
    t.start()
    t.join(10)
    if t.is_alive():
        os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))  # lets the waiting read go
        pytest.fail("discover() waited on a named pipe")
    assert found == [[tmp_path / "a.json"]]


@pytest.mark.parametrize("option", ["--cassette", "--proof"])
def test_a_file_too_large_to_be_one_is_refused_before_it_is_read(tmp_path, option):
    # A regular file of gigabytes (a log or an image named by mistake) was read into memory
    # whole: a MemoryError traceback, or the process killed. Sparse: no disk is used.
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(MAX_READ_BYTES + 1)
    if option == "--cassette":
        args = command("--cassette", big)
    else:
        args = [
            *("verify-offline", "--rail", "x402", "--network", "base-sepolia", "--proof", str(big)),
            *("--recipient", "0x209693Bc6afc0C5328bA36FaF03C514EF312287C", "--amount", "10000"),
        ]
    r = railproof(args)
    assert r.returncode == 2 and option in r.stderr and "larger than" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
