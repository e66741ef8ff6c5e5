"""Console forms re-rendered after a dry run (or a refusal) carry the operator's own incident
id and reason into the apply form exactly as typed: the escapes the console shows stored text
with (verifier/core/shown.py) are for display, and a form value shown with them would be
submitted, and audited, with them. Ordinary text of any script (Japanese with the ideographic
space U+3000, French with a no-break space) comes back as it was."""

from __future__ import annotations

import html
import re

from sqlalchemy import select

from tests.test_console import app, c, clock, csrf, login, paid_proof  # noqa: F401 - fixtures
from verifier.storage.models import AuditEvent

REASON = "返金\u3000顧客の依頼"  # Japanese, ideographic space as typed by a Japanese IME
INCIDENT = "INC-é-ü-東京"
_REASON_VALUE = re.compile(r'name="operator_reason" maxlength="1000" value="([^"]*)"')
_INCIDENT_VALUE = re.compile(r'name="incident_id" maxlength="128" value="([^"]*)"')


def test_dry_run_prefills_the_apply_form_with_the_reason_as_typed(c, engine, chain):  # noqa: F811
    proof = paid_proof(c, chain)
    login(c)
    token = csrf(c, f"/console/proofs/{proof['id']}")
    r = c.post(
        f"/console/proofs/{proof['id']}/dry-run",
        data={"incident_id": INCIDENT, "operator_reason": REASON, "csrf_token": token},
    )
    assert r.status_code == 200, r.text
    reasons = {html.unescape(v) for v in _REASON_VALUE.findall(r.text)}
    incidents = {html.unescape(v) for v in _INCIDENT_VALUE.findall(r.text)}
    assert incidents == {INCIDENT}, incidents
    # The form the operator submits next holds what they typed, not an escaped spelling of it.
    assert reasons == {REASON}, reasons

    # Submitting that prefilled form records its text: the audit trail then holds an
    # operator reason the operator never wrote.
    r = c.post(
        f"/console/proofs/{proof['id']}/apply",
        data={
            "incident_id": next(iter(incidents)),
            "operator_reason": next(iter(reasons)),
            "confirm": "yes",
            "csrf_token": token,
        },
    )
    assert r.status_code in (200, 303), r.text
    with engine.db.tx() as s:
        rows = s.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
        said = [ev.reason for ev in rows if ev.reason]
    assert said and said[-1] == REASON, said
