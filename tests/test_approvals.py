"""Rail changes (production state, treasury) are decided by a second staff member, both
ways: approval applies the change, rejection leaves everything as it was. Over HTTP and the
CLI's state-changing command."""

from __future__ import annotations

from datetime import timedelta

from tests.conftest import STAFF_TOKEN, STAFF_TOKEN_2, auth
from tests.helpers import audit_actions
from verifier.storage.models import RailState

OPS = {"incident_id": "INC-3", "operator_reason": "wrong treasury typed"}


def _request(client) -> str:
    r = client.post(
        "/v1/admin/rails/fake_live/treasury/request",
        headers=auth(STAFF_TOKEN),
        json={"treasury": "fanewtreasury", **OPS},
    )
    assert r.status_code == 201, r.text
    return r.json()["approval_id"]


def test_reject_by_another_staff_member_changes_nothing(client, engine):
    aid = _request(client)
    url = f"/v1/admin/approvals/{aid}/reject"
    r = client.post(url, headers=auth(STAFF_TOKEN), json={"confirm": True, **OPS})
    assert (r.status_code, r.json()["error"]["code"]) == (403, "two_person_rule")
    r = client.post(url, headers=auth(STAFF_TOKEN_2), json={"confirm": True})
    assert r.status_code == 422 and r.json()["error"]["field"] == "incident_id"
    r = client.post(url, headers=auth(STAFF_TOKEN_2), json={"confirm": "yes", **OPS})
    assert r.status_code == 422 and r.json()["error"]["field"] == "confirm"
    r = client.post(url, headers=auth(STAFF_TOKEN_2), json={"confirm": True, **OPS})
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["approved_by"]) == ("rejected", "ops2")
    with engine.db.tx() as s:
        assert s.get(RailState, "fake_live").treasury is None
    # Decided once: neither a second rejection nor a late approval.
    for verb in ("reject", "approve"):
        r = client.post(
            f"/v1/admin/approvals/{aid}/{verb}",
            headers=auth(STAFF_TOKEN_2),
            json={"confirm": True, **OPS},
        )
        assert (r.status_code, r.json()["error"]["code"]) == (409, "approval_decided")
    (ev,) = [a for a in audit_actions(engine, aid) if a.action == "approval.rejected"]
    assert (ev.actor, ev.incident_id, ev.data["value"]) == ("ops2", "INC-3", "fanewtreasury")


def test_cli_reject_needs_incident_context_before_sending(monkeypatch):
    from typer.testing import CliRunner

    from verifier.cli.main import app

    monkeypatch.setenv("RAILPROOF_STAFF_TOKEN", STAFF_TOKEN_2)
    monkeypatch.setenv("RAILPROOF_API_BASE_URL", "http://127.0.0.1:9")  # nothing listens
    r = CliRunner().invoke(app, ["reject-rail-change", "a1", "--confirm"])
    assert r.exit_code == 2 and "--incident-id" in r.output


def test_a_request_whose_requester_left_the_staff_list_is_not_approved(client, engine):
    """Two people on the staff list agree when the change takes effect: a request left pending
    by a member since removed is refused, and stays rejectable."""
    aid = _request(client)  # by ops1
    del engine.settings.staff_tokens[STAFF_TOKEN]
    url = f"/v1/admin/approvals/{aid}"
    r = client.post(f"{url}/approve", headers=auth(STAFF_TOKEN_2), json={"confirm": True, **OPS})
    assert (r.status_code, r.json()["error"]["code"]) == (409, "requester_not_staff")
    with engine.db.tx() as s:
        assert s.get(RailState, "fake_live").treasury is None
    r = client.post(f"{url}/reject", headers=auth(STAFF_TOKEN_2), json={"confirm": True, **OPS})
    assert (r.status_code, r.json()["status"]) == (200, "rejected")


