"""Assurance: every finding type of verifier/services/assurance.py, each condition created directly in
the database (bypassing the engine where it would refuse), reported by GET
/v1/admin/assurance and by the operator CLI `railproof assurance` over a real socket."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select, text
from typer.testing import CliRunner

from tests.conftest import STAFF_TOKEN, auth
from tests.helpers import FAKE_SESSION, advance
from tests.live_server import LiveServer
from verifier.cli.main import app as cli_app
from verifier.core import timeutil
from verifier.http.console.routes import _templates
from verifier.services.assurance import LIMIT, assurance_report, refresh_gauges
from verifier.services.proofs import submit_proof
from verifier.services.sessions import NewSession, open_session
from verifier.storage.models import (
    AuditEvent,
    Entitlement,
    EntitlementStatus,
    IdempotencyClaim,
    PaymentSession,
    Proof,
    ProofStatus,
    Receipt,
    SettlementEvidence,
    VerificationAttempt,
)

SESSION = dict(FAKE_SESSION)
OP = {"confirm": True, "incident_id": "INC-9", "operator_reason": "assurance test"}


def report(client, **params) -> dict:
    r = client.get("/v1/admin/assurance", headers=auth(STAFF_TOKEN), params=params)
    assert r.status_code == 200, r.text
    return report_of(r.json())


def report_of(doc: dict) -> dict:
    """The report checked for shape, its summary cut to status, score and alert count."""
    assert set(doc) == {"summary", "issues"}
    assert set(doc["summary"]) == {
        "status",
        "score",
        "alert_count",
        "period_days",
        "since",
        "truncated",
    }
    # Every finding is counted, listed or not: a cut category has one `more` issue and a
    # `truncated` entry saying how many it holds in all.
    cut = {t["category"]: t for t in doc["summary"]["truncated"]}
    more = {i["category"] for i in doc["issues"] if i["id"].endswith(":more")}
    assert more == set(cut)
    assert doc["summary"]["alert_count"] == len(doc["issues"]) - len(cut) + sum(
        t["total"] - t["listed"] for t in cut.values()
    )
    for i in doc["issues"]:
        assert set(i) == {"id", "category", "severity", "subject", "repair", "repairable"}
        assert i["repair"] and i["id"].startswith(i["category"] + ":")
        assert i["severity"] in ("critical", "error", "warning", "info")
    assert len({i["id"] for i in doc["issues"]}) == len(doc["issues"])  # ids are unique
    doc["summary"] = {k: doc["summary"][k] for k in ("status", "score", "alert_count")}
    return doc


def categories(doc: dict) -> dict[str, str]:
    return {i["category"]: i["severity"] for i in doc["issues"]}


def paid(client, chain, tx: str, finality: str = "finalized", apply: bool = True) -> dict:
    sess = client.post("/v1/payment-sessions", headers=auth(), json=SESSION).json()
    chain.txs[tx] = {
        "status": "ok",
        "to": "fatreasury",
        "amount": 1500000,
        "asset": "fusd",
        "refs": [sess["reference"]],
        "finality": finality,
    }
    proof = client.post(
        "/v1/proofs", headers=auth(), json={"session_id": sess["id"], "proof": tx}
    ).json()
    assert proof["status"] == "verified", proof
    if apply:
        r = client.post(f"/v1/admin/proofs/{proof['id']}/apply", headers=auth(STAFF_TOKEN), json=OP)
        assert r.status_code == 200, r.text
        proof["entitlement_id"] = r.json()["entitlement_id"]
        proof["receipt_id"] = r.json()["receipt_id"]
    return proof


def test_clean_database_is_ok_100(client, chain):
    assert report(client) == {
        "summary": {"status": "ok", "score": 100, "alert_count": 0},
        "issues": [],
    }
    paid(client, chain, "fx000000a1")
    # A healthy applied payment, and a revoked one, are not findings.
    p = paid(client, chain, "fx000000a2")
    client.post(
        f"/v1/admin/entitlements/{p['entitlement_id']}/revoke", headers=auth(STAFF_TOKEN), json=OP
    )
    assert report(client)["summary"] == {"status": "ok", "score": 100, "alert_count": 0}


def test_verified_proof_without_receipt_past_sla(client, engine, chain):
    p = paid(client, chain, "fx000000b1", apply=False)
    assert report(client)["issues"] == []  # within the SLA: apply may simply not have run yet
    advance(engine, 2 * 3600)
    doc = report(client)
    assert categories(doc) == {"verified_without_receipt": "warning"}
    assert doc["issues"][0]["subject"] == f"proof {p['id']}"
    assert doc["summary"] == {"status": "warning", "score": 90, "alert_count": 1}


def test_gated_rail_proof_waiting_for_staff_is_not_a_finding(client, engine, chain):
    # A gated rail's verified proof waits for a staff decision by design.
    sess = client.post(
        "/v1/payment-sessions", headers=auth(), json={**SESSION, "rail_id": "fake_gated"}
    ).json()
    chain.txs["fx000000b2"] = {
        "status": "ok",
        "to": "fatreasury",
        "amount": 1500000,
        "asset": "fusd",
        "refs": [sess["reference"]],
    }
    p = client.post(
        "/v1/proofs", headers=auth(), json={"session_id": sess["id"], "proof": "fx000000b2"}
    ).json()
    assert p["status"] == "verified"
    advance(engine, 2 * 3600)
    assert report(client)["issues"] == []


def test_pending_proof_past_sla(client, engine, chain):
    sess = client.post("/v1/payment-sessions", headers=auth(), json=SESSION).json()
    p = client.post(
        "/v1/proofs", headers=auth(), json={"session_id": sess["id"], "proof": "fx000000c1"}
    ).json()
    assert p["status"] == "pending"  # the chain has not seen it (yet)
    assert report(client)["issues"] == []
    advance(engine, 3 * 3600)
    doc = report(client)
    assert categories(doc) == {"pending_past_sla": "warning"}
    assert doc["issues"][0]["subject"] == f"proof {p['id']}"


def _pending(engine, owner: str, tx: str) -> str:
    """A proof of a transaction the chain never sees, on a long-lived session of `owner`'s
    (through the service layer: over HTTP the same, only paced under the rate limit)."""
    ps = open_session(
        engine,
        NewSession(**{**SESSION, "owner_id": owner, "expires_in_seconds": 6 * 24 * 3600}),
        actor=f"svc:{owner}",
    )
    view, _ = submit_proof(engine, ps["id"], tx, [owner])
    assert view["status"] == "pending", view
    return str(view["id"])


def test_one_tenants_flood_does_not_hide_another_tenants_finding(client, engine, chain):
    """A tenant submitting LIMIT proofs of transactions that never land fills
    `pending_past_sla`; another tenant's proof stuck pending, newer than all of them, is still
    listed (each owner's oldest first, round by round, oldest first within a round), and the
    report says the category was cut and by how much: in its issues, its summary, the CLI's
    text and the console's page."""
    bob = []
    for n in range(LIMIT):
        bob.append(_pending(engine, "bob", f"fxb{n:07d}"))
        advance(engine, 1)
    advance(engine, 60)
    alice = _pending(engine, "alice", "fxa0000001")
    advance(engine, 3 * 3600)

    raw = client.get("/v1/admin/assurance", headers=auth(STAFF_TOKEN)).json()
    assert raw["summary"]["truncated"] == [
        {"category": "pending_past_sla", "listed": LIMIT, "total": LIMIT + 1}
    ]
    doc = report_of(raw)
    assert doc["summary"]["alert_count"] == LIMIT + 1
    listed = [i["subject"] for i in doc["issues"] if i["id"] != "pending_past_sla:more"]
    assert listed == [f"proof {p}" for p in (bob[0], alice, *bob[1 : LIMIT - 1])]
    more = doc["issues"][-1]
    assert more["id"] == "pending_past_sla:more" and more["severity"] == "warning"
    assert more["subject"] == (
        f"more than {LIMIT} pending_past_sla findings: {LIMIT + 1} in all, 1 not listed"
    )
    assert not more["repairable"]
    assert report(client) == doc  # the same order every time

    with LiveServer(client.app) as srv:
        r = _cli(srv.url)
    assert r.exit_code == 0, r.output
    assert f"{LIMIT + 1} findings" in r.stdout
    assert f"not all listed: pending_past_sla: {LIMIT} of {LIMIT + 1}" in r.stdout
    page = _templates().get_template("_assurance.html").render(report=assurance_report(engine))
    assert f"pending_past_sla — {LIMIT} of {LIMIT + 1}" in page


def test_stuck_claims_are_windowed_before_the_list_is_cut(client, engine):
    """LIMIT stuck claims older than the window, one inside it: the window's report lists the
    one inside (the window is a condition of the query, not a filter of its first LIMIT
    rows), and its list is whole."""
    at = timeutil.process_now()
    with engine.db.tx() as s:
        for n in range(LIMIT + 1):
            s.add(
                IdempotencyClaim(
                    principal="svc:bob" if n < LIMIT else "svc:alice",
                    endpoint="POST /v1/proofs",
                    key=f"k-{n:04d}",
                    request_hash="0" * 64,
                    status="in_progress",
                    created_at=at - timedelta(days=5 if n < LIMIT else 1),
                )
            )
    raw = client.get(
        "/v1/admin/assurance", headers=auth(STAFF_TOKEN), params={"period_days": 2}
    ).json()
    assert raw["summary"]["truncated"] == []
    stuck = [i["subject"] for i in report_of(raw)["issues"]]
    assert stuck == [f"idempotency claim svc:alice POST /v1/proofs key k-{LIMIT:04d}"]
    # Without the window the list is cut, and says so.
    doc = client.get("/v1/admin/assurance", headers=auth(STAFF_TOKEN)).json()
    assert doc["summary"]["truncated"] == [
        {"category": "idempotency_claim_stuck", "listed": LIMIT, "total": LIMIT + 1}
    ]


def test_receipt_without_active_entitlement(client, engine, chain):
    p = paid(client, chain, "fx000000d1")
    with engine.db.tx() as s:  # what a half-applied write would leave
        s.get(Entitlement, p["entitlement_id"]).status = EntitlementStatus.pending
    doc = report(client)
    assert categories(doc) == {"receipt_without_active_entitlement": "critical"}
    assert doc["issues"][0]["subject"] == f"receipt {p['receipt_id']}"
    assert doc["summary"]["status"] == "critical" and doc["summary"]["score"] == 60


@pytest.mark.parametrize(
    "finality,reorged,shown", [("reorged", True, "reorged"), ("confirmed", False, "confirmed")]
)
def test_active_entitlement_whose_settlement_is_reorged_or_not_final(
    client, engine, chain, finality, reorged, shown
):
    p = paid(client, chain, "fx000000e1")
    with engine.db.tx() as s:  # the chain moved after apply: a newer observation
        att = s.scalar(select(VerificationAttempt).where(VerificationAttempt.proof_id == p["id"]))
        s.add(
            SettlementEvidence(
                proof_id=p["id"],
                attempt_id=att.id,
                finality=finality,
                is_final=False,
                reorged=reorged,
                slot=2,
                detail="moved",
                source="cassette",
                observed_at=engine.now(),
            )
        )
    doc = report(client)
    assert categories(doc) == {"active_entitlement_unsettled": "critical"}
    issue = doc["issues"][0]
    assert issue["subject"] == f"entitlement {p['entitlement_id']}"
    assert shown in issue["repair"]


def test_a_flagged_entitlement_whose_proof_failed_is_named_and_counted_by_the_alert(
    client, engine, chain
):
    # The alert's gauge counts flagged active entitlements whose payment does not stand;
    # whatever it counts, assurance names (the runbook's first step), including a proof that
    # failed while its latest settlement still reads final.
    p = paid(client, chain, "fx000000e2")
    refresh_gauges(engine)
    assert "railproof_reorged_active_entitlements 0.0" in engine.metrics.render().decode()
    with engine.db.tx() as s:
        s.get(Entitlement, p["entitlement_id"]).reorg_flagged = True
        proof = s.get(Proof, p["id"])
        proof.status, proof.failure_code = ProofStatus.failed, "nonce_reused"
    doc = report(client)
    assert categories(doc) == {"active_entitlement_payment_gone": "critical"}
    issue = doc["issues"][0]
    assert issue["subject"] == f"entitlement {p['entitlement_id']}"
    assert "failed (nonce_reused)" in issue["repair"]
    refresh_gauges(engine)
    assert "railproof_reorged_active_entitlements 1.0" in engine.metrics.render().decode()
    # Revoked, it is neither counted nor named.
    with engine.db.tx() as s:
        s.get(Entitlement, p["entitlement_id"]).status = EntitlementStatus.revoked
    refresh_gauges(engine)
    assert "railproof_reorged_active_entitlements 0.0" in engine.metrics.render().decode()
    assert "active_entitlement_payment_gone" not in categories(report(client))


def test_one_transfer_claimed_twice(client, engine, chain):
    p = paid(client, chain, "fx000000f1")
    # A second receipt for the same on-chain transfer, under another fingerprint (what a
    # normalization bug or a second network spelling would let through).
    with engine.db.tx() as s:
        orig = s.get(Proof, p["id"])
        ps = s.get(PaymentSession, orig.session_id)
        now = engine.now()
        ps2 = PaymentSession(
            owner_id="alice",
            rail_id=ps.rail_id,
            access_product_id="pro",
            amount=ps.amount,
            network=ps.network,
            asset=ps.asset,
            recipient=ps.recipient,
            reference="fa" + uuid.uuid4().hex[:12],
            status="paid",
            created_at=now,
            expires_at=ps.expires_at,
        )
        s.add(ps2)
        s.flush()
        p2 = Proof(
            fingerprint=uuid.uuid4().hex * 2,
            rail_id=orig.rail_id,
            proof_type=orig.proof_type,
            ref=orig.ref,
            raw=orig.raw.upper(),
            owner_id="alice",
            session_id=ps2.id,
            status="verified",
            detail="dup",
            created_at=now,
            updated_at=now,
        )
        s.add(p2)
        s.flush()
        att = VerificationAttempt(
            proof_id=p2.id,
            status="verified",
            detail="dup",
            observed={},
            rpc_calls=1,
            latency_ms=1,
            source="cassette",
            created_at=now,
        )
        s.add(att)
        s.flush()
        ev = SettlementEvidence(
            proof_id=p2.id,
            attempt_id=att.id,
            finality="finalized",
            is_final=True,
            reorged=False,
            detail="dup",
            source="cassette",
            observed_at=now,
        )
        s.add(ev)
        s.flush()
        r = Receipt(
            proof_id=p2.id,
            session_id=ps2.id,
            settlement_id=ev.id,
            owner_id="alice",
            access_product_id="pro",
            rail_id=orig.rail_id,
            amount=ps.amount,
            created_by="nobody",
            created_at=now,
        )
        s.add(r)
        s.flush()
        s.add(
            Entitlement(
                owner_id="alice",
                access_product_id="pro",
                session_id=ps2.id,
                status="active",
                receipt_id=r.id,
                created_at=now,
                updated_at=now,
            )
        )
    doc = report(client)
    assert categories(doc) == {"transfer_claimed_twice": "critical"}
    assert "2 receipts" in doc["issues"][0]["repair"]


def _tamper_audit(engine) -> int:
    """Rewrite one audit row's reason: the append-only trigger must go first."""
    with engine.db.tx() as s:
        target = s.scalar(select(AuditEvent.id).order_by(AuditEvent.id).offset(1).limit(1))
        if engine.db.postgres:
            s.execute(text("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only"))
        else:
            s.execute(text("DROP TRIGGER audit_events_no_update"))
        s.execute(
            text("UPDATE audit_events SET reason = 'nothing to see' WHERE id = :i"), {"i": target}
        )
        if engine.db.postgres:
            s.execute(text("ALTER TABLE audit_events ENABLE TRIGGER audit_events_append_only"))
    return target


def test_append_only_trigger_refuses_updates(client, engine, chain):
    paid(client, chain, "fx000000a9")
    with pytest.raises(Exception) as e:
        with engine.db.tx() as s:
            s.execute(text("UPDATE audit_events SET reason = 'x'"))
    assert "append-only" in str(e.value)


def test_broken_audit_chain(client, engine, chain):
    paid(client, chain, "fx000000a8")
    broken = _tamper_audit(engine)
    doc = report(client)
    assert categories(doc) == {"audit_chain_broken": "critical"}
    assert doc["issues"][0]["subject"] == f"audit event {broken}"
    assert doc["summary"]["status"] == "critical"


def test_findings_add_up_in_the_score(client, engine, chain):
    p = paid(client, chain, "fx000000b9")
    with engine.db.tx() as s:
        s.get(Entitlement, p["entitlement_id"]).status = EntitlementStatus.pending
    paid(client, chain, "fx000000b8", apply=False)
    _tamper_audit(engine)
    advance(engine, 3 * 3600)
    doc = report(client)
    assert set(categories(doc)) == {
        "receipt_without_active_entitlement",
        "verified_without_receipt",
        "audit_chain_broken",
    }
    assert doc["summary"]["score"] == 100 - 40 - 40 - 10 and doc["summary"]["status"] == "critical"


# -- the operator CLI ----------------------------------------------------------------------


def _cli(server_url: str, *args: str):
    env = {"RAILPROOF_API_BASE_URL": server_url, "RAILPROOF_STAFF_TOKEN": STAFF_TOKEN}
    return CliRunner().invoke(cli_app, ["assurance", *args], env=env)


def test_cli_assurance_reports_the_same(client, engine, chain):
    with LiveServer(client.app) as srv:
        r = _cli(srv.url, "--json")
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["summary"] == {
            "status": "ok",
            "score": 100,
            "alert_count": 0,
            "period_days": None,
            "since": None,
            "truncated": [],
        }
        r = _cli(srv.url)
        assert r.exit_code == 0 and "assurance: ok (score 100, 0 findings)" in r.stdout

        p = paid(client, chain, "fx000000c9", apply=False)
        advance(engine, 2 * 3600)
        r = _cli(srv.url, "--json")
        assert r.exit_code == 0, r.output  # warnings do not fail the command
        doc = report_of(json.loads(r.stdout))
        assert doc == report(client)
        assert doc["issues"][0]["subject"] == f"proof {p['id']}"

        _tamper_audit(engine)
        r = _cli(srv.url)
        assert r.exit_code == 1, r.output  # a critical finding does
        assert "assurance: critical" in r.stdout and "audit_chain_broken" in r.stdout


def test_cli_assurance_shows_a_verified_transfer_not_credited(client, chain):
    """One session paid twice (both transfers carry its reference): the first is credited,
    the second waits for a refund, and `railproof assurance` says so."""
    sess = client.post("/v1/payment-sessions", headers=auth(), json=SESSION).json()
    proofs = []
    for tx in ("fx000000d1", "fx000000d2"):
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
    with LiveServer(client.app) as srv:
        r = _cli(srv.url)
        assert r.exit_code == 0, r.output  # an error, not critical
        line = next(ln for ln in r.stdout.splitlines() if "verified_transfer_not_credited" in ln)
        assert f"proof {proofs[1]}" in line and "refund" in line, r.stdout
        assert proofs[0] not in r.stdout
        doc = report_of(json.loads(_cli(srv.url, "--json").stdout))
    found = [i for i in doc["issues"] if i["category"] == "verified_transfer_not_credited"]
    assert [(i["subject"], i["severity"]) for i in found] == [(f"proof {proofs[1]}", "error")]
