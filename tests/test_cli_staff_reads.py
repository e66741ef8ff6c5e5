"""The staff reads the runbook uses, through the operator CLI against a real API server
(issue 14, items 8 and 9): entitlements, receipts, approvals with a treasury change under the
two-person rule, the audit trail by subject and incident, and a paused rail shown on session
and proof reads (owner and staff)."""

from __future__ import annotations

import json

import httpx
from sqlalchemy import select
from typer.testing import CliRunner

from tests import test_cli_ops
from tests.conftest import SERVICE_TOKEN, STAFF_TOKEN, STAFF_TOKEN_2, auth
from tests.live_server import closed_port
from verifier.cli.main import app as cli_app
from verifier.storage.models import Entitlement

world = test_cli_ops.world  # the fixture: a served engine, one proof ready and one blocked
run, jrun = test_cli_ops.run, test_cli_ops.jrun
CTX = ["--incident-id", "INC-88", "--operator-reason", "staff reads test"]


def apply_ready(world) -> dict:
    return jrun(world, "apply-rail-proof", world["ready"], "--confirm", *CTX)


def test_entitlements_list_and_inspect(world):
    rows = jrun(world, "list-entitlements", "--owner-id", "alice")
    assert len(rows) == 2 and {r["status"] for r in rows} == {"pending"}  # one per session
    applied = apply_ready(world)
    rows = jrun(world, "list-entitlements", "--owner-id", "alice")
    (active,) = [r for r in rows if r["status"] == "active"]
    assert active["id"] == applied["entitlement_id"]
    assert active["receipt_id"] == applied["receipt_id"]
    assert len(jrun(world, "list-entitlements", "--owner-id", "alice", "--limit", "1")) == 1
    assert jrun(world, "list-entitlements", "--owner-id", "nobody") == []

    r = run(world, "list-entitlements", "--owner-id", "alice")
    assert r.exit_code == 0 and active["id"] in r.stdout and "…" not in r.stdout  # whole ids
    r = run(world, "list-entitlements", "--owner-id", "nobody")
    assert r.exit_code == 0 and "(none)" in r.stdout
    r = run(world, "list-entitlements")
    assert r.exit_code == 2 and "--owner-id" in r.output

    one = jrun(world, "inspect-entitlement", active["id"])
    assert one["status"] == "active" and one["created_at"]
    assert one["receipt"]["id"] == applied["receipt_id"]
    assert one["receipt"]["proof_id"] == world["ready"] and one["receipt"]["amount"] == "1500000"
    pending = next(r for r in rows if r["status"] == "pending")
    assert jrun(world, "inspect-entitlement", pending["id"])["receipt"] is None
    r = run(world, "inspect-entitlement", active["id"])
    assert r.exit_code == 0 and applied["receipt_id"] in r.stdout
    r = run(world, "inspect-entitlement", "ent_missing")
    assert r.exit_code == 1 and "entitlement_not_found" in r.stderr

    # The HTTP read names the field it needs.
    resp = httpx.get(world["url"] + "/v1/admin/entitlements", headers=auth(STAFF_TOKEN))
    assert resp.status_code == 422 and resp.json()["error"]["field"] == "owner_id"
    # A service token is no staff token.
    resp = httpx.get(
        world["url"] + "/v1/admin/entitlements",
        params={"owner_id": "alice"},
        headers=auth(SERVICE_TOKEN),
    )
    assert resp.status_code in (401, 403)


def test_receipts_list(world):
    assert jrun(world, "list-receipts") == []
    applied = apply_ready(world)
    (rec,) = jrun(world, "list-receipts")
    assert rec["id"] == applied["receipt_id"] and rec["rail_id"] == "fake_live"
    assert rec["owner_id"] == "alice" and rec["created_by"] == "ops1"
    assert [r["id"] for r in jrun(world, "list-receipts", "--owner-id", "alice")] == [rec["id"]]
    assert jrun(world, "list-receipts", "--owner-id", "bob") == []
    assert [r["id"] for r in jrun(world, "list-receipts", "--rail-id", "fake_live")] == [rec["id"]]
    assert jrun(world, "list-receipts", "--rail-id", "fake_gated") == []
    assert len(jrun(world, "list-receipts", "--limit", "1")) == 1
    r = run(world, "list-receipts", "--owner-id", "alice")
    assert r.exit_code == 0 and rec["id"] in r.stdout and rec["proof_id"] in r.stdout
    r = run(world, "list-receipts", "--limit", "0")
    assert r.exit_code == 2


