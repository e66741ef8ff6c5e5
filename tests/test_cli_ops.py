"""The operator CLI against a real API server (uvicorn on 127.0.0.1, a free port): tables and
--json, exit codes 0 done / 1 refused / 2 usage or connection, and operator context stored."""

from __future__ import annotations

import json
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from tests.conftest import STAFF_TOKEN, auth
from tests.helpers import cassette_engine
from tests.live_server import LiveServer, closed_port
from tests.test_gate import paid_proof
from verifier.cli.main import app as cli_app
from verifier.core import timeutil
from verifier.http.api import create_app
from verifier.storage.models import Entitlement, IdempotencyClaim


@pytest.fixture
def world(db_url, chain):
    """A served engine holding one proof ready to apply (live rail) and one blocked (gated)."""
    e = cassette_engine(db_url)
    e.chains.set_transport("fakenet", chain)
    _, ready = paid_proof(e, chain, rail_id="fake_live")
    _, blocked = paid_proof(e, chain, rail_id="fake_gated")
    with LiveServer(create_app(e)) as srv:
        yield {"engine": e, "url": srv.url, "ready": ready["id"], "blocked": blocked["id"]}
    e.db.dispose()


def run(world, *args, token: str | None = STAFF_TOKEN, base: str | None = None):
    env = {
        "RAILPROOF_API_BASE_URL": base or world["url"],
        "RAILPROOF_STAFF_TOKEN": token or "",
        "COLUMNS": "200",
    }
    return CliRunner().invoke(cli_app, list(args), env=env)


def jrun(world, *args):
    r = run(world, *args, "--json")
    assert r.exit_code == 0, (r.exit_code, r.output)
    return json.loads(r.stdout)


def audit(world, subject_id: str) -> list[dict]:
    return httpx.get(
        world["url"] + "/v1/admin/audit",
        params={"subject_id": subject_id},
        headers=auth(STAFF_TOKEN),
    ).json()


def test_read_commands_print_tables_and_json(world):
    r = run(world, "rail-production-readiness")
    assert r.exit_code == 0, r.output
    assert "rail readiness" in r.stdout and "solana_usdc" in r.stdout and "review_only" in r.stdout
    ready = {x["rail_id"]: x for x in jrun(world, "rail-production-readiness")}
    assert (
        ready["solana_usdc"]["stage"] == "live"
        and ready["tron_usdt"]["production_enabled"] is False
    )

    contracts = jrun(world, "list-proof-contracts", "--rail-id", "solana_usdc")
    assert [c["rail_id"] for c in contracts] == ["solana_usdc"]
    assert len(jrun(world, "list-proof-contracts")) > 1
    assert "proof contracts" in run(world, "list-proof-contracts").stdout
    r = run(world, "list-proof-contracts", "--rail-id", "no_such_rail")
    assert r.exit_code == 1 and "rail_not_registered" in r.stderr

    rows = jrun(
        world, "list-rail-proofs", "--rail-id", "fake_gated", "--status", "verified", "--limit", "5"
    )
    assert [p["id"] for p in rows] == [world["blocked"]]
    assert jrun(world, "list-rail-proofs", "--status", "pending") == []
    assert len(jrun(world, "list-rail-proofs", "--limit", "1")) == 1
    r = run(world, "list-rail-proofs")
    assert r.exit_code == 0 and world["ready"] in r.stdout and world["blocked"] in r.stdout
    assert run(world, "list-rail-proofs", "--limit", "0").exit_code == 2  # usage

    one = jrun(world, "inspect-rail-proof", world["ready"])
    assert (one["id"], one["status"], one["rail_id"]) == (world["ready"], "verified", "fake_live")
    r = run(world, "inspect-rail-proof", world["ready"])
    assert r.exit_code == 0 and "fingerprint" in r.stdout and one["fingerprint"] in r.stdout
    r = run(world, "inspect-rail-proof", "nope")
    assert r.exit_code == 1 and "proof_not_found" in r.stderr

    att = jrun(world, "list-rail-proof-verification-attempts", world["ready"])
    assert [(a["status"], a["observed"]["amount"]) for a in att] == [("verified", "1500000")]
    assert (
        "verification attempts"
        in run(world, "list-rail-proof-verification-attempts", world["ready"]).stdout
    )
    ev = jrun(world, "list-rail-proof-settlement-evidence", world["ready"])
    assert [(x["finality"], x["is_final"]) for x in ev] == [("finalized", True)]
    assert (
        "settlement evidence"
        in run(world, "list-rail-proof-settlement-evidence", world["ready"]).stdout
    )


