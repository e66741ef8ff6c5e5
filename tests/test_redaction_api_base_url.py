"""The operator CLI and `railproof demo` never repeat the API URL's credentials.

An API behind a proxy with basic auth is reached as `--base-url https://user:pass@host` (httpx
sends the user information as Authorization). When the API could not be reached the CLI said
`cannot reach the API at <the URL as given>`, password and query included, on stderr (CI logs,
tickets); it now names the API by scheme, host, port and path."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tests.live_server import closed_port
from verifier.cli.main import app as cli_app


@pytest.mark.parametrize(
    "base, shown",
    [
        ("http://ops:{secret}@127.0.0.1:{port}", "http://127.0.0.1:{port}"),
        ("http://127.0.0.1:{port}/api?key={secret}", "http://127.0.0.1:{port}/api"),
        ("http://ops:{secret}#1@127.0.0.1:{port}", None),  # httpx cannot read it at all
    ],
)
def test_the_operator_cli_never_repeats_the_api_urls_credentials(base, shown):
    secret, port = "SekretProxyPassw0rd", closed_port()
    r = CliRunner().invoke(
        cli_app,
        ["--base-url", base.format(secret=secret, port=port), "rail-production-readiness"],
        env={"RAILPROOF_STAFF_TOKEN": "staff-token-redaction"},
    )
    assert r.exit_code == 2, r.output
    if shown is not None:
        assert f"cannot reach the API at {shown.format(port=port)} (" in r.output, r.output
    else:
        assert "--base-url: not a usable URL" in r.output, r.output
    assert secret not in r.output, r.output


@pytest.mark.parametrize(
    "base, said",
    [
        ("http://ops:{secret}@127.0.0.1:{port}", "cannot reach http://127.0.0.1:{port} ("),
        ("http://127.0.0.1:{port}/?api_key={secret}", "cannot reach http://127.0.0.1:{port} ("),
        ("http://ops:{secret}@[::1", "{source}: not a usable URL"),  # httpx cannot read it
    ],
)
@pytest.mark.parametrize("source", ["--base-url", "RAILPROOF_API_BASE_URL"])
def test_the_demo_never_repeats_the_api_urls_credentials_and_names_its_source(
    base, said, source, monkeypatch
):
    # `railproof demo` printed the URL as given, and named --base-url for the variable's.
    monkeypatch.delenv("RAILPROOF_API_BASE_URL", raising=False)
    secret, port = "SekretProxyPassw0rd", closed_port()
    url = base.format(secret=secret, port=port)
    if source == "--base-url":
        r = CliRunner().invoke(cli_app, ["demo", "--base-url", url])
    else:
        r = CliRunner().invoke(cli_app, ["demo"], env={"RAILPROOF_API_BASE_URL": url})
    assert r.exit_code == 2, r.output
    assert said.format(port=port, source=source) in r.output, r.output
    assert source in r.output, r.output
    assert secret not in r.output, r.output
