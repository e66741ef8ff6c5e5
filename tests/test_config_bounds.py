"""Settings a date is computed from are bounded: a value no date can hold stops the start with
one line naming its variable (exit 2, no traceback), and the longest accepted one still works
on every path that adds it to a date.

- RAILPROOF_CLOCK near the ends of the datetime range, once moved to UTC, is outside it.
- The integer durations (TTL, grace, stuck-claim age, claim lease, SLAs, evidence age) are at
  most a year: a larger one overflowed the first datetime it was added to, so every proof
  submission that met tx_not_found, the staff reads of stuck claims and assurance, every
  session open and every worker sweep answered 500 or raised, while the process started fine.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.conftest import SERVICE_TOKEN, STAFF_TOKEN, auth, make_settings
from tests.fake_rail import ScriptedChain, catalog_with_fake
from tests.helpers import FAKE_SESSION
from tests.test_config_errors import cli, env  # noqa: F401  (env: the fixture)
from verifier.core.config import Settings, describe_error
from verifier.core.engine import Engine
from verifier.http.api import create_app
from verifier.worker.loop import sweep

# -- RAILPROOF_CLOCK at the ends of the datetime range ---------------------------------------


@pytest.mark.parametrize("clock", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_a_clock_outside_the_utc_range_stops_the_start_naming_it(env, clock):  # noqa: F811
    env.setenv("RAILPROOF_CLOCK", clock)
    r = cli("db", "upgrade")
    assert isinstance(r.exception, SystemExit), repr(r.exception)  # not an OverflowError
    assert r.exit_code == 2, (r.exit_code, r.output)
    assert "error: RAILPROOF_CLOCK: outside the representable UTC range" in r.output, r.output
    assert "Traceback" not in r.output


# -- durations ---------------------------------------------------------------------------------

YEAR_S = 365 * 24 * 3600

# Each just past its bound.
TOO_LONG = [
    {"RAILPROOF_TX_NOT_FOUND_GRACE_SECONDS": str(YEAR_S + 1)},
    {"RAILPROOF_STUCK_CLAIM_SECONDS": str(YEAR_S + 1)},
    {"RAILPROOF_APPROVAL_MAX_AGE_SECONDS": str(YEAR_S + 1)},
    {"RAILPROOF_CLAIM_LEASE_SECONDS": str(YEAR_S + 1)},
    {"RAILPROOF_SESSION_TTL_SECONDS": str(YEAR_S + 1)},
    {"RAILPROOF_MAX_SESSION_TTL_SECONDS": str(YEAR_S + 1)},
    {"RAILPROOF_RECONCILE_VERIFIED_SLA_SECONDS": str(YEAR_S + 1)},
    {"RAILPROOF_RECONCILE_PENDING_SLA_SECONDS": str(YEAR_S + 1)},
    {"RAILPROOF_DISCOVERY_MAX_BACKOFF_S": str(YEAR_S + 1)},
    {"RAILPROOF_RELEASE_GATE_MAX_AGE_DAYS": "366"},
    # RPC bounds: an hour at most (a far larger one overflowed the socket's timeout).
    {"RAILPROOF_RPC_TIMEOUT_S": "3600.5"},
    {"RAILPROOF_RPC_TOTAL_S": "3601"},
    {"RAILPROOF_SUBMIT_VERIFY_BUDGET_S": "1e12"},
    {"RAILPROOF_RPC_TIMEOUT_S_SOLANA_MAINNET": "1e12"},
    # PostgreSQL's own largest lock_timeout / statement_timeout is 2**31 - 1 ms.
    {"RAILPROOF_PG_LOCK_TIMEOUT_MS": str(2**31)},
    {"RAILPROOF_PG_STATEMENT_TIMEOUT_MS": str(2**31)},
    # ~31,700 years: the value that reached the datetimes before.
    {
        "RAILPROOF_SESSION_TTL_SECONDS": str(10**12),
        "RAILPROOF_MAX_SESSION_TTL_SECONDS": str(10**12),
    },
]


@pytest.mark.parametrize("values", TOO_LONG, ids=lambda v: "+".join(v))
def test_a_duration_past_its_bound_stops_the_start_naming_it(env, values):  # noqa: F811
    for name, value in values.items():
        env.setenv(name, value)
    with pytest.raises(ValueError) as e:
        Settings()
    lines = describe_error(e.value)
    assert all(any(line.startswith(n) for line in lines) for n in values), lines
    r = cli("db", "upgrade")
    assert r.exit_code == 2 and all(f"error: {n}: " in r.output for n in values), r.output
    assert "Traceback" not in r.output


def test_the_longest_durations_are_accepted(env):  # noqa: F811
    for name in (
        "RAILPROOF_SESSION_TTL_SECONDS",
        "RAILPROOF_MAX_SESSION_TTL_SECONDS",
        "RAILPROOF_CLAIM_LEASE_SECONDS",
    ):
        env.setenv(name, str(YEAR_S))
    env.setenv("RAILPROOF_RELEASE_GATE_MAX_AGE_DAYS", "365")
    env.setenv("RAILPROOF_PG_LOCK_TIMEOUT_MS", str(2**31 - 1))
    s = Settings()
    assert (s.session_ttl_seconds, s.release_gate_max_age_days) == (YEAR_S, 365)


# The longest accepted value (a year) on the paths that add it to a date.


def _engine(db_url, **kw):
    engine = Engine(make_settings(db_url, **kw), catalog=catalog_with_fake())
    engine.chains.set_transport("fakenet", ScriptedChain())
    engine.ensure_rail_states()
    return engine


def test_a_year_of_tx_not_found_grace_answers_proof_submission(db_url):
    engine = _engine(db_url, tx_not_found_grace_seconds=YEAR_S)
    with TestClient(create_app(engine), raise_server_exceptions=False) as c:
        sess = c.post("/v1/payment-sessions", headers=auth(SERVICE_TOKEN), json=FAKE_SESSION)
        assert sess.status_code == 201, sess.text
        # The chain has not seen this transaction yet: the classic `pending tx_not_found`.
        r = c.post(
            "/v1/proofs",
            headers=auth(SERVICE_TOKEN),
            json={"session_id": sess.json()["id"], "proof": "fx0123abce"},
        )
        assert r.status_code < 500, r.text
    engine.db.dispose()


@pytest.mark.parametrize("path", ["/v1/admin/assurance", "/v1/admin/idempotency-claims/stuck"])
def test_a_year_of_stuck_claim_age_answers_staff_reads(db_url, path):
    engine = _engine(db_url, stuck_claim_seconds=YEAR_S)
    with TestClient(create_app(engine), raise_server_exceptions=False) as c:
        r = c.get(path, headers=auth(STAFF_TOKEN))
        assert r.status_code == 200, r.text
    engine.db.dispose()


def test_a_year_of_session_ttl_opens_sessions(db_url):
    engine = _engine(db_url, session_ttl_seconds=YEAR_S, max_session_ttl_seconds=YEAR_S)
    with TestClient(create_app(engine), raise_server_exceptions=False) as c:
        r = c.post("/v1/payment-sessions", headers=auth(SERVICE_TOKEN), json=FAKE_SESSION)
        assert r.status_code == 201, r.text
        # Asked for by the client too: the API's schema admits what the deployment allows.
        body = {**FAKE_SESSION, "expires_in_seconds": YEAR_S}
        r = c.post("/v1/payment-sessions", headers=auth(SERVICE_TOKEN), json=body)
        assert r.status_code == 201, r.text
        body["expires_in_seconds"] = YEAR_S + 1
        r = c.post("/v1/payment-sessions", headers=auth(SERVICE_TOKEN), json=body)
        assert (r.status_code, r.json()["error"]["field"]) == (422, "expires_in_seconds"), r.text
    engine.db.dispose()


def test_a_year_of_claim_lease_keeps_the_worker_sweeping(db_url):
    engine = _engine(db_url, claim_lease_seconds=YEAR_S)
    sweep(engine, "worker-1", 10)  # a longer lease raised OverflowError: date value out of range
    engine.db.dispose()