def test_dry_run_exit_codes_and_operator_context(world):
    # The report was produced: exit 0 whatever it says; --fail-on-blockers exits 1 on one.
    r = run(world, "dry-run-rail-proof-apply", world["blocked"])
    assert r.exit_code == 0, r.output
    assert "would_apply=False" in r.stdout and "live_apply_enabled" in r.stdout and "NO" in r.stdout
    assert (
        run(world, "dry-run-rail-proof-apply", world["blocked"], "--fail-on-blockers").exit_code
        == 1
    )
    r = run(world, "dry-run-rail-proof-apply", world["blocked"], "--json")
    assert r.exit_code == 0
    rep = json.loads(r.stdout)
    assert {"live_apply_enabled", "rail_production_enabled", "rail_allowlisted"} <= {
        b["code"] for b in rep["blockers"]
    }

    r = run(
        world,
        "dry-run-rail-proof-apply",
        world["ready"],
        "--json",
        "--incident-id",
        "INC-11",
        "--operator-reason",
        "pre-apply check",
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["would_apply"] is True
    dry = [a for a in audit(world, world["ready"]) if a["action"] == "proof.dry_run_apply"]
    assert (dry[0]["incident_id"], dry[0]["reason"], dry[0]["actor"]) == (
        "INC-11",
        "pre-apply check",
        "ops1",
    )


def test_apply_and_revoke_need_confirm_and_store_context(world):
    e, pid = world["engine"], world["ready"]
    r = run(world, "apply-rail-proof", pid)
    assert r.exit_code == 2 and "--confirm" in r.stderr
    r = run(
        world,
        "apply-rail-proof",
        world["blocked"],
        "--confirm",
        "--incident-id",
        "INC-12",
        "--operator-reason",
        "check",
    )
    assert r.exit_code == 1 and "apply_blocked" in r.stderr and "rail_allowlisted" in r.stdout

    r = run(
        world,
        "apply-rail-proof",
        pid,
        "--confirm",
        "--json",
        "--incident-id",
        "INC-12",
        "--operator-reason",
        "customer paid",
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["applied"] is True
    applied = [a for a in audit(world, pid) if a["action"] == "proof.applied"]
    assert (applied[0]["incident_id"], applied[0]["reason"]) == ("INC-12", "customer paid")
    again = run(
        world,
        "apply-rail-proof",
        pid,
        "--confirm",
        "--json",
        "--incident-id",
        "INC-12",
        "--operator-reason",
        "again",
    )
    assert again.exit_code == 0 and json.loads(again.stdout)["already_applied"] is True

    ent = out["entitlement_id"]
    assert run(world, "revoke-entitlement", ent).exit_code == 2
    r = run(world, "revoke-entitlement", ent, "--confirm")  # refused before any request
    assert r.exit_code == 2 and "--incident-id" in r.stderr and "--operator-reason" in r.stderr
    r = run(
        world,
        "revoke-entitlement",
        ent,
        "--confirm",
        "--incident-id",
        "INC-13",
        "--operator-reason",
        "fraud report",
    )
    assert r.exit_code == 0, r.output
    assert "revoked" in r.stdout
    with e.db.tx() as s:
        assert s.get(Entitlement, ent).status == "revoked"
    rev = [a for a in audit(world, ent) if a["action"] == "entitlement.revoked"]
    assert (rev[0]["incident_id"], rev[0]["reason"], rev[0]["actor"]) == (
        "INC-13",
        "fraud report",
        "ops1",
    )


def test_pause_and_resume(world):
    assert run(world, "pause-rail", "fake_live").exit_code == 2
    r = run(world, "pause-rail", "fake_live", "--confirm")  # refused before any request
    assert r.exit_code == 2 and "--incident-id" in r.stderr and "--operator-reason" in r.stderr
    r = run(
        world,
        "pause-rail",
        "fake_live",
        "--confirm",
        "--json",
        "--incident-id",
        "INC-14",
        "--operator-reason",
        "rpc provider incident",
    )
    assert r.exit_code == 0 and json.loads(r.stdout) == {
        "rail_id": "fake_live",
        "paused": True,
        "changed": True,
    }
    r = run(world, "dry-run-rail-proof-apply", world["ready"], "--json")
    assert r.exit_code == 0
    assert (
        run(world, "dry-run-rail-proof-apply", world["ready"], "--fail-on-blockers").exit_code == 1
    )
    assert [b["code"] for b in json.loads(r.stdout)["blockers"]] == ["rail_not_paused"]
    assert (
        run(
            world,
            "pause-rail",
            "no_such_rail",
            "--confirm",
            "--incident-id",
            "I",
            "--operator-reason",
            "r",
        ).exit_code
        == 1
    )

    r = run(
        world,
        "resume-rail",
        "fake_live",
        "--confirm",
        "--incident-id",
        "INC-14",
        "--operator-reason",
        "provider back",
    )
    assert r.exit_code == 0 and "False" in r.stdout
    assert (
        run(world, "dry-run-rail-proof-apply", world["ready"], "--fail-on-blockers").exit_code == 0
    )
    events = [(a["action"], a["incident_id"], a["reason"]) for a in audit(world, "fake_live")]
    assert events == [
        ("rail.resumed", "INC-14", "provider back"),
        ("rail.paused", "INC-14", "rpc provider incident"),
    ]


def test_stuck_idempotency_claims(world):
    e = world["engine"]
    with e.db.tx() as s:
        s.add(
            IdempotencyClaim(
                principal="svc:alice",
                endpoint="POST /v1/proofs",
                key="k-stuck",
                request_hash="0" * 64,
                status="in_progress",
                created_at=timeutil.process_now() - timedelta(minutes=20),
            )
        )
        s.add(
            IdempotencyClaim(
                principal="svc:alice",
                endpoint="POST /v1/proofs",
                key="k-fresh",
                request_hash="1" * 64,
                status="in_progress",
                created_at=timeutil.process_now() - timedelta(seconds=30),
            )
        )
    assert [c["key"] for c in jrun(world, "list-stuck-idempotency-claims")] == ["k-stuck"]
    keys = [
        c["key"] for c in jrun(world, "list-stuck-idempotency-claims", "--min-age-seconds", "10")
    ]
    assert keys == ["k-stuck", "k-fresh"]
    assert jrun(world, "list-stuck-idempotency-claims", "--min-age-seconds", "3600") == []
    r = run(world, "list-stuck-idempotency-claims", "--min-age-seconds", "3600")
    assert r.exit_code == 0 and "(none)" in r.stdout
    r = run(world, "list-stuck-idempotency-claims")
    assert r.exit_code == 0 and "k-stuck" in r.stdout
    with e.db.tx() as s:  # listing never deletes
        assert len(s.scalars(select(IdempotencyClaim)).all()) == 2


def test_connection_and_token_errors_exit_2(world):
    r = run(world, "rail-production-readiness", base=f"http://127.0.0.1:{closed_port()}")
    assert r.exit_code == 2 and "cannot reach the API" in r.stderr
    r = run(world, "rail-production-readiness", token=None)
    assert r.exit_code == 2 and "RAILPROOF_STAFF_TOKEN" in r.stderr
    r = run(world, "rail-production-readiness", token="not-a-staff-token")
    assert r.exit_code == 2 and "401" in r.stderr
    # A service token is not a staff token.
    r = run(world, "list-rail-proofs", token="svc-token-alice")
    assert r.exit_code == 2


@pytest.mark.parametrize(
    "crafted",
    [
        "x/../../rails/fake_live/pause?",
        "../../rails/fake_live/pause",
        "..",
        "%2e%2e",
        "a?b#c",
        "prf_x/../../../approvals/1/approve",
    ],
)
def test_an_id_is_one_path_segment_never_another_route(world, crafted):
    """SECURITY: an id pasted from a ticket reaches its own route as an id that does not
    exist; it never pauses a rail (or does anything else) under the operator's name."""
    from verifier.cli.ops import api_path

    r = run(
        world,
        "apply-rail-proof",
        crafted,
        "--confirm",
        "--json",
        "--incident-id",
        "INC-20",
        "--operator-reason",
        "from a ticket",
    )
    # The proof route's 404, or no route's (the server decodes an escaped slash in a path).
    assert r.exit_code == 1 and '_found"' in r.output, r.output
    rails = httpx.get(world["url"] + "/v1/admin/rails/readiness", headers=auth(STAFF_TOKEN))
    assert rails.status_code == 200
    assert not any(a["action"] == "rail.paused" for a in audit(world, "fake_live"))
    assert all(not row.get("paused") for row in rails.json()), rails.json()
    assert api_path("/v1/admin/proofs/{}/apply", crafted).count("/") == 5


def test_an_empty_id_is_refused_before_any_request(world):
    r = run(world, "inspect-rail-proof", "", "--base-url", "http://127.0.0.1:9")
    assert r.exit_code == 2 and "empty" in r.output