def test_a_request_older_than_the_approval_age_is_not_approved(client, engine, monkeypatch):
    """A second person agrees to a change as it stands now: a request left pending past
    RAILPROOF_APPROVAL_MAX_AGE_SECONDS (a treasury typed days ago) is refused and changes
    nothing; it stays rejectable, and one asked for again is approved."""
    monkeypatch.setattr(engine.settings, "approval_max_age_seconds", 3600)
    requested = engine.now()
    aid = _request(client)
    url = f"/v1/admin/approvals/{aid}"
    monkeypatch.setattr(engine.settings, "clock", requested + timedelta(hours=1, seconds=1))
    r = client.post(f"{url}/approve", headers=auth(STAFF_TOKEN_2), json={"confirm": True, **OPS})
    assert (r.status_code, r.json()["error"]["code"]) == (409, "approval_expired"), r.text
    assert "reject this request" in r.json()["error"]["message"]
    with engine.db.tx() as s:
        assert s.get(RailState, "fake_live").treasury is None
    assert [a.action for a in audit_actions(engine, aid)] == ["approval.requested"]
    r = client.post(f"{url}/reject", headers=auth(STAFF_TOKEN_2), json={"confirm": True, **OPS})
    assert (r.status_code, r.json()["status"]) == (200, "rejected")
    again = _request(client)  # asked for again: within the age, approved
    monkeypatch.setattr(engine.settings, "clock", requested + timedelta(hours=2))
    r = client.post(
        f"/v1/admin/approvals/{again}/approve",
        headers=auth(STAFF_TOKEN_2),
        json={"confirm": True, **OPS},
    )
    assert (r.status_code, r.json()["status"]) == (200, "approved"), r.text
    with engine.db.tx() as s:
        assert s.get(RailState, "fake_live").treasury == "fanewtreasury"


def test_a_refused_self_decision_is_on_the_audit_record(client, engine):
    """The requester trying to approve or reject their own request is refused (403), and the
    attempt is an audit row of its own (the decision it asked for rolled back)."""
    aid = _request(client)
    for verb in ("approve", "reject"):
        r = client.post(
            f"/v1/admin/approvals/{aid}/{verb}",
            headers=auth(STAFF_TOKEN),
            json={"confirm": True, "incident_id": "INC-5", "operator_reason": "self"},
        )
        assert (r.status_code, r.json()["error"]["code"]) == (403, "two_person_rule")
    rows = [
        (a.action, a.actor, a.incident_id, {k: a.data[k] for k in ("decision", "code")})
        for a in audit_actions(engine, aid)
        if a.action != "approval.requested"
    ]
    assert rows == [
        (
            "approval.self_decision_refused",
            "ops1",
            "INC-5",
            {"decision": decision, "code": "two_person_rule"},
        )
        for decision in ("approve", "reject")
    ]
    with engine.db.tx() as s:
        assert s.get(RailState, "fake_live").treasury is None
    # The chain still verifies with the refusal's rows in it.
    assert client.get("/v1/admin/audit/verify", headers=auth(STAFF_TOKEN)).json()["ok"] is True


def test_a_refusal_whose_audit_row_cannot_be_written_is_still_the_two_person_rule(
    client, engine, monkeypatch
):
    """The refusal is the answer; its audit row is written on top of it, and a busy database
    there must not turn it into "nothing was changed; retry" (503)."""
    import sqlite3

    from sqlalchemy import exc

    from verifier.services import audit

    aid = _request(client)
    real = audit.append

    def append(s, now, op, action, *a, **kw):
        if action == "approval.self_decision_refused":
            raise exc.OperationalError(
                "SELECT", None, sqlite3.OperationalError("database is locked")
            )
        return real(s, now, op, action, *a, **kw)

    monkeypatch.setattr(audit, "append", append)
    r = client.post(
        f"/v1/admin/approvals/{aid}/approve",
        headers=auth(STAFF_TOKEN),
        json={"confirm": True, **OPS},
    )
    assert (r.status_code, r.json()["error"]["code"]) == (403, "two_person_rule"), r.text
