"""What a tenant sees of a staff release (services.reviews): a fixed detail on its proof and
in the proof.failed webhook, never the staff's incident id or reason, which stay on the audit
row."""

from __future__ import annotations

from sqlalchemy import select

from tests.conftest import SERVICE_TOKEN, auth
from tests.helpers import audit_actions
from tests.test_review_resolution import held, review  # noqa: F401 (fixture)
from verifier.services.reviews import RELEASED_DETAIL
from verifier.storage.webhook_models import OutboxEvent

INCIDENT = "INC-77 chargeback-fraud-suspect-alice"
REASON = "card team suspects alice"


def test_a_release_shows_the_tenant_a_fixed_detail(held):  # noqa: F811
    e, c, alice, bob, pid = held
    r = review(c, pid, "release", incident_id=INCIDENT, operator_reason=REASON)
    assert r.status_code == 200, r.text
    seen = c.get(f"/v1/proofs/{pid}", headers=auth(SERVICE_TOKEN))
    assert seen.status_code == 200
    assert seen.json()["detail"] == RELEASED_DETAIL
    for text in (INCIDENT, "INC-77", REASON):
        assert text not in seen.text
    with e.db.tx() as s:
        payloads = s.scalars(
            select(OutboxEvent.payload).where(
                OutboxEvent.resource_id == pid, OutboxEvent.type == "proof.failed"
            )
        ).all()
    assert [p["detail"] for p in payloads] == [RELEASED_DETAIL]
    # Staff find the decision's context on the audit record.
    released = [a for a in audit_actions(e, pid) if a.action == "proof.review_released"]
    assert [(a.incident_id, a.reason) for a in released] == [(INCIDENT, REASON)]
