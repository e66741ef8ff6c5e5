"""A receipt whose entitlement is still pending (a credit half written: restored from a backup
taken mid-way, or edited by hand) is a critical assurance finding whose repair is "re-run
apply for its proof; it is idempotent". Apply used to find the receipt and answer
`already_applied`, leaving the entitlement pending and the finding standing."""

from __future__ import annotations

from tests.conftest import STAFF_TOKEN, auth
from tests.helpers import audit_actions
from tests.test_assurance import OP, categories, paid, report
from verifier.storage.models import Entitlement, EntitlementStatus, Receipt


def test_apply_finishes_a_half_written_credit(client, engine, chain):
    p = paid(client, chain, "fx000000e7")
    with engine.db.tx() as s:
        s.get(Entitlement, p["entitlement_id"]).status = EntitlementStatus.pending
    issue = report(client)["issues"][0]
    assert issue["category"] == "receipt_without_active_entitlement"
    assert "apply" in issue["repair"]
    dry = client.post(f"/v1/admin/proofs/{p['id']}/dry-run-apply", headers=auth(STAFF_TOKEN)).json()
    assert (dry["would_apply"], dry["would_create_receipt"]) == (True, False)
    assert dry["would_activate_entitlement"] is True and dry["already_applied"] is False

    r = client.post(f"/v1/admin/proofs/{p['id']}/apply", headers=auth(STAFF_TOKEN), json=OP)
    assert r.status_code == 200, r.text
    assert (r.json()["receipt_id"], r.json()["already_applied"]) == (p["receipt_id"], False)
    with engine.db.tx() as s:
        assert s.get(Entitlement, p["entitlement_id"]).status == EntitlementStatus.active
        assert s.query(Receipt).count() == 1  # the same receipt, not a second
    assert "receipt_without_active_entitlement" not in categories(report(client))
    actions = [a.action for a in audit_actions(engine, p["entitlement_id"])]
    assert actions.count("entitlement.activated") == 2
    # Again: nothing left to do.
    r = client.post(f"/v1/admin/proofs/{p['id']}/apply", headers=auth(STAFF_TOKEN), json=OP)
    assert r.json()["already_applied"] is True


def test_a_half_written_credit_is_not_finished_while_a_check_blocks(client, engine, chain):
    p = paid(client, chain, "fx000000e8")
    with engine.db.tx() as s:
        s.get(Entitlement, p["entitlement_id"]).status = EntitlementStatus.pending
    paused = client.post("/v1/admin/rails/fake_live/pause", headers=auth(STAFF_TOKEN), json=OP)
    assert paused.status_code == 200, paused.text
    r = client.post(f"/v1/admin/proofs/{p['id']}/apply", headers=auth(STAFF_TOKEN), json=OP)
    assert r.status_code == 409 and r.json()["error"]["code"] == "apply_blocked", r.text
    with engine.db.tx() as s:
        assert s.get(Entitlement, p["entitlement_id"]).status == EntitlementStatus.pending


def test_a_revoked_entitlement_is_never_reactivated_by_apply(client, engine, chain):
    p = paid(client, chain, "fx000000e9")
    with engine.db.tx() as s:
        s.get(Entitlement, p["entitlement_id"]).status = EntitlementStatus.revoked
    r = client.post(f"/v1/admin/proofs/{p['id']}/apply", headers=auth(STAFF_TOKEN), json=OP)
    assert r.status_code == 200 and r.json()["already_applied"] is True, r.text
    with engine.db.tx() as s:
        assert s.get(Entitlement, p["entitlement_id"]).status == EntitlementStatus.revoked
