"""Configuration errors name the variable; unknown RAILPROOF_* variables are warned about;
`serve` refuses a deployment it could not serve, saying what to set, and a port outside
1..65535; `worker` refuses a batch, interval or name it could not work with; readiness says when
recorded cassettes are why a rail is not live."""

import json
import socket

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from registry.catalog import load_catalog
from registry.readiness import DeploymentConfig, readiness
from verifier.cli.main import app
from verifier.core.config import Settings, describe_error, env_var, unknown_env
from verifier.storage.db import upgrade

TOKENS = '{"svc": ["owner"]}'


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A migrated SQLite deployment with an audit key and nothing else RAILPROOF_* set."""
    import os

    for name in [k for k in os.environ if k.startswith("RAILPROOF_")]:
        monkeypatch.delenv(name)
    url = f"sqlite:///{tmp_path}/railproof.db"
    upgrade(url)
    monkeypatch.setenv("RAILPROOF_DATABASE_URL", url)
    monkeypatch.setenv("RAILPROOF_AUDIT_KEY", "test-audit-key")
    return monkeypatch


@pytest.fixture
def served(monkeypatch):
    """uvicorn.run recorded instead of run: a serve that got past every refusal (the check
    that the address is free left out: these tests bind nothing)."""
    import uvicorn

    from verifier.http import processes

    calls: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: calls.append(k))
    monkeypatch.setattr(processes, "check_listen", lambda host, port: None)
    return calls


@pytest.mark.parametrize(
    "args", [["serve", "--port", "1"], ["worker", "--once"], ["db", "upgrade"]]
)
def test_an_invalid_value_names_its_variable(env, args):
    env.setenv("RAILPROOF_CHAIN", "lve")
    r = cli(*args)
    assert r.exit_code == 2, r.output
    assert "error: RAILPROOF_CHAIN: Input should be 'cassette' or 'live'" in r.output
    assert "validation error for Settings" not in r.output and "Traceback" not in r.output


def test_every_invalid_variable_gets_its_own_line(env):
    env.setenv("RAILPROOF_RATE_LIMIT_BURST", "0")
    env.setenv("RAILPROOF_SESSION_TTL_SECONDS", "soon")
    r = cli("db", "upgrade")
    assert r.exit_code == 2
    lines = r.output.splitlines()
    assert any(ln.startswith("error: RAILPROOF_RATE_LIMIT_BURST: ") for ln in lines), r.output
    assert any(ln.startswith("error: RAILPROOF_SESSION_TTL_SECONDS: ") for ln in lines), r.output


def test_bad_json_and_cross_field_refusals_name_the_variable(env):
    env.setenv("RAILPROOF_SERVICE_TOKENS", "{not json")
    r = cli("db", "upgrade")
    assert r.exit_code == 2 and "error: RAILPROOF_SERVICE_TOKENS: not valid JSON" in r.output
    env.delenv("RAILPROOF_SERVICE_TOKENS")
    env.setenv("RAILPROOF_RPC_TIMEOUT_S_BASE", "-1")
    r = cli("db", "upgrade")
    assert r.exit_code == 2 and "error: RAILPROOF_RPC_TIMEOUT_S_BASE: " in r.output, r.output


def test_a_default_session_lifetime_above_the_longest_is_refused_naming_both(env):
    env.setenv("RAILPROOF_MAX_SESSION_TTL_SECONDS", "600")  # the default lifetime is 3600
    r = cli("db", "upgrade")
    assert r.exit_code == 2, r.output
    assert (
        "error: RAILPROOF_SESSION_TTL_SECONDS (3600) must not be longer than "
        "RAILPROOF_MAX_SESSION_TTL_SECONDS (600)" in r.output
    ), r.output
    env.setenv("RAILPROOF_SESSION_TTL_SECONDS", "600")  # equal: every session's default fits
    assert cli("db", "upgrade").exit_code == 0


def test_describe_error_lines():
    with pytest.raises(ValueError) as e:
        Settings(chain="live", clock="2026-01-01T00:00:00Z", env={})
    assert describe_error(e.value) == ["RAILPROOF_CLOCK is refused when RAILPROOF_CHAIN=live"]


def test_unknown_railproof_variables_are_warned_about_not_refused(env):
    env.setenv("RAILPROOF_CHIAN", "live")
    env.setenv("RAILPROOF_TREASURY_SOLANA_USDC", "T")
    env.setenv("RAILPROOF_RPC_TIMEOUT_S_BASE", "5")
    env.setenv("RAILPROOF_STAFF_TOKEN", "x")
    env.setenv("RAILPROOF_WEBHOOK_MAX_ATTEMPTS", "3")
    r = cli("db", "upgrade")
    assert r.exit_code == 0, r.output
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "RAILPROOF_CHIAN" in warnings[0], r.stderr
    assert "TREASURY" not in warnings[0] and "WEBHOOK" not in warnings[0]


def test_known_names_are_not_unknown():
    names = {env_var(f): "x" for f in Settings.model_fields if f != "env"}
    families = {
        "RAILPROOF_RPC_SOLANA_MAINNET": "x",
        "RAILPROOF_RPC_ATTEMPTS_ETHEREUM": "x",
        "RAILPROOF_NETWORK_X402": "x",
        "RAILPROOF_ASSET_EVM_USDC": "x",
        "RAILPROOF_TEST_POSTGRES_URL": "x",
        "RAILPROOF_API_BASE_URL": "x",
        "RAILPROOF_DEMO_SERVICE_TOKEN": "x",
        "RAILPROOF_CONSOLE_SCREENSHOTS": "x",
        "RAILPROOF_WEBHOOK_ALLOW_ANY_HOST": "x",
        "PATH": "x",
    }
    assert unknown_env({**names, **families}) == []
    assert unknown_env({"RAILPROOF_DATABASE_ULR": "x", "RAILPROOF_TREASURY_": "x"}) == [
        "RAILPROOF_DATABASE_ULR",
        "RAILPROOF_TREASURY_",
    ]


def test_port_is_a_setting_named_by_its_own_variable(env, served):
    env.setenv("PORT", "eighty")
    r = cli("serve")
    assert r.exit_code == 2 and served == [], r.output
    assert "error: PORT: Input should be a valid integer" in r.output
    env.setenv("PORT", "8123")
    env.setenv("RAILPROOF_SERVICE_TOKENS", TOKENS)
    r = cli("serve")
    assert r.exit_code == 0 and served[0]["port"] == 8123, r.output
    assert Settings(env={}).api_base_url == "http://127.0.0.1:8123"
    env.setenv("RAILPROOF_API_BASE_URL", "http://127.0.0.1:9/")
    assert Settings(env={}).api_base_url == "http://127.0.0.1:9"
    assert unknown_env({"RAILPROOF_PORT": "1"}) == ["RAILPROOF_PORT"]  # PORT has no prefix


def test_serve_refuses_live_without_rpc_urls(env, served):
    env.setenv("RAILPROOF_CHAIN", "live")
    env.setenv("RAILPROOF_SERVICE_TOKENS", TOKENS)
    r = cli("serve", "--port", "1")
    assert r.exit_code == 2 and served == [], r.output
    assert "set RAILPROOF_RPC_SOLANA_MAINNET" in r.output and "Traceback" not in r.output
    env.setenv("RAILPROOF_RPC_SOLANA_MAINNET", "http://127.0.0.1:1")
    r = cli("serve", "--port", "1")
    assert r.exit_code == 0 and len(served) == 1, r.output


def test_serve_refuses_without_service_tokens(env, served):
    r = cli("serve", "--port", "1")
    assert r.exit_code == 2 and served == [], r.output
    assert "set RAILPROOF_SERVICE_TOKENS" in r.output


def test_serve_starts_in_cassette_mode_with_tokens(env, served):
    env.setenv("RAILPROOF_SERVICE_TOKENS", TOKENS)
    r = cli("serve", "--port", "1")
    assert r.exit_code == 0, r.output
    assert served[0]["port"] == 1 and "warning" not in r.output
    # The compiled HTTP parser (behind verifier.http.wire's refusals) and loop; both pinned.
    assert (served[0]["http"], served[0]["loop"]) == (
        "verifier.http.wire:GuardedHttpToolsProtocol",
        "uvloop",
    )
    assert served[0]["server_header"] is False
    import uvloop  # noqa: F401

    from verifier.http.wire import GuardedHttpToolsProtocol  # noqa: F401


def _config(chain: str, rpc: frozenset[str]) -> DeploymentConfig:
    return DeploymentConfig(
        chain_mode=chain,
        rpc_networks=rpc,
        apply_allowlist=frozenset({"solana_usdc"}),
        receipt_creation_rails=frozenset(),
        live_apply=False,
        networks={},
    )


def _solana(cfg: DeploymentConfig) -> dict:
    return {r["rail_id"]: r for r in readiness(load_catalog(), {}, cfg)}["solana_usdc"]


def test_readiness_says_recorded_cassettes_are_why_and_what_to_set():
    row = _solana(_config("cassette", frozenset()))
    assert row["ready"] is False and row["live_verifier_configured"] is False
    assert row["blockers"] == [
        "live_verifier_configured: recorded cassettes (RAILPROOF_CHAIN=cassette): "
        "set RAILPROOF_CHAIN=live and RAILPROOF_RPC_SOLANA_MAINNET"
    ]
    row = _solana(_config("cassette", frozenset({"solana-mainnet"})))
    assert row["blockers"] == [
        "live_verifier_configured: recorded cassettes (RAILPROOF_CHAIN=cassette): "
        "set RAILPROOF_CHAIN=live"
    ]
    row = _solana(_config("live", frozenset()))
    assert row["blockers"] == [
        "live_verifier_configured: no RPC URL for solana-mainnet: set RAILPROOF_RPC_SOLANA_MAINNET"
    ]
    assert _solana(_config("live", frozenset({"solana-mainnet"})))["ready"] is True


@pytest.mark.parametrize("owners", ['["owner-a,owner-b"]', "[]", '["owner a"]', '[""]'])
def test_a_token_may_act_only_for_owner_ids_a_session_can_name(env, owners):
    """A token's owners name its principal (sorted and joined with commas), which keys its
    idempotency claims, rate limits and webhook endpoints: `["a,b"]` would share the principal
    of `["a", "b"]`. Refused at start, naming the variable and never the token."""
    env.setenv(
        "RAILPROOF_SERVICE_TOKENS",
        f'{{"tok-secret-1": ["owner-a", "owner-b"], "tok-secret-2": {owners}}}',
    )
    r = cli("db", "upgrade")
    assert r.exit_code == 2, r.output
    assert "error: RAILPROOF_SERVICE_TOKENS:" in r.output
    assert "tok-secret" not in r.output and "Traceback" not in r.output


def test_the_owner_ids_a_token_takes_are_those_a_session_takes():
    from pydantic import TypeAdapter, ValidationError

    from verifier.http.models import Id

    session_owner = TypeAdapter(Id)
    for owner in ("owner-a", "a:b@c.d_e", "x" * 128, "x" * 129, "a,b", "a b", "", "é", "a\n"):
        try:
            session_owner.validate_python(owner)
            takes = True
        except ValidationError:
            takes = False
        try:
            Settings(service_tokens={"t": [owner]})
            configured = True
        except ValidationError:
            configured = False
        assert configured == takes, owner


@pytest.mark.parametrize(
    "names",
    [
        ("op1", "op1 "),  # a trailing space
        ("op1", "OP1"),  # case
        ("op1", ""),
        ("op1", "op\u00a01"),
    ],
)
def test_staff_names_cannot_pass_one_person_off_as_two(env, names):
    """The two-person rule compares staff names: names that differ only by a space or case
    would let one person request and approve. Refused at start, never naming a token."""
    tokens = {"staff-secret-1": names[0], "staff-secret-2": names[1]}
    env.setenv("RAILPROOF_STAFF_TOKENS", json.dumps(tokens))
    r = cli("db", "upgrade")
    assert r.exit_code == 2, r.output
    assert "error: RAILPROOF_STAFF_TOKENS:" in r.output
    assert "staff-secret" not in r.output and "Traceback" not in r.output


def test_one_staff_name_on_two_tokens_is_one_person():
    s = Settings(staff_tokens={"t1": "op1", "t2": "op1", "t3": "op2"})
    assert s.staff_name("t1") == s.staff_name("t2") == "op1"


@pytest.mark.parametrize(
    "name, value",
    [
        ("RAILPROOF_WEBHOOK_LEASE_SECONDS", "inf"),
        ("RAILPROOF_WEBHOOK_LEASE_SECONDS", "1e12"),
        ("RAILPROOF_WEBHOOK_BACKOFF_INITIAL_SECONDS", "inf"),
        ("RAILPROOF_WEBHOOK_BACKOFF_MAX_SECONDS", "nan"),
        ("RAILPROOF_WEBHOOK_TIMEOUT_SECONDS", "Infinity"),
        ("RAILPROOF_RPC_TIMEOUT_S", "inf"),
    ],
)
def test_a_duration_no_sweep_could_use_stops_the_start_naming_it(env, name, value):
    # `inf` passed a `gt=0` bound, and a lease or backoff that large overflowed the first
    # datetime it was added to, in the worker's delivery sweep, logged and retried for good.
    env.setenv(name, value)
    with pytest.raises(ValueError) as e:
        Settings()
    assert any(line.startswith(name) for line in describe_error(e.value)), describe_error(e.value)
    r = cli("db", "upgrade")
    assert r.exit_code == 2 and name in r.output, r.output


def test_the_longest_webhook_durations_allowed_still_make_dates(env):
    from datetime import UTC, datetime, timedelta

    from verifier.services import webhooks

    for name in ("LEASE", "BACKOFF_INITIAL", "BACKOFF_MAX", "BACKOFF_JITTER"):
        env.setenv(f"RAILPROOF_WEBHOOK_{name}_SECONDS", str(365 * 24 * 3600))
    cfg = webhooks.DeliveryConfig.from_settings(Settings())
    later = datetime(2026, 12, 6, tzinfo=UTC) + timedelta(seconds=cfg.lease_s)
    assert later + webhooks.backoff(cfg.max_attempts, cfg) > later


@pytest.fixture
def worked(monkeypatch):
    """run_worker recorded instead of run: a worker that got past every refusal."""
    import verifier.worker.loop as loop

    calls: list[dict] = []
    monkeypatch.setattr(loop, "run_worker", lambda *a, **k: calls.append(k))
    return calls


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--batch", "-5"], "--batch"),  # PostgreSQL: LIMIT -5, a DataError traceback
        (["--batch", "0"], "--batch"),  # claims nothing, ever: a worker that does nothing
        (["--batch", "10001"], "--batch"),
        (["--batch", "99999999999999999999"], "--batch"),  # bigint overflow traceback
        (["--interval", "-1"], "--interval"),  # a busy loop on the database
        (["--interval", "0"], "--interval"),  # the same
        (["--interval", "nan"], "--interval"),  # passes any range check: the same busy loop
        (["--interval", "inf"], "--interval"),  # OverflowError traceback in Event.wait
        (["--interval", "86401"], "--interval"),
        # Written into every claim and attempt (64 characters): PostgreSQL refused every claim.
        (["--name", "w" * 65], "--name"),
        (["--name", "w\x00"], "--name"),  # PostgreSQL refuses NUL in text
        (["--name", "w\nforged log line"], "--name"),
    ],
)
def test_worker_refuses_an_unusable_batch_interval_or_name_naming_it(env, worked, args, flag):
    r = cli("worker", *args)
    assert r.exit_code == 2, (r.exit_code, r.output)
    assert flag in r.output and "Traceback" not in r.output, r.output
    assert worked == [], "the worker ran with an unusable setting"


@pytest.mark.parametrize(
    ("args", "batch", "interval"),
    [([], 100, 2.0), (["--batch", "10000", "--interval", "86400"], 10000, 86400.0)],
)
def test_worker_takes_the_widest_usable_batch_and_interval(env, worked, args, batch, interval):
    r = cli("worker", *args)
    assert r.exit_code == 0, r.output
    assert (worked[0]["batch"], worked[0]["interval"]) == (batch, interval)


def test_worker_takes_a_name_as_wide_as_the_column(env, worked):
    r = cli("worker", "--name", "w" * 64)
    assert r.exit_code == 0, r.output
    assert worked[0]["name"] == "w" * 64


@pytest.mark.parametrize("port", ["99999", "65536", "0", "-1"])
def test_serve_refuses_a_port_outside_1_65535_naming_it(env, served, port):
    # 99999 printed "running on :99999" and listened on 34463 (mod 65536); -1 died inside
    # uvicorn with exit 3; 0 quietly became $PORT.
    env.setenv("RAILPROOF_SERVICE_TOKENS", TOKENS)
    r = cli("serve", "--port", port)
    assert r.exit_code == 2 and served == [], (r.exit_code, r.output)
    assert "--port" in r.output, r.output


@pytest.mark.parametrize("port", ["65536", "0", "-1"])
def test_serve_refuses_a_port_variable_outside_1_65535_naming_it(env, served, port):
    env.setenv("RAILPROOF_SERVICE_TOKENS", TOKENS)
    env.setenv("PORT", port)
    r = cli("serve")
    assert r.exit_code == 2 and served == [], (r.exit_code, r.output)
    assert "error: PORT:" in r.output, r.output


def test_serve_takes_port_65535(env, served):
    env.setenv("RAILPROOF_SERVICE_TOKENS", TOKENS)
    r = cli("serve", "--port", "65535")
    assert r.exit_code == 0 and served[0]["port"] == 65535, r.output


TAKEN_PORT = 19410


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("source", ["--port", "PORT"])
def test_serve_on_an_address_it_cannot_listen_on_exits_2_naming_why(env, tmp_path, workers, source):
    # One process: uvicorn's own startup failure, exit 3, naming no option (two processes
    # were refused naming --port, even when the port came from PORT).
    import uvicorn

    env.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("uvicorn ran"))
    env.setenv("RAILPROOF_SERVICE_TOKENS", TOKENS)
    # Given, so that two processes' serve does not set it in this process for good (every
    # later subprocess would inherit it and count its metrics into a directory gone since).
    env.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "metrics"))
    args = ["--port", str(TAKEN_PORT)] if source == "--port" else []
    if source == "PORT":
        env.setenv("PORT", str(TAKEN_PORT))
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", TAKEN_PORT))
        taken.listen()
        r = cli("serve", *args, "--workers", workers)
    assert r.exit_code == 2, (r.exit_code, r.output)
    assert f"error: {source}: cannot listen on 127.0.0.1:{TAKEN_PORT}: " in r.output, r.output
    # Not an address of this machine (TEST-NET-1): the host is what to change.
    r = cli("serve", "--host", "192.0.2.1", *args, "--workers", workers)
    assert r.exit_code == 2, (r.exit_code, r.output)
    assert f"error: --host: cannot listen on 192.0.2.1:{TAKEN_PORT}: " in r.output, r.output


@pytest.mark.parametrize("other", ["ops1.", "ops1..", ".ops1", "ops-1", "OPS_1", "o.p.s.1"])
def test_staff_names_that_differ_only_by_separators_are_one_person(other):
    """`ops1` and `ops1.` would let one person holding both tokens request and approve: names
    are compared case-folded and without . - _, and the refusal names both."""
    with pytest.raises(ValidationError) as e:
        Settings(staff_tokens={"staff-secret-1": "ops1", "staff-secret-2": other})
    message = "\n".join(describe_error(e.value))
    assert "'ops1'" in message and repr(other) in message, message
    assert "staff-secret" not in message


@pytest.mark.parametrize("name", ["work.er", "Sys-tem", "cata_log"])
def test_a_staff_name_spelling_one_of_railproofs_actors_is_reserved(name):
    with pytest.raises(ValidationError, match="reserved"):
        Settings(staff_tokens={"t1": name})


@pytest.mark.parametrize(
    "value",
    [
        "ops.example.com",  # no scheme
        "https://ops.example.com/console",  # a path
        "ftp://ops.example.com",
        "https://user@ops.example.com",
        "https://ops.example.com?x=1",
        "https://ops example.com",
        "https://ops.example.com:99999",
        "*",
    ],
)
def test_a_console_origin_that_is_not_one_stops_the_start_naming_it(env, served, value):
    env.setenv("RAILPROOF_SERVICE_TOKENS", TOKENS)
    env.setenv("RAILPROOF_CONSOLE_ORIGIN", value)
    r = cli("serve")
    assert r.exit_code == 2, r.output
    assert "RAILPROOF_CONSOLE_ORIGIN" in r.output and "not an origin" in r.output, r.output
    assert served == []


def test_console_origins_are_read_as_a_browser_writes_them():
    s = Settings(console_origin="HTTPS://Ops.Example.com:443/, http://10.0.0.5:8080")
    assert s.console_origin == ["https://ops.example.com", "http://10.0.0.5:8080"]
    assert Settings().console_origin == []
