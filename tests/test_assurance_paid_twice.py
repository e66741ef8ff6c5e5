"""A second transfer for a session another proof paid is "a refund to arrange, not a receipt
to create" (runbook, RailproofApplyGateBlocks), reported as `verified_transfer_not_credited`.
Assurance listed the same proof as `verified_without_receipt` too, offered as repairable ("the
repair applies it through the apply gate": always 409 apply_blocked, the session is paid) and
counted twice in the score; a reconciliation run reported it twice. Once now, as the money to
send back it is."""

from __future__ import annotations

from tests.conftest import STAFF_TOKEN, auth
from tests.helpers import FAKE_SESSION, advance
from verifier.services import reconciliation

OP = {"confirm": True, "incident_id": "INC-DOC", "operator_reason": "docs walk"}


def _session_paid_twice(client, chain) -> tuple[str, str]:
    sess = client.post("/v1/payment-sessions", headers=auth(), json=dict(FAKE_SESSION)).json()
    proofs = []
    for tx in ("fx0000d0c1", "fx0000d0c2"):
        chain.txs[tx] = {
            "status": "ok",
            "to": "fatreasury",
            "amount": 1500000,
            "asset": "fusd",
            "refs": [sess["reference"]],
        }
        r = client.post("/v1/proofs", headers=auth(), json={"session_id": sess["id"], "proof": tx})
        assert r.json()["status"] == "verified", r.text
        proofs.append(r.json()["id"])
    r = client.post(f"/v1/admin/proofs/{proofs[0]}/apply", headers=auth(STAFF_TOKEN), json=OP)
    assert r.json()["applied"] is True, r.text
    return proofs[0], proofs[1]


def test_no_repairable_issue_offers_an_apply_that_the_gate_always_refuses(client, chain, engine):
    _, second = _session_paid_twice(client, chain)
    advance(engine, 2 * 3600)  # past the verified-without-receipt SLA
    doc = client.get("/v1/admin/assurance", headers=auth(STAFF_TOKEN)).json()
    about_second = [i for i in doc["issues"] if i["subject"] == f"proof {second}"]
    # The README's category for it, once.
    assert [
        i["category"] for i in about_second if i["category"] == "verified_transfer_not_credited"
    ]
    # Every issue offered as repairable must be repairable: the runbook says this proof is a
    # refund to arrange, not a receipt to create.
    for issue in about_second:
        if issue["repairable"]:
            r = client.post(
                "/v1/admin/assurance/repairs",
                headers=auth(STAFF_TOKEN),
                json={"issue_id": issue["id"], **OP},
            )
            assert r.status_code == 200, (
                f"{issue['category']} is offered as repairable ({issue['repair']!r}) but its "
                f"repair answers {r.status_code} {r.text[:200]}"
            )
    # One proof, one finding: the same money is not counted twice in the score.
    assert len(about_second) == 1, [i["category"] for i in about_second]


def test_a_reconciliation_run_reports_it_once(client, chain, engine):
    _, second = _session_paid_twice(client, chain)
    advance(engine, 2 * 3600)
    run = reconciliation.run(
        engine,
        reconciliation.RunRequest(
            scope="rail_proofs", incident_id="INC-DOC", operator_reason="docs walk"
        ),
        "ops1",
    )
    kinds = [f["kind"] for f in run["findings"] if f["subjects"].get("proof_id") == second]
    assert kinds == ["verified_transfer_not_credited"], kinds
