"""Release gates (operators issue, item 2): production enablement of a rail takes effect only
on recorded, passing evidence for every gate — the kill-switch drill railproof runs, the
rehearsal evidence by hash, the deployed alert rules matching the metric spec, and two
attestations. Over HTTP and through the CLI."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta

import pytest

from tests.conftest import STAFF_TOKEN, STAFF_TOKEN_2, auth
from tests.gates import OPS, pass_release_gates, rehearsal_text
from tests.helpers import audit_actions
from verifier.core.metrics import alert_rules
from verifier.services import audit, release_gates
from verifier.services.release_gates import REHEARSAL_STEPS
from verifier.storage.models import RailState

GATES_URL = "/v1/admin/rails/{}/release-gates"


def _record(client, rail, gate, token=STAFF_TOKEN, **body):
    return client.post(
        f"/v1/admin/rails/{rail}/release-gates/{gate}/evidence",
        headers=auth(token),
        json={**OPS, **body},
    )


def _file(text: str) -> dict[str, str]:
    return {"evidence": text, "evidence_sha256": hashlib.sha256(text.encode()).hexdigest()}


def _request_production(client, rail="fake_gated") -> str:
    r = client.post(
        f"/v1/admin/rails/{rail}/production/request",
        headers=auth(STAFF_TOKEN),
        json={"enable": True, **OPS},
    )
    assert r.status_code == 201, r.text
    return r.json()["approval_id"]


def _approve(client, aid):
    return client.post(
        f"/v1/admin/approvals/{aid}/approve",
        headers=auth(STAFF_TOKEN_2),
        json={"confirm": True, **OPS},
    )


def _enabled(engine, rail="fake_gated") -> bool:
    with engine.db.tx() as s:
        return bool(s.get(RailState, rail).production_enabled)


def _standing(client, rail="fake_gated") -> dict[str, str]:
    r = client.get(GATES_URL.format(rail), headers=auth(STAFF_TOKEN))
    assert r.status_code == 200, r.text
    return {g["gate"]: g["status"] for g in r.json()["gates"]}


def test_two_staff_members_cannot_enable_production_without_evidence(client, engine):
    aid = _request_production(client)
    r = _approve(client, aid)
    assert (r.status_code, r.json()["error"]["code"]) == (409, "release_gates_incomplete")
    assert set(r.json()["error"]["gates"]) == {g.name for g in release_gates.GATES}
    assert not _enabled(engine)
    # The request stays pending: once the evidence is there, the same approval goes through.
    pass_release_gates(client, "fake_gated")
    assert set(_standing(client).values()) == {"passed"}
    r = _approve(client, aid)
    assert r.status_code == 200, r.text
    assert _enabled(engine)


def test_one_missing_or_failed_gate_still_blocks(client, engine):
    pass_release_gates(client, "fake_gated")
    # The newest record is what a gate stands on: a failed re-check takes the pass back.
    bad_rules = alert_rules()
    bad_rules["groups"][0]["rules"][0]["expr"] = "vector(0) > 1"
    r = _record(client, "fake_gated", "alert_rule_integrity", **_file(json.dumps(bad_rules)))
    assert r.status_code == 201 and r.json()["outcome"] == "failed"
    assert r.json()["detail"]["missing_or_changed"] == [bad_rules["groups"][0]["rules"][0]["alert"]]
    assert _standing(client)["alert_rule_integrity"] == "failed"
    r = _approve(client, _request_production(client))
    assert r.status_code == 409 and r.json()["error"]["gates"] == {"alert_rule_integrity": "failed"}
    assert not _enabled(engine)
    # Evidence of another rail does not count for this one.
    pass_release_gates(client, "fake_live")
    r = _approve(client, _request_production(client))
    assert r.status_code == 409


def test_evidence_expires(client, engine):
    pass_release_gates(client, "fake_gated")
    aid = _request_production(client)
    engine.settings.clock = engine.settings.now() + timedelta(days=31)
    assert set(_standing(client).values()) == {"expired"}
    assert _approve(client, aid).status_code == 409
    assert not _enabled(engine)


def test_kill_switch_drill_pauses_refuses_and_resumes(client, engine):
    r = _record(client, "fake_gated", "kill_switch_drill")
    assert r.status_code == 422 and r.json()["error"]["field"] == "confirm"
    r = _record(client, "fake_gated", "kill_switch_drill", confirm=True)
    assert r.status_code == 201, r.text
    d = r.json()
    assert d["outcome"] == "passed"
    assert d["detail"]["session_refusal"] == "rail_paused"
    assert d["detail"]["paused_after"] is False
    with engine.db.tx() as s:
        assert s.get(RailState, "fake_gated").paused is False
    acts = [a.action for a in audit_actions(engine, "fake_gated")]
    assert acts[-3:] == ["rail.paused", "rail.resumed", "release_gate.recorded"]


def test_the_drill_takes_the_longest_reason_an_action_takes(client, engine):
    # The drill's pause and resume name it in their reason: that reason stays within the limit.
    reason = "r" * audit.MAX_OPERATOR_REASON
    r = _record(client, "fake_gated", "kill_switch_drill", confirm=True, operator_reason=reason)
    assert r.status_code == 201 and r.json()["outcome"] == "passed", r.text
    paused = [a for a in audit_actions(engine, "fake_gated") if a.action == "rail.paused"][-1]
    assert paused.reason == ("release-gate drill: " + reason)[: audit.MAX_OPERATOR_REASON]


def test_drill_reaches_the_proof_path_when_the_rail_has_a_session(client, engine, chain):
    r = client.post(
        "/v1/payment-sessions",
        headers=auth(),
        json={
            "owner_id": "alice",
            "rail_id": "fake_gated",
            "access_product_id": "p1",
            "amount": 1500000,
            "recipient": "fatreasury",
        },
    )
    assert r.status_code == 201, r.text
    r = _record(client, "fake_gated", "kill_switch_drill", confirm=True)
    assert r.json()["detail"]["proof_refusal"] == "rail_paused"
    assert r.json()["outcome"] == "passed"


def test_drill_leaves_an_incident_pause_in_place(client, engine):
    r = client.post(
        "/v1/admin/rails/fake_gated/pause", headers=auth(STAFF_TOKEN), json={"confirm": True, **OPS}
    )
    assert r.status_code == 200
    r = _record(client, "fake_gated", "kill_switch_drill", confirm=True)
    assert r.json()["outcome"] == "passed"
    assert r.json()["detail"]["was_paused"] is True
    with engine.db.tx() as s:
        assert s.get(RailState, "fake_gated").paused is True


def test_a_kill_switch_that_lets_a_session_through_fails_the_drill(client, engine, monkeypatch):
    from verifier.services import sessions

    monkeypatch.setattr(sessions, "open_session", lambda *a, **k: {"id": "ses_leak"})
    r = _record(client, "fake_gated", "kill_switch_drill", confirm=True)
    assert r.status_code == 201
    assert r.json()["outcome"] == "failed"
    assert r.json()["detail"]["session_refusal"] == "accepted"


def test_rehearsal_evidence_is_checked_by_hash_and_content(client):
    text = rehearsal_text(ok=True)
    wrong = {"evidence": text, "evidence_sha256": "0" * 64}
    r = _record(client, "fake_gated", "e2e_rehearsal", **wrong)
    assert r.status_code == 422 and r.json()["error"]["field"] == "evidence_sha256"
    r = _record(client, "fake_gated", "e2e_rehearsal")
    assert r.status_code == 422 and r.json()["error"]["field"] == "evidence"
    r = _record(client, "fake_gated", "e2e_rehearsal", **_file('{"hello": 1}'))
    assert (r.status_code, r.json()["error"]["code"]) == (422, "evidence_malformed")
    r = _record(client, "fake_gated", "e2e_rehearsal", **_file(rehearsal_text(ok=False)))
    assert r.status_code == 201 and r.json()["outcome"] == "failed"
    assert r.json()["detail"]["failed_steps"] == ["apply"]
    r = _record(client, "fake_gated", "e2e_rehearsal", **_file(text))
    assert r.status_code == 201 and r.json()["outcome"] == "passed"
    assert r.json()["evidence_sha256"] == hashlib.sha256(text.encode()).hexdigest()


def test_a_rehearsal_file_must_show_every_step_the_rehearsal_runs(client):
    # A hand-written file claiming success with a step of its own rehearsed nothing.
    forged = json.loads(rehearsal_text(ok=True))
    forged["steps"] = [{"name": "anything", "ok": True}]
    r = _record(client, "fake_gated", "e2e_rehearsal", **_file(json.dumps(forged)))
    assert r.status_code == 201 and r.json()["outcome"] == "failed"
    assert r.json()["detail"]["missing_steps"] == list(REHEARSAL_STEPS)
    # One step left out is enough to fail it; the others all passed.
    short = json.loads(rehearsal_text(ok=True))
    short["steps"] = [s for s in short["steps"] if s["name"] != "rollback_proof"]
    r = _record(client, "fake_gated", "e2e_rehearsal", **_file(json.dumps(short)))
    assert r.json()["outcome"] == "failed"
    assert r.json()["detail"]["missing_steps"] == ["rollback_proof"]
    # A step named by anything but text is not a step that ran (and never a 500).
    for name in (["alert_rules"], {"step": "alert_rules"}, 7):
        odd = json.loads(rehearsal_text(ok=True))
        odd["steps"] = [s for s in odd["steps"] if s["name"] != "alert_rules"]
        odd["steps"].append({"name": name, "ok": True})
        r = _record(client, "fake_gated", "e2e_rehearsal", **_file(json.dumps(odd)))
        assert r.status_code == 201 and r.json()["outcome"] == "failed", r.text
        assert r.json()["detail"]["missing_steps"] == ["alert_rules"]


def test_attestations_name_the_staff_member_and_need_context(client):
    r = client.post(
        "/v1/admin/rails/fake_gated/release-gates/rate_limit_review/evidence",
        headers=auth(STAFF_TOKEN),
        json={"operator_reason": "reviewed"},
    )
    assert r.status_code == 422 and r.json()["error"]["field"] == "incident_id"
    r = _record(client, "fake_gated", "rate_limit_review", note="20/s per token, burst 40")
    assert r.status_code == 201
    assert (r.json()["recorded_by"], r.json()["incident_id"]) == ("ops1", OPS["incident_id"])
    assert r.json()["detail"]["note"] == "20/s per token, burst 40"
    r = _record(client, "fake_gated", "no_such_gate")
    assert (r.status_code, r.json()["error"]["code"]) == (404, "release_gate_unknown")
    r = _record(client, "no_such_rail", "rate_limit_review")
    assert r.status_code == 404


def test_readiness_shows_each_gate(client):
    r = client.get("/v1/admin/rails/readiness", headers=auth(STAFF_TOKEN))
    row = next(x for x in r.json() if x["rail_id"] == "fake_gated")
    assert set(row["release_gates"].values()) == {"missing"}
    pass_release_gates(client, "fake_gated")
    r = client.get("/v1/admin/rails/readiness", headers=auth(STAFF_TOKEN))
    row = next(x for x in r.json() if x["rail_id"] == "fake_gated")
    assert set(row["release_gates"].values()) == {"passed"}


def test_generated_rules_name_only_spec_metrics():
    assert release_gates.spec_metric_problems(alert_rules()) == []
    broken = {"groups": [{"rules": [{"alert": "X", "expr": "rate(railproof_nope_total[5m]) > 0"}]}]}
    assert release_gates.spec_metric_problems(broken) == [
        "X: railproof_nope_total is not in the metric spec"
    ]


# -- CLI -----------------------------------------------------------------------------------


@pytest.fixture
def served(engine):
    from tests.live_server import LiveServer
    from verifier.http.app import create_app

    with LiveServer(create_app(engine)) as srv:
        yield srv.url


def _cli(url, *args):
    from typer.testing import CliRunner

    from verifier.cli.main import app

    env = {"RAILPROOF_API_BASE_URL": url, "RAILPROOF_STAFF_TOKEN": STAFF_TOKEN, "COLUMNS": "200"}
    return CliRunner().invoke(app, list(args), env=env)


CTX = ["--incident-id", OPS["incident_id"], "--operator-reason", OPS["operator_reason"]]


def test_cli_records_every_gate_and_lists_them(served, tmp_path):
    r = _cli(served, "list-release-gates", "--rail-id", "fake_gated")
    assert r.exit_code == 0, r.output
    assert "INCOMPLETE" in r.stdout and "kill_switch_drill" in r.stdout
    r = _cli(
        served,
        "record-release-gate-evidence",
        "--rail-id",
        "fake_gated",
        "--gate",
        "kill_switch_drill",
        *CTX,
    )
    assert r.exit_code == 2 and "--confirm" in r.stderr
    r = _cli(
        served,
        "record-release-gate-evidence",
        "--rail-id",
        "fake_gated",
        "--gate",
        "kill_switch_drill",
        "--confirm",
        *CTX,
    )
    assert r.exit_code == 0, r.output
    evidence = tmp_path / "rehearsal.json"
    evidence.write_text(rehearsal_text(ok=True))
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps(alert_rules(), indent=2))
    for gate, extra in (
        ("e2e_rehearsal", ["--evidence-file", str(evidence)]),
        ("alert_rule_integrity", ["--evidence-file", str(rules)]),
        ("rate_limit_review", ["--note", "limits reviewed"]),
        ("provider_alerting_review", []),
    ):
        r = _cli(
            served,
            "record-release-gate-evidence",
            "--rail-id",
            "fake_gated",
            "--gate",
            gate,
            *extra,
            *CTX,
            "--json",
        )
        assert r.exit_code == 0, (gate, r.output)
        assert json.loads(r.stdout)["outcome"] == "passed"
    r = _cli(served, "list-release-gates", "--rail-id", "fake_gated", "--json")
    data = json.loads(r.stdout)
    assert data["complete"] is True
    sha = hashlib.sha256(evidence.read_bytes()).hexdigest()
    (reh,) = [g for g in data["gates"] if g["gate"] == "e2e_rehearsal"]
    assert reh["evidence"]["evidence_sha256"] == sha
    # A failing rehearsal is recorded, and the command says so with exit 1.
    evidence.write_text(rehearsal_text(ok=False))
    r = _cli(
        served,
        "record-release-gate-evidence",
        "--rail-id",
        "fake_gated",
        "--gate",
        "e2e_rehearsal",
        "--evidence-file",
        str(evidence),
        *CTX,
    )
    assert r.exit_code == 1 and "FAILED" in r.stderr
    r = _cli(
        served,
        "record-release-gate-evidence",
        "--rail-id",
        "fake_gated",
        "--gate",
        "e2e_rehearsal",
        *CTX,
    )
    assert r.exit_code == 2 and "--evidence-file" in r.stderr


def test_assurance_reports_a_production_rail_without_evidence_as_critical(client, engine):
    from verifier.services.assurance import assurance_report

    def issue_ids() -> list[str]:
        return [i["id"] for i in assurance_report(engine)["issues"]]

    assert "production_rail_without_release_evidence:fake_gated" not in issue_ids()
    with engine.db.tx() as s:  # enabled around the approval (a tampered or restored row)
        s.get(RailState, "fake_gated").production_enabled = True
    (issue,) = [
        i
        for i in assurance_report(engine)["issues"]
        if i["id"] == "production_rail_without_release_evidence:fake_gated"
    ]
    assert issue["severity"] == "critical" and not issue["repairable"]
    assert assurance_report(engine)["summary"]["status"] == "critical"
    pass_release_gates(client, "fake_gated")
    assert "production_rail_without_release_evidence:fake_gated" not in issue_ids()
    # Evidence that lapses while the rail stays enabled is a finding again.
    engine.settings.clock = engine.settings.now() + timedelta(days=31)
    assert "production_rail_without_release_evidence:fake_gated" in issue_ids()
    # A live-stage rail enabled by the catalog is not held to the gates.
    assert not any(
        i.startswith("production_rail_without_release_evidence:fake_live") for i in issue_ids()
    )
