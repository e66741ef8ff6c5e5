"""Findings of an attack on the staff and webhook surface: each test is the reproduction of a
defect (fixed unless marked xfail, whose reason says what is left)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from tests.conftest import SERVICE_TOKEN, STAFF_TOKEN, auth
from tests.gates import OPS, rehearsal_text
from verifier.core import timeutil
from verifier.services import assurance, audit, events, rails_admin, webhooks
from verifier.storage.models import Approval, IdempotencyClaim, RailState
from verifier.storage.release_gate_models import ReleaseGateEvidence
from verifier.storage.webhook_models import OutboxEvent, WebhookDelivery

STAFF = auth(STAFF_TOKEN)


def _paused(engine, rail: str) -> bool:
    with engine.db.tx() as s:
        return bool(s.get(RailState, rail).paused)


# -- blank operator context ------------------------------------------------------------------


@pytest.mark.parametrize("blank", ["incident_id", "operator_reason"])
@pytest.mark.parametrize(
    "url, body",
    [
        ("/v1/admin/rails/fake_gated/release-gates/rate_limit_review/evidence", {"note": "ok"}),
        ("/v1/admin/rails/fake_gated/release-gates/kill_switch_drill/evidence", {"confirm": True}),
        ("/v1/admin/rails/fake_gated/production/request", {"enable": True}),
        ("/v1/admin/rails/fake_live/treasury/request", {"treasury": "fanewer"}),
    ],
)
def test_whitespace_incident_or_reason_counts_as_missing(client, engine, url, body, blank):
    r = client.post(url, headers=STAFF, json={**OPS, blank: " \t ", **body})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert (err["code"], err["field"]) == ("operator_context_required", blank)
    with engine.db.tx() as s:
        assert s.scalars(select(Approval)).all() == []
        assert s.scalars(select(ReleaseGateEvidence)).all() == []
    assert not _paused(engine, "fake_gated")  # the drill never ran


# -- release-gate evidence of any shape: a 4xx or a recorded failure, never a 500 -----------


def _file(text: str) -> dict[str, str]:
    return {"evidence": text, "evidence_sha256": hashlib.sha256(text.encode()).hexdigest()}


@pytest.mark.parametrize(
    "gate, text",
    [
        ("alert_rule_integrity", json.dumps({"groups": [{"rules": [{"labels": "critical"}]}]})),
        ("alert_rule_integrity", json.dumps({"groups": [{"rules": 7}]})),
        ("alert_rule_integrity", "[" * 30_000 + "]" * 30_000),
        ("e2e_rehearsal", "[" * 30_000 + "]" * 30_000),
    ],
)
def test_odd_evidence_is_refused_or_failed_never_a_500(client, engine, gate, text):
    r = client.post(
        f"/v1/admin/rails/fake_gated/release-gates/{gate}/evidence",
        headers=STAFF,
        json={**OPS, **_file(text)},
    )
    assert r.status_code in (201, 422), r.text
    if r.status_code == 422:
        assert r.json()["error"]["field"] == "evidence"
    else:
        assert r.json()["outcome"] == "failed"


def test_a_rehearsal_step_that_is_not_an_object_did_not_pass(client):
    doc = json.loads(rehearsal_text(ok=True))
    doc["steps"].append("apply: skipped")
    r = client.post(
        "/v1/admin/rails/fake_gated/release-gates/e2e_rehearsal/evidence",
        headers=STAFF,
        json={**OPS, **_file(json.dumps(doc))},
    )
    assert r.status_code == 201, r.text
    assert r.json()["outcome"] == "failed"


# -- the kill-switch drill and a pause asked for meanwhile -----------------------------------


def test_drill_does_not_lift_a_pause_asked_for_during_it(client, engine, monkeypatch):
    from verifier.services import sessions

    real = sessions.open_session

    def incident_pause_then_open(*a, **k):
        # An operator pauses the rail for a real incident while the drill has it paused.
        rails_admin.set_paused(
            engine, "fake_gated", True, audit.Operator("ops2", "INC-REAL", "real incident")
        )
        return real(*a, **k)

    monkeypatch.setattr(sessions, "open_session", incident_pause_then_open)
    r = client.post(
        "/v1/admin/rails/fake_gated/release-gates/kill_switch_drill/evidence",
        headers=STAFF,
        json={**OPS, "confirm": True},
    )
    assert r.status_code == 201, r.text
    assert _paused(engine, "fake_gated")  # the incident's pause stands
    d = r.json()
    assert d["detail"]["paused_after"] is True
    assert d["outcome"] == "failed"  # the drill could not restore what it found


def test_drill_alone_still_resumes_its_own_pause(client, engine):
    r = client.post(
        "/v1/admin/rails/fake_gated/release-gates/kill_switch_drill/evidence",
        headers=STAFF,
        json={**OPS, "confirm": True},
    )
    assert r.status_code == 201 and r.json()["outcome"] == "passed", r.text
    assert not _paused(engine, "fake_gated")


# -- assurance repair of a stuck idempotency claim -------------------------------------------


def test_repair_never_releases_a_fresh_claim_under_the_stuck_key(client, engine, monkeypatch):
    pk = {"principal": "svc:alice", "endpoint": "POST /v1/payment-sessions", "key": "k-1"}
    with engine.db.tx() as s:
        s.add(
            IdempotencyClaim(
                **pk,
                request_hash="0" * 64,
                status="in_progress",
                created_at=timeutil.process_now() - timedelta(hours=1),
            )
        )
    real = assurance._standing

    def looked_up_then_client_retry(*a, **k):
        found = real(*a, **k)
        # Between the repair's look-up and its transaction the stuck claim is released (a
        # first repair) and the client's retry claims the key again: its request is running.
        with engine.db.tx() as s:
            s.delete(s.get(IdempotencyClaim, tuple(pk.values())))
        with engine.db.tx() as s:
            s.add(
                IdempotencyClaim(
                    **pk,
                    request_hash="1" * 64,
                    status="in_progress",
                    created_at=timeutil.process_now(),
                )
            )
        return found

    (issue,) = [
        i for i in assurance._issues(engine, None) if i.category == "idempotency_claim_stuck"
    ]
    monkeypatch.setattr(assurance, "_standing", looked_up_then_client_retry)
    r = client.post(
        "/v1/admin/assurance/repairs",
        headers=STAFF,
        json={"issue_id": issue.id, "confirm": True, **OPS},
    )
    assert r.status_code == 409, r.text
    assert r.json()["error"]["code"] == "issue_resolved"
    with engine.db.tx() as s:
        (c,) = s.scalars(select(IdempotencyClaim)).all()
        assert (c.request_hash, c.status) == ("1" * 64, "in_progress")


# -- left open ---------------------------------------------------------------------------------


def test_a_year_old_rehearsal_file_does_not_pass_the_gate_again(client, engine):
    # Files carry wall-clock times; one that finished past the evidence's validity fails.
    old = datetime.now(UTC) - timedelta(days=365)
    text = rehearsal_text(ok=True, finished_at=old)
    r = client.post(
        "/v1/admin/rails/fake_gated/release-gates/e2e_rehearsal/evidence",
        headers=STAFF,
        json={
            **OPS,
            "evidence": text,
            "evidence_sha256": hashlib.sha256(text.encode()).hexdigest(),
        },
    )
    assert r.status_code == 201 and r.json()["outcome"] == "failed", r.text
    assert r.json()["detail"]["too_old_or_undated"] is True
    fresh = rehearsal_text(ok=True)
    r = client.post(
        "/v1/admin/rails/fake_gated/release-gates/e2e_rehearsal/evidence",
        headers=STAFF,
        json={
            **OPS,
            "evidence": fresh,
            "evidence_sha256": hashlib.sha256(fresh.encode()).hexdigest(),
        },
    )
    assert r.json()["outcome"] == "passed"


def test_an_endpoint_stops_receiving_an_owner_its_token_no_longer_acts_for(client, engine):
    r = client.post(
        "/v1/webhook-endpoints",
        headers=auth(SERVICE_TOKEN),
        json={"url": "http://127.0.0.1:9/hook", "event_types": ["proof.verified"]},
    )
    assert r.status_code == 201, r.text
    assert "alice-2" in r.json()["owners"]

    def emit_and_sweep(proof_id: str) -> WebhookDelivery:
        with engine.db.tx() as s:
            events.emit(s, engine.now(), "proof.verified", "alice-2", "proof", proof_id, {})
        webhooks.deliver_due(engine, "w1")
        with engine.db.tx() as s:
            (d,) = [
                d
                for d, ev in s.execute(
                    select(WebhookDelivery, OutboxEvent).join(
                        OutboxEvent, OutboxEvent.id == WebhookDelivery.event_id
                    )
                )
                if ev.resource_id == proof_id
            ]
            s.expunge(d)
            return d

    # The token gains an owner: its endpoint keeps receiving (the POST is tried; nothing
    # listens on port 9, so it waits for a retry).
    engine.settings.service_tokens = {SERVICE_TOKEN: ["alice", "alice-2", "alice-3"]}
    kept = emit_and_sweep("prf_kept")
    assert kept.attempts == 1 and kept.status == "pending"
    # The deployment moves owner alice-2 to a token of its own: nothing more is sent there.
    engine.settings.service_tokens = {SERVICE_TOKEN: ["alice"], "svc-token-a2": ["alice-2"]}
    moved = emit_and_sweep("prf_moved")
    assert (moved.status, moved.attempts) == ("dead_letter", 0)
    assert "no service token acts any more" in moved.last_error