def _as(world, token: str, *args: str):
    env = {"RAILPROOF_API_BASE_URL": world["url"], "RAILPROOF_STAFF_TOKEN": token}
    return CliRunner().invoke(cli_app, list(args), env=env)


def test_treasury_change_goes_through_two_person_approval(world):
    # Refused before anything is sent without the operator context.
    r = run(world, "request-treasury-change", "--rail-id", "fake_live", "--treasury", "fanew1")
    assert r.exit_code == 2 and "--incident-id" in r.stderr
    assert jrun(world, "list-approvals") == []

    # A malformed address: refused by the API naming the field.
    r = run(world, "request-treasury-change", "--rail-id", "fake_live", "--treasury", "bad!", *CTX)
    assert r.exit_code == 1 and "invalid_treasury" in r.stderr

    req = jrun(
        world, "request-treasury-change", "--rail-id", "fake_live", "--treasury", "fanew1", *CTX
    )
    assert req["status"] == "pending"
    (pending,) = jrun(world, "list-approvals", "--status", "pending")
    assert pending["approval_id"] == req["approval_id"]
    assert (pending["kind"], pending["value"], pending["requested_by"]) == (
        "treasury",
        "fanew1",
        "ops1",
    )
    assert pending["incident_id"] == "INC-88"

    # The requester cannot approve it; the treasury has not moved.
    r = run(world, "approve-rail-change", req["approval_id"], "--confirm", *CTX)
    assert r.exit_code == 1 and "cannot approve their own request" in r.stderr
    rails = httpx.get(world["url"] + "/v1/admin/rails", headers=auth(STAFF_TOKEN)).json()
    assert next(x for x in rails if x["rail_id"] == "fake_live")["treasury"] != "fanew1"

    r = _as(world, STAFF_TOKEN_2, "approve-rail-change", req["approval_id"], "--confirm", *CTX)
    assert r.exit_code == 0, r.output
    rails = httpx.get(world["url"] + "/v1/admin/rails", headers=auth(STAFF_TOKEN)).json()
    assert next(x for x in rails if x["rail_id"] == "fake_live")["treasury"] == "fanew1"
    assert jrun(world, "list-approvals", "--status", "pending") == []
    (done,) = jrun(world, "list-approvals", "--status", "approved")
    assert done["approved_by"] == "ops2"

    # A second request, rejected by the other staff member.
    req2 = jrun(
        world, "request-treasury-change", "--rail-id", "fake_live", "--treasury", "fanew2", *CTX
    )
    r = _as(world, STAFF_TOKEN_2, "reject-rail-change", req2["approval_id"], "--confirm", *CTX)
    assert r.exit_code == 0, r.output
    assert [a["approval_id"] for a in jrun(world, "list-approvals", "--status", "rejected")] == [
        req2["approval_id"]
    ]
    assert len(jrun(world, "list-approvals")) == 2
    assert len(jrun(world, "list-approvals", "--limit", "1")) == 1
    r = run(world, "list-approvals", "--status", "approved")
    assert r.exit_code == 0 and req["approval_id"] in r.stdout

    r = run(world, "list-approvals", "--status", "bogus")
    assert r.exit_code == 1 and "invalid_status" in r.stderr
    resp = httpx.get(
        world["url"] + "/v1/admin/approvals", params={"status": "x"}, headers=auth(STAFF_TOKEN)
    )
    assert resp.status_code == 422 and resp.json()["error"]["field"] == "status"


