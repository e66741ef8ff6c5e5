"""`railproof record` against a node on 127.0.0.1 (answering as the recorded demo payment's
node did): the cassette it writes replays to the same verdict offline. Progress bars (record,
reconcile, the helper) are drawn only on a terminal, so piped output reads exactly as before."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.jsonrpc_server import JsonRpcServer
from verifier.cli.main import app as cli_app
from verifier.cli.progress import progress
from verifier.core.config import REPO_FIXTURES
from verifier.services.offline import OfflineRequest, verify_offline
from verifier.tools.recorder import record_cassette

DEMO = json.loads((REPO_FIXTURES / "solana/generated/demo_payment.json").read_text())


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _node() -> JsonRpcServer:
    srv = JsonRpcServer()
    for call in DEMO["calls"]:
        srv.answer(call["method"], call["result"])
    return srv


def _replay(cassette: Path) -> dict:
    pay = DEMO["demo"]
    return verify_offline(
        OfflineRequest(
            rail="solana_usdc",
            proof=pay["signature"],
            recipient=pay["recipient"],
            amount=int(pay["amount"]),
            cassette=cassette,
            asset=None,
            network=None,
            reference=pay["reference"],
            memo=pay["memo"],
            not_before=None,
            not_after=None,
            now=None,
            at_least=False,
        )
    )


def test_record_writes_a_cassette_that_replays_and_prints_no_bar_when_piped(tmp_path):
    out = tmp_path / "recorded.json"
    pay = DEMO["demo"]
    with _node() as srv:
        r = CliRunner().invoke(
            cli_app,
            [
                "record",
                "--network",
                "solana-mainnet",
                "--rpc",
                srv.url,
                "--proof",
                pay["signature"],
                "--recipient",
                pay["recipient"],
                "--out",
                str(out),
            ],
        )
        calls = srv.count()
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    assert r.stdout == f"wrote {out} ({len(doc['calls'])} calls)\n"  # nothing else, no escapes
    assert len(doc["calls"]) == calls >= 2
    assert {c["method"] for c in doc["calls"]} == {"getTransaction", "getSignatureStatuses"}
    assert _replay(out)["status"] == "verified"


def _record(rpc: str, out: Path):
    pay = DEMO["demo"]
    return CliRunner().invoke(
        cli_app,
        [
            *("record", "--network", "solana-mainnet", "--rpc", rpc),
            *("--proof", pay["signature"], "--recipient", pay["recipient"], "--out", str(out)),
        ],
    )


@pytest.mark.parametrize(
    "secret_url",
    [
        "http://rpcuser:SECRETKEY123@{hostport}/",
        "http://{hostport}?api-key=SECRETKEY123",
        "http://{hostport}/v2/SECRETKEY123",
    ],
    ids=["userinfo", "query-without-path", "path"],
)
def test_record_names_the_node_by_host_only_in_the_cassette(tmp_path, secret_url):
    # `source` was built by splitting the URL on "//" and "/": a key in the user information
    # or in a query with no path before it was written into a cassette meant to be committed.
    out = tmp_path / "rec.json"
    with _node() as srv:
        hostport = srv.url.split("//")[1].rstrip("/")
        r = _record(secret_url.format(hostport=hostport), out)
    assert r.exit_code == 0, r.output
    assert "SECRETKEY123" not in out.read_text() and "SECRETKEY123" not in r.output
    assert json.loads(out.read_text())["source"] == f"railproof record from http://{hostport}"


@pytest.mark.parametrize("where", ["directory", "under-a-file", "read-only-directory"])
def test_record_refuses_an_unwritable_out_before_asking_the_node(tmp_path, where):
    # --out naming a directory used to run the whole recording, then end in an
    # IsADirectoryError traceback.
    if where == "directory":
        out = tmp_path
    elif where == "under-a-file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "rec.json"
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into a read-only directory")
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        out = ro / "rec.json"
    with _node() as srv:
        r = _record(srv.url, out)
        asked = srv.count()
    assert r.exit_code == 2, (r.exit_code, repr(r.exception))
    assert "--out" in r.output and "Traceback" not in r.output
    assert asked == 0


def test_record_draws_a_progress_bar_on_a_terminal(tmp_path):
    pay = DEMO["demo"]
    tty = Tty()
    with _node() as srv:
        n = record_cassette(
            "solana_usdc",
            "solana-mainnet",
            [srv.url],
            [pay["signature"]],
            tmp_path / "c.json",
            pay["recipient"],
            progress_stream=tty,
        )
    drawn = tty.getvalue()
    assert n >= 2 and "recording" in drawn and "\x1b[" in drawn


def test_progress_helper_draws_only_on_a_terminal():
    piped = io.StringIO()
    with progress("work", 3, stream=piped) as advance:
        for i in range(3):
            advance(f"item {i}")
    assert piped.getvalue() == ""
    tty = Tty()
    with progress("work", None, stream=tty) as advance:  # indeterminate: one long request
        advance("waiting")
    assert "work" in tty.getvalue()


def test_reconcile_draws_its_bar_only_on_a_terminal(monkeypatch):
    import verifier.cli.progress as progress_mod
    from tests.live_server import closed_port

    args = ["reconcile", "--scope", "rail_proofs", "--incident-id", "I-1", "--operator-reason", "r"]
    env = {
        "RAILPROOF_API_BASE_URL": f"http://127.0.0.1:{closed_port()}",
        "RAILPROOF_STAFF_TOKEN": "x",
    }
    piped = CliRunner().invoke(cli_app, args, env=env)
    assert piped.exit_code == 2 and "cannot reach the API" in piped.output
    assert "\x1b[" not in piped.output and "reconciliation (rail_proofs)" not in piped.output
    monkeypatch.setattr(progress_mod, "_is_terminal", lambda _stream: True)
    tty = CliRunner().invoke(cli_app, args, env=env)
    assert tty.exit_code == 2 and "reconciliation (rail_proofs)" in tty.output
