"""A reconciliation apply's repair attaches a transfer to its session as a proof: a staff
action. Its audit row carried the staff member but not the run's incident id and reason, so
`list-audit-events --incident-id INC` ("everything done under one incident") left out what the
run attached. It carries them now."""

from __future__ import annotations

from sqlalchemy import select

from tests.test_reconciliation import EXPECT, eng, req, session_for  # noqa: F401  (fixture)
from verifier.services import reconciliation
from verifier.services.queries import audit_events
from verifier.storage.models import AuditEvent, Proof


def test_reconciliation_repair_is_audited_with_the_runs_incident_and_reason(eng):  # noqa: F811
    bound = session_for(eng, "bound")
    run = reconciliation.run(eng, req(apply=True, confirm=True), "ops1")
    assert run["summary"]["applied"] == 1
    with eng.db.tx() as s:
        [p] = s.scalars(select(Proof).where(Proof.session_id == bound["id"])).all()
        [submitted] = s.scalars(
            select(AuditEvent).where(
                AuditEvent.subject_id == p.id, AuditEvent.action == "proof.submitted"
            )
        ).all()
    assert submitted.actor == "ops1"
    # The state change the run made is on the incident's trail, with why it was made.
    assert (submitted.incident_id, submitted.reason) == ("INC-13", "post-rollout reconciliation")
    trail = {e["subject_id"] for e in audit_events(eng, 1000, incident_id="INC-13")}
    assert p.id in trail
