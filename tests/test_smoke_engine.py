from tests.conftest import STAFF_TOKEN, auth


def test_smoke(client, chain):
    r = client.post(
        "/v1/payment-sessions",
        headers=auth(),
        json={
            "owner_id": "alice",
            "rail_id": "fake_live",
            "access_product_id": "pro",
            "amount": 1500000,
            "recipient": "fatreasury",
        },
    )
    assert r.status_code == 201, r.text
    sess = r.json()
    chain.txs["fx00112233"] = {
        "status": "ok",
        "to": "fatreasury",
        "amount": 1500000,
        "asset": "fusd",
        "refs": [sess["reference"]],
    }
    r = client.post(
        "/v1/proofs", headers=auth(), json={"session_id": sess["id"], "proof": "fx00112233"}
    )
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "verified", r.json()
    pid = r.json()["id"]
    r = client.post(f"/v1/admin/proofs/{pid}/dry-run-apply", headers=auth(STAFF_TOKEN), json={})
    assert r.json()["would_apply"] is True, r.json()
    r = client.post(
        f"/v1/admin/proofs/{pid}/apply",
        headers=auth(STAFF_TOKEN),
        json={"confirm": True, "incident_id": "INC-1", "operator_reason": "smoke"},
    )
    assert r.status_code == 200, r.text
    r = client.get("/v1/entitlements?owner_id=alice", headers=auth())
    assert r.json()[0]["status"] == "active"
