"""The incident id and reason a staff action carries must be text an operator can read and
search for: an incident id holding a control, invisible (zero-width, BOM, direction) or
line-separator character is refused, as is a reason with nothing readable in it or a NUL
(other control characters are free text's, shown as escapes), and either past its length,
over the API (body or headers), in the console and by the services themselves. The CLI refuses them
in --incident-id, and GET /v1/admin/audit?incident_id= refuses control characters, so such
an action could never be looked up by its incident."""

from __future__ import annotations

import pytest

from tests.conftest import STAFF_TOKEN, auth
from tests.test_console import app, c, clock, csrf, login  # noqa: F401 (fixtures)
from verifier.core.errors import BadInput
from verifier.core.shown import blank, unreadable
from verifier.services import audit, gate, rails_admin, webhooks
from verifier.storage.models import AuditEvent, RailState

STAFF = auth(STAFF_TOKEN)
UNUSABLE = ["\x01\x02", "\u200b", "\ufeff", "INC\n7", "INC-7\u202e", "INC\u20287"]
IDS = ["controls", "zwsp", "bom", "newline", "direction", "line-separator"]


def _paused(engine) -> bool:
    with engine.db.tx() as s:
        return bool(s.get(RailState, "fake_live").paused)


def _audit_rows(engine) -> int:
    with engine.db.tx() as s:
        return len(s.query(AuditEvent).all())


def test_the_shared_rules():
    for bad in UNUSABLE:
        assert unreadable(bad), repr(bad)
    for good in ["INC-42", "INC-été", "事件 7", "OPS 1"]:
        assert not unreadable(good) and not blank(good)
    for empty in [None, "", " \t", "\u200b", "\ufeff\u200d", "\u2028", "\u3000"]:
        assert blank(empty), repr(empty)
    assert not blank("line 1\nline 2")


@pytest.mark.parametrize("incident", UNUSABLE, ids=IDS)
def test_api_refuses_an_incident_id_that_cannot_be_searched_for(client, engine, incident):
    r = client.post(
        "/v1/admin/rails/fake_live/pause",
        headers=STAFF,
        json={"confirm": True, "incident_id": incident, "operator_reason": "drill"},
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "incident_id"
    assert not _paused(engine)


def test_api_refuses_a_reason_with_nothing_readable_in_it(client, engine):
    r = client.post(
        "/v1/admin/rails/fake_live/pause",
        headers=STAFF,
        json={"confirm": True, "incident_id": "INC-7", "operator_reason": "\u200b\ufeff"},
    )
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert (err["code"], err["field"]) == ("operator_context_required", "operator_reason")
    assert not _paused(engine)


def test_an_incident_id_header_is_held_to_the_same_rule(client, engine):
    before = _audit_rows(engine)
    zwsp = "INC-7\u200b".encode()
    # A read recording its context, and a change taking it from the headers.
    r = client.get(
        "/v1/admin/rails/readiness",
        headers=[(b"Authorization", f"Bearer {STAFF_TOKEN}".encode()), (b"X-Incident-Id", zwsp)],
    )
    assert (r.status_code, r.json()["error"]["field"]) == (422, "X-Incident-Id"), r.text
    r = client.post(
        "/v1/admin/rails/fake_live/pause",
        headers=[
            (b"Authorization", f"Bearer {STAFF_TOKEN}".encode()),
            (b"X-Incident-Id", zwsp),
            (b"X-Operator-Reason", b"drill"),
        ],
        json={"confirm": True},
    )
    assert (r.status_code, r.json()["error"]["field"]) == (422, "X-Incident-Id"), r.text
    assert not _paused(engine) and _audit_rows(engine) == before


@pytest.mark.parametrize("incident", UNUSABLE, ids=IDS)
def test_console_refuses_an_incident_id_that_cannot_be_searched_for(c, engine, incident):  # noqa: F811
    login(c)
    token = csrf(c)
    r = c.post(
        "/console/rails/fake_live/pause",
        data={
            "incident_id": incident,
            "operator_reason": "drill",
            "confirm": "yes",
            "csrf_token": token,
        },
    )
    assert r.status_code == 422, (r.status_code, r.headers.get("location"))
    assert "Nothing was done" in r.text
    assert not _paused(engine)


def test_console_refuses_a_reason_with_nothing_readable_in_it(c, engine):  # noqa: F811
    login(c)
    r = c.post(
        "/console/rails/fake_live/pause",
        data={
            "incident_id": "INC-7",
            "operator_reason": "\u200b",
            "confirm": "yes",
            "csrf_token": csrf(c),
        },
    )
    assert r.status_code == 422 and "give a reason" in r.text
    assert not _paused(engine)


@pytest.mark.parametrize(
    "call",
    [
        lambda e, op: rails_admin.set_paused(e, "fake_live", True, op),
        lambda e, op: rails_admin.request_change(e, "fake_live", "treasury", "fanew", op),
        lambda e, op: rails_admin.reject(e, "apr_none", op),
        lambda e, op: rails_admin.approve(e, "apr_none", op),
        lambda e, op: gate.revoke(e, "ent_none", op),
        lambda e, op: webhooks.replay(e, "evt_none", op),
    ],
    ids=["pause", "request", "reject", "approve", "revoke", "replay"],
)
def test_services_refuse_it_themselves(engine, call):
    before = _audit_rows(engine)
    for incident in ("\u200b", "INC\n7"):
        with pytest.raises(BadInput) as e:
            call(engine, audit.Operator("ops1", incident, "drill"))
        assert e.value.field == "incident_id"
    for reason in ("\ufeff", "dr\x00ill", "r" * (audit.MAX_OPERATOR_REASON + 1)):
        with pytest.raises(BadInput) as e:
            call(engine, audit.Operator("ops1", "INC-7", reason))
        assert e.value.field == "operator_reason", reason
    # Past the width of audit_events.incident_id: PostgreSQL refused the audit row.
    with pytest.raises(BadInput, match="at most 128 characters") as e:
        call(engine, audit.Operator("ops1", "INC-" + "7" * audit.MAX_INCIDENT_ID, "drill"))
    assert e.value.field == "incident_id"
    assert not _paused(engine) and _audit_rows(engine) == before


def test_the_longest_context_and_a_reason_laid_out_on_lines_are_taken(engine):
    lines = "line 1\n\tline 2\r\n"
    reason = lines + "r" * (audit.MAX_OPERATOR_REASON - len(lines))
    op = audit.Operator("ops1", "I" * audit.MAX_INCIDENT_ID, reason)
    rails_admin.set_paused(engine, "fake_live", True, op)
    assert _paused(engine)


def test_the_api_and_the_cli_hold_the_limits_the_services_record():
    from verifier.http import guards

    assert guards.MAX_INCIDENT_ID == audit.MAX_INCIDENT_ID
    assert guards.MAX_OPERATOR_REASON == audit.MAX_OPERATOR_REASON
