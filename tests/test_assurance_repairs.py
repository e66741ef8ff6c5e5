"""Assurance levels, window, the production-rail checks and the safe repairs (issue 14):

- every issue has an id, a severity of critical/error/warning/info and says if it is
  repairable; the summary's status is the worst severity found (tests/test_assurance.py);
- `period_days` (and `railproof assurance --period-days`) limits the rows checked;
- on a live chain a production rail whose network has no RPC URL is critical (the fact
  readiness calls `live_verifier_configured`);
- POST /v1/admin/assurance/repairs repairs a missing receipt through the apply gate, a lapsed
  worker lease and a stuck idempotency claim, each audited with incident id, reason and
  staff member in the transaction that acts; a repair finds any standing issue by id, also
  one listed only in a narrow window; an issue resolved while the repair ran is 409 and
  writes nothing; bad input is a 4xx naming the field; `railproof assurance-repair` over a
  real socket.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from tests.conftest import STAFF_TOKEN, auth
from tests.helpers import advance
from tests.live_server import LiveServer
from tests.test_assurance import paid
from verifier.cli.main import app as cli_app
from verifier.core import timeutil
from verifier.core.errors import Conflict
from verifier.services import assurance, audit, gate, proofs
from verifier.services.assurance import CHECKS, Issue
from verifier.services.audit import Operator
from verifier.storage.models import (
    AuditEvent,
    IdempotencyClaim,
    Proof,
    Receipt,
)

OP = {"incident_id": "INC-31", "operator_reason": "assurance repair test"}
STAFF = auth(STAFF_TOKEN)


def report(client, **params) -> dict:
    r = client.get("/v1/admin/assurance", headers=STAFF, params=params)
    assert r.status_code == 200, r.text
    return r.json()


def by_category(doc: dict, category: str) -> list[dict]:
    return [i for i in doc["issues"] if i["category"] == category]


def repair(client, issue_id: str, body: dict | None = None):
    return client.post(
        "/v1/admin/assurance/repairs",
        headers=STAFF,
        json={"issue_id": issue_id, "confirm": True, **OP, **(body or {})},
    )


def repaired_events(engine) -> list[AuditEvent]:
    with engine.db.tx() as s:
        return list(
            s.scalars(select(AuditEvent).where(AuditEvent.action == "assurance.repaired")).all()
        )


def test_checks_are_a_list_of_functions():
    # New invariants are appended to CHECKS; each is a function of the report's scope.
    assert len(CHECKS) >= 10 and all(callable(c) for c in CHECKS)
    names = [c.__name__ for c in CHECKS]
    assert len(set(names)) == len(names)


def test_a_new_check_takes_part_and_the_status_is_the_worst_severity(client, monkeypatch):
    found: list[Issue] = []
    monkeypatch.setattr(assurance, "CHECKS", [*assurance.CHECKS, lambda sc: list(found)])
    assert report(client)["summary"]["status"] == "ok"
    found.append(Issue("example_info", "info", "rail x", "nothing to do", "x"))
    doc = report(client)
    assert (doc["summary"]["status"], doc["summary"]["score"]) == ("ok", 99)
    assert doc["issues"][0]["id"] == "example_info:x"
    found.append(Issue("example_error", "error", "rail y", "act", "y"))
    assert (report(client)["summary"]["status"], report(client)["summary"]["score"]) == (
        "error",
        79,
    )
    found.append(Issue("example_warning", "warning", "rail z", "look", "z"))
    assert report(client)["summary"]["status"] == "error"  # the worst one decides
    found.append(Issue("example_critical", "critical", "rail w", "stop", "w"))
    doc = report(client)
    assert (doc["summary"]["status"], doc["summary"]["score"]) == ("critical", 100 - 71)
    assert [i["severity"] for i in doc["issues"]] == ["info", "error", "warning", "critical"]


def test_production_rail_without_live_verifier_on_a_live_chain_is_critical(client, engine):
    # Cassette deployments verify nothing live; readiness says so per rail, not assurance.
    assert by_category(report(client), "production_rail_not_live_verified") == []
    engine.settings.chain = "live"  # no RAILPROOF_RPC_FAKENET
    readiness = client.get("/v1/admin/rails/readiness", headers=STAFF).json()
    live_rail = next(r for r in readiness if r["rail_id"] == "fake_live")
    assert live_rail["production_enabled"] and not live_rail["live_verifier_configured"]
    doc = report(client)
    found = by_category(doc, "production_rail_not_live_verified")
    # Exactly the rails readiness shows in production without a live verifier.
    assert sorted(i["subject"] for i in found) == sorted(
        f"rail {r['rail_id']}"
        for r in readiness
        if r["production_enabled"] and not r["live_verifier_configured"]
    )
    (issue,) = [i for i in found if i["subject"] == "rail fake_live"]
    assert issue["severity"] == "critical" and "RAILPROOF_RPC_FAKENET" in issue["repair"]
    assert doc["summary"]["status"] == "critical"
    assert "rail fake_gated" not in {i["subject"] for i in found}  # not in production
    assert issue["id"] == "production_rail_not_live_verified:fake_live"
    assert issue["repairable"] is False
    # No automatic repair: a 409 naming the field, and nothing changes.
    r = repair(client, issue["id"])
    assert r.status_code == 409, r.text
    assert (r.json()["error"]["code"], r.json()["error"]["field"]) == (
        "issue_not_repairable",
        "issue_id",
    )
    assert repaired_events(engine) == []

    engine.settings.env = {"RAILPROOF_RPC_FAKENET": "http://127.0.0.1:9"}  # one fact for both
    readiness = client.get("/v1/admin/rails/readiness", headers=STAFF).json()
    assert next(r for r in readiness if r["rail_id"] == "fake_live")["live_verifier_configured"]
    subjects = {
        i["subject"] for i in by_category(report(client), "production_rail_not_live_verified")
    }
    assert "rail fake_live" not in subjects


def test_period_days_window(client, engine, chain):
    sess = client.post(
        "/v1/payment-sessions",
        headers=auth(),
        json={
            "owner_id": "alice",
            "rail_id": "fake_live",
            "access_product_id": "pro",
            "amount": 1500000,
            "recipient": "fatreasury",
        },
    ).json()
    p = client.post(
        "/v1/proofs", headers=auth(), json={"session_id": sess["id"], "proof": "fx0000aa01"}
    ).json()
    assert p["status"] == "pending"
    advance(engine, 3 * 3600)
    doc = report(client, period_days=1)
    assert [i["id"] for i in doc["issues"]] == [f"pending_past_sla:{p['id']}"]
    assert doc["summary"]["period_days"] == 1 and doc["summary"]["since"]
    advance(engine, 2 * 86400)  # the proof is now older than the window
    assert report(client, period_days=1)["issues"] == []
    assert [i["id"] for i in report(client, period_days=3)["issues"]] == [
        f"pending_past_sla:{p['id']}"
    ]
    assert [i["category"] for i in report(client)["issues"]] == ["pending_past_sla"]
    for bad in ("0", "-1", "x", "100000"):
        r = client.get("/v1/admin/assurance", headers=STAFF, params={"period_days": bad})
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["error"]["field"] == "period_days"


def test_repair_missing_receipt_through_the_apply_gate(client, engine, chain):
    p = paid(client, chain, "fx0000aa02", apply=False)
    advance(engine, 2 * 3600)
    (issue,) = report(client)["issues"]
    assert issue["id"] == f"verified_without_receipt:{p['id']}" and issue["repairable"]

    # Bad input: a 4xx naming the field, and nothing changes.
    for body, status, code, field in [
        ({"confirm": False}, 422, "confirmation_required", "confirm"),
        ({"confirm": "yes"}, 422, "invalid_request", "confirm"),
        ({"incident_id": None}, 422, "operator_context_required", "incident_id"),
        ({"operator_reason": " "}, 422, "operator_context_required", "operator_reason"),
        ({"issue_id": ""}, 422, "invalid_request", "issue_id"),
        (
            {"issue_id": "verified_without_receipt:nope"},
            404,
            "assurance_issue_not_found",
            "issue_id",
        ),
    ]:
        r = repair(client, issue["id"], body)
        assert r.status_code == status, (body, r.text)
        assert (r.json()["error"]["code"], r.json()["error"].get("field")) == (code, field), body
    with engine.db.tx() as s:
        assert s.scalar(select(Receipt).where(Receipt.proof_id == p["id"])) is None
    assert repaired_events(engine) == []

    r = repair(client, issue["id"])
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["issue_id"] == issue["id"] and out["action"] == "applied through the apply gate"
    with engine.db.tx() as s:
        receipt = s.scalar(select(Receipt).where(Receipt.proof_id == p["id"]))
        assert receipt is not None and receipt.created_by == "ops1"
        assert out["result"]["receipt_id"] == receipt.id
        applied = s.scalars(
            select(AuditEvent).where(
                AuditEvent.subject_id == p["id"], AuditEvent.action.like("%appl%")
            )
        ).all()
        assert applied and all(e.incident_id == "INC-31" for e in applied)  # the gate's own
    (ev,) = repaired_events(engine)
    assert (ev.actor, ev.incident_id, ev.reason) == ("ops1", "INC-31", "assurance repair test")
    assert ev.subject_id == issue["id"] and ev.data["category"] == "verified_without_receipt"
    assert report(client)["issues"] == []
    # Repaired: the issue no longer stands, so a second repair finds nothing.
    r = repair(client, issue["id"])
    assert r.status_code == 404 and r.json()["error"]["code"] == "assurance_issue_not_found"


def test_repair_blocked_by_the_gate_changes_nothing(client, engine, chain):
    p = paid(client, chain, "fx0000aa03", apply=False)
    advance(engine, 2 * 3600)
    (issue,) = report(client)["issues"]
    r = client.post("/v1/admin/rails/fake_live/pause", headers=STAFF, json={"confirm": True, **OP})
    assert r.status_code == 200, r.text
    r = repair(client, issue["id"])
    assert r.status_code == 409 and r.json()["error"]["code"] == "apply_blocked", r.text
    with engine.db.tx() as s:
        assert s.scalar(select(Receipt).where(Receipt.proof_id == p["id"])) is None
    assert repaired_events(engine) == []


def _unapplied_issue(client, engine, chain, tx: str) -> tuple[dict, str]:
    p = paid(client, chain, tx, apply=False)
    advance(engine, 2 * 3600)
    return p, f"verified_without_receipt:{p['id']}"


def _receipts(engine, pid: str) -> list[str]:
    with engine.db.tx() as s:
        return list(s.scalars(select(Receipt.id).where(Receipt.proof_id == pid)).all())


def test_an_issue_listed_in_a_narrow_window_is_repaired(client, engine, chain, monkeypatch):
    # The whole history lists the oldest findings first (one here; 100 in production): a
    # newer one is listed with --period-days, and the repair finds it as listed there.
    monkeypatch.setattr(assurance, "LIMIT", 1)
    old = paid(client, chain, "fx0000ab01", apply=False)
    advance(engine, 3 * 86400)
    new = paid(client, chain, "fx0000ab02", apply=False)
    advance(engine, 2 * 3600)
    whole = by_category(report(client), "verified_without_receipt")
    assert [i["id"] for i in whole] == [
        f"verified_without_receipt:{old['id']}",
        "verified_without_receipt:more",
    ]
    (issue,) = by_category(report(client, period_days=1), "verified_without_receipt")
    assert issue["id"] == f"verified_without_receipt:{new['id']}" and issue["repairable"]
    # The `more` issue stands for findings, not one of them: no repair by that id.
    r = repair(client, "verified_without_receipt:more")
    assert r.status_code == 409 and r.json()["error"]["code"] == "issue_not_repairable"

    r = repair(client, issue["id"])
    assert r.status_code == 200, r.text
    assert _receipts(engine, new["id"]) == [r.json()["result"]["receipt_id"]]
    assert _receipts(engine, old["id"]) == []


def test_an_issue_resolved_while_the_repair_ran_changes_nothing(client, engine, chain, monkeypatch):
    p, issue_id = _unapplied_issue(client, engine, chain, "fx0000ac01")
    apply = gate.apply

    def worker_applies_first(e, pid, *a, **kw):
        # The worker's apply sweep credits the proof after the repair found the issue.
        apply(e, pid, Operator("worker"), gate.Via.auto)
        return apply(e, pid, *a, **kw)

    monkeypatch.setattr(gate, "apply", worker_applies_first)
    r = repair(client, issue_id)
    assert r.status_code == 409 and r.json()["error"]["code"] == "issue_resolved", r.text
    assert len(_receipts(engine, p["id"])) == 1  # the worker's
    assert repaired_events(engine) == []  # someone else's receipt is not this repair's


def test_a_repairs_receipt_and_its_audit_row_commit_together(client, engine, chain, monkeypatch):
    p, issue_id = _unapplied_issue(client, engine, chain, "fx0000ac02")
    append = audit.append

    def failing_repaired_row(s, now, op, action, *a, **kw):
        if action == "assurance.repaired":
            raise RuntimeError("the audit append failed (lock timeout, lost connection)")
        return append(s, now, op, action, *a, **kw)

    monkeypatch.setattr(audit, "append", failing_repaired_row)
    r = repair(client, issue_id)
    assert r.status_code >= 500
    assert _receipts(engine, p["id"]) == []  # no receipt without its assurance.repaired row
    monkeypatch.setattr(audit, "append", append)
    r = repair(client, issue_id)  # the issue still stands: the retry repairs it
    assert r.status_code == 200, r.text
    assert len(_receipts(engine, p["id"])) == 1 and len(repaired_events(engine)) == 1


@pytest.mark.postgres
def test_two_staff_repairing_one_issue_at_once_leave_one_repair(
    client, engine, chain, db_url, monkeypatch
):
    if not db_url.startswith("postgresql"):
        pytest.skip("real concurrency: PostgreSQL")
    p, issue_id = _unapplied_issue(client, engine, chain, "fx0000ac03")
    apply = gate.apply
    both_found = threading.Barrier(2, timeout=30)

    def once_both_found(*a, **kw):
        both_found.wait()  # both repairs have seen the issue standing
        return apply(*a, **kw)

    monkeypatch.setattr(gate, "apply", once_both_found)

    def run(actor: str) -> dict | Exception:
        op = Operator(actor, OP["incident_id"], OP["operator_reason"])
        try:
            return assurance.repair(engine, issue_id, True, op)
        except Conflict as e:
            return e

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run, ["ops1", "ops2"]))
    assert len(_receipts(engine, p["id"])) == 1
    (done,) = [r for r in results if isinstance(r, dict)]
    (refused,) = [r for r in results if isinstance(r, Conflict)]
    assert refused.code == "issue_resolved"
    (ev,) = repaired_events(engine)
    assert ev.data["data"]["receipt_id"] == done["result"]["receipt_id"]


def _later(monkeypatch, seconds: float) -> None:
    at = timeutil.process_now() + timedelta(seconds=seconds)
    monkeypatch.setattr(timeutil, "process_now", lambda: at)


def test_repair_lapsed_worker_lease(client, engine, chain, monkeypatch):
    sess = client.post(
        "/v1/payment-sessions",
        headers=auth(),
        json={
            "owner_id": "alice",
            "rail_id": "fake_live",
            "access_product_id": "pro",
            "amount": 1500000,
            "recipient": "fatreasury",
        },
    ).json()
    view, _ = proofs.submit_proof(engine, sess["id"], "fx0000aa04", ["alice"], verify=False)
    pid = view["id"]
    with engine.db.tx() as s:  # a worker claimed it, then died
        p = s.get(Proof, pid)
        p.claimed_by = "w-dead"
        p.claimed_until = timeutil.process_now() + timedelta(seconds=5)
        p.next_check_at = engine.now() + timedelta(hours=6)
    assert by_category(report(client), "claim_lease_lapsed") == []  # the lease still runs
    _later(monkeypatch, 60)
    (issue,) = by_category(report(client), "claim_lease_lapsed")
    assert issue["id"] == f"claim_lease_lapsed:{pid}" and issue["repairable"]

    r = repair(client, issue["id"])
    assert r.status_code == 200, r.text
    assert r.json()["result"]["released"]["claimed_by"] == "w-dead"
    with engine.db.tx() as s:
        p = s.get(Proof, pid)
        assert (p.claimed_by, p.claimed_until) == (None, None)
        assert timeutil.utc(p.next_check_at) <= engine.now()  # due at the next sweep
    (ev,) = repaired_events(engine)
    assert (ev.actor, ev.incident_id, ev.reason) == ("ops1", "INC-31", "assurance repair test")
    assert ev.data["action"] == "requeued" and ev.data["data"]["claimed_by"] == "w-dead"
    assert by_category(report(client), "claim_lease_lapsed") == []


def test_repair_stuck_idempotency_claim(client, engine):
    with engine.db.tx() as s:
        s.add(
            IdempotencyClaim(
                principal="svc:alice",
                endpoint="POST /v1/payment-sessions",
                key="k-stuck",
                request_hash="0" * 64,
                status="in_progress",
                created_at=timeutil.process_now() - timedelta(hours=1),
            )
        )
    (issue,) = by_category(report(client), "idempotency_claim_stuck")
    assert issue["repairable"] and "k-stuck" in issue["subject"]
    r = repair(client, issue["id"])
    assert r.status_code == 200, r.text
    assert r.json()["result"]["released"]["key"] == "k-stuck"
    with engine.db.tx() as s:
        assert s.scalars(select(IdempotencyClaim)).all() == []
    (ev,) = repaired_events(engine)
    assert ev.incident_id == "INC-31" and ev.data["data"]["request_hash"] == "0" * 64
    assert by_category(report(client), "idempotency_claim_stuck") == []


# -- the operator CLI ----------------------------------------------------------------------


def _cli(url: str, *args: str):
    env = {"RAILPROOF_API_BASE_URL": url, "RAILPROOF_STAFF_TOKEN": STAFF_TOKEN, "COLUMNS": "200"}
    return CliRunner().invoke(cli_app, list(args), env=env)


def test_cli_assurance_window_and_repair(client, engine, chain):
    p = paid(client, chain, "fx0000aa05", apply=False)
    advance(engine, 2 * 3600)
    issue_id = f"verified_without_receipt:{p['id']}"
    with LiveServer(client.app) as srv:
        r = _cli(srv.url, "assurance", "--period-days", "1")
        assert r.exit_code == 0, r.output
        assert "last 1 days" in r.stdout and issue_id in r.stdout  # whole ids
        doc = json.loads(_cli(srv.url, "assurance", "--json", "--period-days", "1").stdout)
        assert doc["summary"]["period_days"] == 1
        assert [i["id"] for i in doc["issues"]] == [issue_id]
        r = _cli(srv.url, "assurance", "--period-days", "0")
        assert r.exit_code == 2 and "--period-days" in r.output

        # Refused before anything is sent without --confirm and the operator context.
        r = _cli(srv.url, "assurance-repair", issue_id, "--incident-id", "INC-31")
        assert r.exit_code == 2
        assert "--confirm" in r.stderr and "--operator-reason" in r.stderr
        ctx = ["--confirm", "--incident-id", "INC-31", "--operator-reason", "cli repair"]
        r = _cli(srv.url, "assurance-repair", "verified_without_receipt:nope", *ctx)
        assert r.exit_code == 1 and "assurance_issue_not_found" in r.stderr
        r = _cli(srv.url, "assurance-repair", issue_id, *ctx, "--json")
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["result"]["receipt_id"]
        r = _cli(srv.url, "assurance")
        assert r.exit_code == 0 and "assurance: ok (score 100, 0 findings)" in r.stdout
    (ev,) = repaired_events(engine)
    assert (ev.incident_id, ev.reason) == ("INC-31", "cli repair")