def test_audit_events_by_subject_and_incident(world):
    apply_ready(world)
    jrun(
        world,
        "pause-rail",
        "fake_gated",
        "--confirm",
        "--incident-id",
        "INC-99",
        "--operator-reason",
        "other incident",
    )
    by_subject = jrun(world, "list-audit-events", "--subject-id", world["ready"])
    assert by_subject and {e["subject_id"] for e in by_subject} == {world["ready"]}
    by_incident = jrun(world, "list-audit-events", "--incident-id", "INC-99")
    assert [e["action"] for e in by_incident] == ["rail.paused"]
    assert by_incident[0]["subject_id"] == "fake_gated" and by_incident[0]["actor"] == "ops1"
    inc88 = jrun(world, "list-audit-events", "--incident-id", "INC-88")
    assert inc88 and all(e["incident_id"] == "INC-88" for e in inc88)
    assert world["ready"] in {e["subject_id"] for e in inc88}
    both = jrun(world, "list-audit-events", "--subject-id", "fake_gated", "--incident-id", "INC-88")
    assert both == []
    everything = jrun(world, "list-audit-events")
    assert [e["id"] for e in everything] == sorted((e["id"] for e in everything), reverse=True)
    assert len(jrun(world, "list-audit-events", "--limit", "2")) == 2
    r = run(world, "list-audit-events", "--incident-id", "INC-99")
    assert r.exit_code == 0 and "rail.paused" in r.stdout and "fake_gated" in r.stdout


def test_paused_rail_shows_on_session_and_proof_reads(world):
    e = world["engine"]
    with e.db.tx() as s:
        session_id = s.scalar(select(Entitlement.session_id).where(Entitlement.owner_id == "alice"))
    proof_id = world["ready"]
    proof = jrun(world, "inspect-rail-proof", proof_id)
    assert proof["rail_id"] == "fake_live"

    def reads() -> list[bool]:
        url = world["url"]
        owner_proof = httpx.get(f"{url}/v1/proofs/{proof_id}", headers=auth()).json()
        staff_proof = jrun(world, "inspect-rail-proof", proof_id)
        listed = jrun(world, "list-rail-proofs", "--rail-id", "fake_live")
        sessions = [
            httpx.get(f"{url}/v1/payment-sessions/{sid}", headers=auth()).json()
            for sid in (owner_proof["session_id"], session_id)
        ]
        return [
            owner_proof["rail_paused"],
            staff_proof["rail_paused"],
            *[p["rail_paused"] for p in listed],
            *[sess["rail_paused"] for sess in sessions if sess["rail_id"] == "fake_live"],
        ]

    assert set(reads()) == {False}
    jrun(world, "pause-rail", "fake_live", "--confirm", *CTX)
    assert set(reads()) == {True}
    # Another rail's proof is not shown as paused.
    assert jrun(world, "inspect-rail-proof", world["blocked"])["rail_paused"] is False
    r = run(world, "inspect-rail-proof", proof_id)
    assert r.exit_code == 0 and "rail_paused" in r.stdout
    jrun(world, "resume-rail", "fake_live", "--confirm", *CTX)
    assert set(reads()) == {False}
    assert json.dumps(reads())  # plain booleans


NEW_LISTS = {  # the new list commands, with the arguments they need
    "list-entitlements": ["--owner-id", "alice"],
    "list-receipts": [],
    "list-approvals": [],
    "list-audit-events": [],
}


def test_new_commands_take_the_global_options_and_limit(world):
    for command in [*NEW_LISTS, "inspect-entitlement", "request-treasury-change"]:
        r = CliRunner().invoke(cli_app, [command, "--help"], env={"COLUMNS": "250"})
        assert r.exit_code == 0, command
        assert "--base-url" in r.stdout and "--staff-token-file" in r.stdout, command
    for command, args in NEW_LISTS.items():
        assert len(jrun(world, command, *args, "--limit", "1")) <= 1, command
        assert run(world, command, *args, "--limit", "0").exit_code == 2, command


def test_state_changing_commands_refuse_before_sending():
    # No server at all: a refusal that names the flags proves nothing was sent.
    env = {
        "RAILPROOF_API_BASE_URL": f"http://127.0.0.1:{closed_port()}",
        "RAILPROOF_STAFF_TOKEN": STAFF_TOKEN,
    }
    for args in (
        ["request-treasury-change", "--rail-id", "fake_live", "--treasury", "fanew1"],
        ["assurance-repair", "verified_without_receipt:x", "--confirm"],
    ):
        r = CliRunner().invoke(cli_app, args, env=env)
        assert r.exit_code == 2, args
        assert "--incident-id" in r.stderr and "--operator-reason" in r.stderr, args
        assert "nothing was sent" in r.stderr and "cannot reach" not in r.stderr, args
