"""HTTP end to end on recorded chain data: the service and staff APIs over an engine that
replays the repository's cassettes (real Ethereum receipts, Solana transactions executed by the
SPL programs), with the clock pinned to when each payment happened."""

from __future__ import annotations

import copy
from datetime import UTC, datetime

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.conftest import OTHER_SERVICE_TOKEN, STAFF_TOKEN, STAFF_TOKEN_2, auth
from tests.gates import pass_release_gates
from tests.helpers import (
    FIXTURES,
    GATE_CHECKS,
    SwitchableTransport,
    advance,
    audit_actions,
    cassette_engine,
    cassette_expect,
    counts,
    recorded_calls,
)
from verifier.http.api import create_app
from verifier.storage.models import RailState, Receipt
from verifier.worker import loop as worker

SOL = FIXTURES / "solana" / "generated"
TREASURY = "C1bL1CaQ6PjLKZyYRn11ZtydLqEfGUxdcvUS3frx8ocg"
STAFF, STAFF2 = auth(STAFF_TOKEN), auth(STAFF_TOKEN_2)
OPS = {"incident_id": "INC-7", "operator_reason": "customer ticket 42"}

# The real Ethereum USDC transfer (fixtures/evm/eth_usdc_transfer.json), mined at
# 2025-02-24 11:01:35 UTC: the session opens half an hour before it.
EVM_USDC_TX = "0x225853c513c75a4276979841a480ad1856bc649c496c16765107cb5d62d1def7"
EVM_USDC_TO = "0xc1AF05a7A4F27Cd1b61De823EA31aB5049b38eA8"
EVM_USDC_AMOUNT = 59691936965
EVM_USDC_FROM = "0x28C6c06298d514Db089934071355E5743bf21d60"
EVM_CLOCK = datetime(2025, 2, 24, 10, 30, tzinfo=UTC)


def _client(engine) -> TestClient:
    return TestClient(create_app(engine), raise_server_exceptions=False)


@pytest.fixture
def sol_engine(db_url):
    e = cassette_engine(db_url)
    yield e
    e.db.dispose()


def open_session(c: TestClient, key: str | None = None, token=None, **body):
    body = {
        "owner_id": "alice",
        "rail_id": "solana_usdc",
        "access_product_id": "pro",
        "recipient": TREASURY,
        **body,
    }
    headers = auth(token) if token else auth()
    if key:
        headers["Idempotency-Key"] = key
    return c.post("/v1/payment-sessions", headers=headers, json=body)


def demo_session_and_proof(c: TestClient) -> tuple[dict, dict]:
    """The demo payment (finalized, with reference key and memo) for a session of alice."""
    demo = __import__("json").loads((SOL / "demo_payment.json").read_text())["demo"]
    r = open_session(c, amount=demo["amount"], reference=demo["reference"], memo=demo["memo"])
    assert r.status_code == 201, r.text
    sess = r.json()
    r = c.post(
        "/v1/proofs", headers=auth(), json={"session_id": sess["id"], "proof": demo["signature"]}
    )
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "verified", r.json()
    return sess, r.json()


def _finalized(status_call: dict) -> dict:
    """The same signature status one epoch later: the cluster finalized the block."""
    call = copy.deepcopy(status_call)
    call["result"]["context"]["slot"] += 40
    call["result"]["value"][0].update(confirmations=None, confirmationStatus="finalized")
    return call


@pytest.mark.parametrize(
    "over",
    [
        {"confirmations": 2**64, "confirmationStatus": "confirmed"},
        {"slot": 2**63},
    ],
    ids=["confirmations", "slot"],
)
def test_a_status_integer_no_column_holds_is_pending_not_a_500(sol_engine, over):
    # The node's slot or confirmation count went into the settlement's BIGINT columns as
    # given: past what they hold, POST /v1/proofs answered 500. It is a malformed answer.
    calls = recorded_calls(SOL / "demo_payment.json")
    st = next(c for c in calls if c["method"] == "getSignatureStatuses")
    st["result"]["value"][0].update(over)
    sol_engine.chains.set_transport("solana-mainnet", SwitchableTransport(calls))
    demo = cassette_expect(SOL / "demo_payment.json")
    c = _client(sol_engine)
    r = open_session(c, amount=demo["amount"], reference=demo["reference"], memo=demo["memo"])
    assert r.status_code == 201, r.text
    r = c.post(
        "/v1/proofs",
        headers=auth(),
        json={"session_id": r.json()["id"], "proof": demo["signature"]},
    )
    assert r.status_code == 201, r.text
    assert (r.json()["status"], r.json()["failure_code"]) == ("pending", "rpc_unavailable")


def test_session_to_finalized_apply_and_revoke(sol_engine):
    calls = recorded_calls(SOL / "confirmed_not_final.json")
    sig = calls[0]["params"][0]
    chain = SwitchableTransport(calls)
    sol_engine.chains.set_transport("solana-mainnet", chain)
    c = _client(sol_engine)

    ref = cassette_expect(SOL / "confirmed_not_final.json")["reference"]
    r = open_session(c, key="sess-1", amount="5000000", reference=ref)
    assert r.status_code == 201, r.text
    sess = r.json()
    assert sess["status"] == "open" and sess["amount"] == "5000000"
    assert sess["payment_requirements"]["url"].startswith(f"solana:{TREASURY}?amount=5")
    # The same Idempotency-Key and body answer the stored session, not a second one.
    again = open_session(c, key="sess-1", amount="5000000", reference=ref)
    assert again.status_code == 201 and again.json()["id"] == sess["id"]

    r = c.post("/v1/proofs", headers=auth(), json={"session_id": sess["id"], "proof": sig})
    assert r.status_code == 201, r.text
    proof = r.json()
    assert proof["status"] == "verified"
    assert proof["settlement"]["finality"] == "confirmed" and not proof["settlement"]["is_final"]
    pid = proof["id"]

    # Verified but only confirmed: the gate names exactly that.
    rep = c.post(f"/v1/admin/proofs/{pid}/dry-run-apply", headers=STAFF, json=OPS).json()
    assert rep["would_apply"] is False
    assert [b["code"] for b in rep["blockers"]] == ["settlement_final"]
    r = c.post(f"/v1/admin/proofs/{pid}/apply", headers=STAFF, json={"confirm": True, **OPS})
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "apply_blocked"
    assert [b["code"] for b in r.json()["error"]["report"]["blockers"]] == ["settlement_final"]

    # The cluster finalizes the block; the worker's finality refresh sees it.
    chain.load([calls[0], _finalized(calls[1])])
    advance(sol_engine, 60)
    assert worker.refresh_finality(sol_engine, "w1", 100) == 1
    proof = c.get(f"/v1/proofs/{pid}", headers=auth()).json()
    assert proof["settlement"]["finality"] == "finalized" and proof["settlement"]["is_final"]
    ev = c.get(f"/v1/admin/proofs/{pid}/settlement-evidence", headers=STAFF).json()
    assert [(e["finality"], e["is_final"]) for e in ev] == [
        ("confirmed", False),
        ("finalized", True),
    ]

    rep = c.post(f"/v1/admin/proofs/{pid}/dry-run-apply", headers=STAFF, json=OPS).json()
    assert rep["would_apply"] and rep["would_create_receipt"] and rep["would_activate_entitlement"]
    assert [ch["name"] for ch in rep["checks"]] == GATE_CHECKS
    assert all(ch["passed"] for ch in rep["checks"]) and rep["blockers"] == []

    r = c.post(f"/v1/admin/proofs/{pid}/apply", headers=STAFF, json={"confirm": True, **OPS})
    assert r.status_code == 200, r.text
    applied = r.json()
    assert applied["applied"] is True and applied["receipt_id"]
    ents = c.get("/v1/entitlements", params={"owner_id": "alice"}, headers=auth()).json()
    assert [(e["status"], e["receipt_id"], e["id"]) for e in ents] == [
        ("active", applied["receipt_id"], applied["entitlement_id"])
    ]
    assert c.get(f"/v1/payment-sessions/{sess['id']}", headers=auth()).json()["status"] == "paid"
    assert c.get(f"/v1/proofs/{pid}", headers=auth()).json()["receipt_id"] == applied["receipt_id"]

    # Apply again: the same receipt comes back and nothing is written.
    before = counts(sol_engine)
    r = c.post(f"/v1/admin/proofs/{pid}/apply", headers=STAFF, json={"confirm": True, **OPS})
    assert r.status_code == 200
    assert r.json()["already_applied"] is True and r.json()["receipt_id"] == applied["receipt_id"]
    assert counts(sol_engine) == before
    assert [a.action for a in audit_actions(sol_engine, pid)].count("proof.applied") == 1

    # Revoke needs confirmation, an incident id and a reason.
    ent_id = applied["entitlement_id"]
    url = f"/v1/admin/entitlements/{ent_id}/revoke"
    r = c.post(url, headers=STAFF, json=OPS)
    assert r.status_code == 422 and r.json()["error"]["field"] == "confirm"
    r = c.post(url, headers=STAFF, json={"confirm": True, "operator_reason": "x"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "operator_context_required"
    r = c.post(url, headers=STAFF, json={"confirm": True, "incident_id": "INC-7"})
    assert r.status_code == 422
    assert (
        c.get("/v1/entitlements", params={"owner_id": "alice"}, headers=auth()).json()[0]["status"]
        == "active"
    )
    r = c.post(
        url,
        headers=STAFF,
        json={"confirm": True, "incident_id": "INC-9", "operator_reason": "chargeback confirmed"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "revoked"
    assert (
        c.get("/v1/entitlements", params={"owner_id": "alice"}, headers=auth()).json()[0]["status"]
        == "revoked"
    )
    assert (
        c.post(
            url,
            headers=STAFF,
            json={"confirm": True, "incident_id": "INC-9", "operator_reason": "again"},
        ).status_code
        == 409
    )
    audit = c.get("/v1/admin/audit", params={"subject_id": ent_id}, headers=STAFF).json()
    revoked = [a for a in audit if a["action"] == "entitlement.revoked"]
    assert len(revoked) == 1
    assert (revoked[0]["incident_id"], revoked[0]["reason"], revoked[0]["actor"]) == (
        "INC-9",
        "chargeback confirmed",
        "ops1",
    )
    assert c.get("/v1/admin/audit/verify", headers=STAFF).json()["ok"] is True


def test_gated_rail_needs_every_gate_and_the_staff_receipt_path(db_url):
    e = cassette_engine(db_url, clock=EVM_CLOCK)
    c = _client(e)
    try:
        r = open_session(
            c,
            rail_id="evm_usdc",
            recipient=EVM_USDC_TO,
            amount=EVM_USDC_AMOUNT,
            payer=EVM_USDC_FROM,
        )
        assert r.status_code == 201, r.text
        r = c.post(
            "/v1/proofs", headers=auth(), json={"session_id": r.json()["id"], "proof": EVM_USDC_TX}
        )
        assert r.status_code == 201, r.text
        proof = r.json()
        assert proof["status"] == "verified", (proof["failure_code"], proof.get("detail"))
        assert proof["settlement"]["is_final"] and proof["settlement"]["block_number"] == 0x14E6867
        pid = proof["id"]

        def blockers() -> set[str]:
            rep = c.post(
                f"/v1/admin/proofs/{pid}/dry-run-apply", headers=STAFF, json={"path": "receipt"}
            ).json()
            assert [ch["name"] for ch in rep["checks"]] == GATE_CHECKS
            assert rep["would_apply"] is (not rep["blockers"])
            return {b["code"] for b in rep["blockers"]}

        assert blockers() == {
            "live_apply_enabled",
            "rail_production_enabled",
            "rail_allowlisted",
            "receipt_creation_allowed",
        }
        receipt_url = f"/v1/admin/proofs/{pid}/receipt"
        r = c.post(receipt_url, headers=STAFF, json={"confirm": True, **OPS})
        assert r.status_code == 409 and r.json()["error"]["code"] == "apply_blocked"

        # Production enablement: two different staff members.
        r = c.post(
            "/v1/admin/rails/evm_usdc/production/request",
            headers=STAFF,
            json={"enable": True, **OPS},
        )
        assert r.status_code == 201 and r.json()["status"] == "pending"
        approval = r.json()["approval_id"]
        approve_url = f"/v1/admin/approvals/{approval}/approve"
        r = c.post(approve_url, headers=STAFF, json={"confirm": True, **OPS})
        assert r.status_code == 403 and r.json()["error"]["code"] == "two_person_rule"
        assert "rail_production_enabled" in blockers()
        # Two people are not enough: the release gates need passing evidence first.
        r = c.post(approve_url, headers=STAFF2, json={"confirm": True, **OPS})
        assert r.status_code == 409 and r.json()["error"]["code"] == "release_gates_incomplete"
        assert "rail_production_enabled" in blockers()
        pass_release_gates(c, "evm_usdc")
        r = c.post(approve_url, headers=STAFF2, json={"confirm": True, **OPS})
        assert r.status_code == 200 and r.json()["approved_by"] == "ops2"
        assert blockers() == {"live_apply_enabled", "rail_allowlisted", "receipt_creation_allowed"}

        e.settings.live_apply = True
        assert blockers() == {"rail_allowlisted", "receipt_creation_allowed"}
        e.settings.apply_rail_allowlist = [*e.settings.apply_rail_allowlist, "evm_usdc"]
        assert blockers() == {"receipt_creation_allowed"}
        e.settings.receipt_creation_rails = ["evm_usdc"]
        assert blockers() == set()
        # Staff apply is not the receipt path for a gated rail.
        r = c.post(f"/v1/admin/proofs/{pid}/apply", headers=STAFF, json={"confirm": True, **OPS})
        assert r.status_code == 409
        assert [b["code"] for b in r.json()["error"]["report"]["blockers"]] == [
            "receipt_creation_allowed"
        ]

        r = c.post(receipt_url, headers=STAFF, json=OPS)
        assert r.status_code == 422 and r.json()["error"]["field"] == "confirm"
        r = c.post(receipt_url, headers=STAFF, json={"confirm": True, **OPS})
        assert r.status_code == 200, r.text
        rid = r.json()["receipt_id"]
        ents = c.get("/v1/entitlements", params={"owner_id": "alice"}, headers=auth()).json()
        assert [(x["status"], x["receipt_id"]) for x in ents] == [("active", rid)]
        created = [
            a
            for a in c.get("/v1/admin/audit", params={"subject_id": rid}, headers=STAFF).json()
            if a["action"] == "receipt.created"
        ]
        assert created and created[0]["actor"] == "ops1" and created[0]["incident_id"] == "INC-7"
    finally:
        e.db.dispose()


def _usdt_swap_calls() -> tuple[list[dict], int]:
    """The recorded USDT swap receipt. The recording has no block timestamp, so the session
    window cannot be checked; the block header gets the timestamp a real node returns."""
    calls = recorded_calls(FIXTURES / "evm" / "eth_usdt_swap.json")
    ts = 1684411199  # block 17290160 (2023-05-18)
    for c in calls:
        if c["method"] == "eth_getBlockByNumber" and c["params"][0] == "0x107d7b0":
            c["result"]["timestamp"] = hex(ts)
    return calls, ts


def test_review_only_proof_never_would_apply_whatever_flags(db_url):
    calls, ts = _usdt_swap_calls()
    e = cassette_engine(
        db_url,
        clock=datetime.fromtimestamp(ts - 600, tz=UTC),
        live_apply=True,
        apply_rail_allowlist=["solana_usdc", "erc20_usdt"],
        receipt_creation_rails=["erc20_usdt"],
    )
    e.chains.set_transport("ethereum", SwitchableTransport(calls))
    c = _client(e)
    try:
        # Review-only rails can never be production-enabled, not even by two people...
        r = c.post(
            "/v1/admin/rails/erc20_usdt/production/request",
            headers=STAFF,
            json={"enable": True, **OPS},
        )
        assert r.status_code == 409 and r.json()["error"]["code"] == "review_only_rail"
        # ...and a database row that says otherwise is not believed.
        with e.db.tx() as s:
            s.get(RailState, "erc20_usdt").production_enabled = True

        r = open_session(
            c,
            rail_id="erc20_usdt",
            recipient="0x901c7c311d39e0b26257219765e71e8db3107a81",
            amount=4361142255,
            payer="0xa82f91562e1cef9dec93a4ad328d01ea7827910a",
        )
        assert r.status_code == 201, r.text
        r = c.post(
            "/v1/proofs",
            headers=auth(),
            json={
                "session_id": r.json()["id"],
                "proof": "0xcd718a69d478340dc28fdf6bf8056374a52dc95841b44083163ced8dfe29310c",
            },
        )
        assert r.status_code == 201, r.text
        proof = r.json()
        assert (proof["status"], proof["failure_code"]) == ("requires_review", "review_only_rail")
        attempts = c.get(f"/v1/admin/proofs/{proof['id']}/attempts", headers=STAFF).json()
        assert attempts[-1]["observed"]["amount"] == "4361142255"

        rep = c.post(f"/v1/admin/proofs/{proof['id']}/dry-run-apply", headers=STAFF, json={}).json()
        assert rep["would_apply"] is False and rep["would_create_receipt"] is False
        codes = {b["code"] for b in rep["blockers"]}
        assert {"proof_verified", "rail_production_enabled", "receipt_creation_allowed"} <= codes
        for path in ("apply", "receipt"):
            r = c.post(
                f"/v1/admin/proofs/{proof['id']}/{path}",
                headers=STAFF,
                json={"confirm": True, **OPS},
            )
            assert r.status_code == 409, r.text
        with e.db.tx() as s:
            assert s.scalars(select(Receipt)).all() == []
    finally:
        e.db.dispose()


def test_paused_rail_blocks_apply_refuses_new_work_and_keeps_reads(sol_engine):
    c = _client(sol_engine)
    sess, proof = demo_session_and_proof(c)
    pid = proof["id"]
    other = open_session(c, amount=1500000)
    assert other.status_code == 201

    r = c.post("/v1/admin/rails/solana_usdc/pause", headers=STAFF, json={"confirm": True})
    assert r.status_code == 422  # no incident id, no reason: not paused
    r = c.post("/v1/admin/rails/solana_usdc/pause", headers=STAFF, json={"confirm": True, **OPS})
    assert r.status_code == 200 and r.json()["paused"] is True

    rep = c.post(f"/v1/admin/proofs/{pid}/dry-run-apply", headers=STAFF, json={}).json()
    assert [b["code"] for b in rep["blockers"]] == ["rail_not_paused"]
    r = c.post(f"/v1/admin/proofs/{pid}/apply", headers=STAFF, json={"confirm": True, **OPS})
    assert r.status_code == 409
    assert [b["code"] for b in r.json()["error"]["report"]["blockers"]] == ["rail_not_paused"]

    r = open_session(c, amount=1000000)
    assert r.status_code == 409 and r.json()["error"]["code"] == "rail_paused"
    r = c.post(
        "/v1/proofs",
        headers=auth(),
        json={
            "session_id": other.json()["id"],
            "proof": "jWBMRhxbBNqUUrt8PotW9D6Jkc66fULBhVA98XS69siqT6br4z5iaqXPMjdFLYDzFpjEb2pqe5vvvoxdf6bbH8i",
        },
    )
    assert r.status_code == 409 and r.json()["error"]["code"] == "rail_paused"

    # Reads keep working.
    assert c.get(f"/v1/proofs/{pid}", headers=auth()).json()["status"] == "verified"
    assert c.get(f"/v1/payment-sessions/{sess['id']}", headers=auth()).json()["status"] == "open"
    assert (
        c.get("/v1/entitlements", params={"owner_id": "alice"}, headers=auth()).status_code == 200
    )
    assert len(c.get("/v1/admin/proofs", headers=STAFF).json()) == 1
    ready = {x["rail_id"]: x for x in c.get("/v1/admin/rails/readiness", headers=STAFF).json()}
    assert ready["solana_usdc"]["paused"] is True
    metrics = c.get("/metrics").text
    assert 'railproof_rail_paused_attempts_total{rail_id="solana_usdc"} 2.0' in metrics

    r = c.post("/v1/admin/rails/solana_usdc/resume", headers=STAFF, json={"confirm": True, **OPS})
    assert r.status_code == 200 and r.json()["paused"] is False
    r = c.post(f"/v1/admin/proofs/{pid}/apply", headers=STAFF, json={"confirm": True, **OPS})
    assert r.status_code == 200 and r.json()["applied"] is True
    actions = [(a.action, a.incident_id) for a in audit_actions(sol_engine, "solana_usdc")]
    assert actions == [("rail.paused", "INC-7"), ("rail.resumed", "INC-7")]


def test_cross_owner_replay_is_refused_and_the_original_untouched(sol_engine):
    c = _client(sol_engine)
    _, proof = demo_session_and_proof(c)
    bob = open_session(c, token=OTHER_SERVICE_TOKEN, owner_id="bob", amount=25000000)
    assert bob.status_code == 201, bob.text
    sig = __import__("json").loads((SOL / "demo_payment.json").read_text())["demo"]["signature"]
    before = counts(sol_engine)

    r = c.post(
        "/v1/proofs",
        headers=auth(OTHER_SERVICE_TOKEN),
        json={"session_id": bob.json()["id"], "proof": sig},
    )
    assert r.status_code == 409 and r.json()["error"]["code"] == "proof_owner_conflict"
    assert "alice" not in r.text and proof["id"] not in r.text

    after = counts(sol_engine)
    assert after["proofs"] == before["proofs"]
    assert after["verification_attempts"] == before["verification_attempts"]
    assert after["audit_events"] == before["audit_events"] + 1
    again = c.get(f"/v1/proofs/{proof['id']}", headers=auth()).json()
    assert (again["owner_id"], again["status"], again["session_id"]) == (
        "alice",
        "verified",
        proof["session_id"],
    )
    assert c.get(f"/v1/proofs/{proof['id']}", headers=auth(OTHER_SERVICE_TOKEN)).status_code == 404
    conflict = [
        a for a in audit_actions(sol_engine, proof["id"]) if a.action == "proof.owner_conflict"
    ]
    assert len(conflict) == 1 and conflict[0].data["claimed_by_owner"] == "bob"
    assert 'reason="proof_owner_conflict"' in c.get("/metrics").text


@pytest.fixture
def demo_api(tmp_path, monkeypatch):
    """The deployment `make serve` starts (demo tokens, treasury from the environment,
    recorded chains, the demo's clock), served on loopback: (engine, base URL)."""
    from tests.live_server import LiveServer
    from verifier.core.config import Settings
    from verifier.core.engine import Engine
    from verifier.storage.db import upgrade

    url = f"sqlite:///{tmp_path}/demo.db"
    upgrade(url)
    demo = __import__("json").loads((SOL / "demo_payment.json").read_text())["demo"]
    e = Engine(
        Settings(
            database_url=url,
            chain="cassette",
            clock=demo["clock"],
            service_tokens={"demo-service-token": ["demo-owner"]},
            staff_tokens={
                "demo-staff-token": "demo-operator",
                "demo-staff-token-2": "demo-approver",
            },
            env={"RAILPROOF_TREASURY_SOLANA_USDC": demo["recipient"]},
        )
    )
    e.ensure_rail_states()
    monkeypatch.setenv("RAILPROOF_STAFF_TOKEN", "demo-staff-token")
    monkeypatch.delenv("RAILPROOF_DEMO_SERVICE_TOKEN", raising=False)
    monkeypatch.delenv("RAILPROOF_CASSETTE_DIR", raising=False)
    try:
        with LiveServer(create_app(e)) as srv:
            yield e, srv.url
    finally:
        e.db.dispose()


def test_demo_walks_to_an_active_entitlement_against_a_served_api(demo_api):
    """`railproof demo` against the deployment `make serve` starts, through the public API
    only."""
    from tests.live_server import closed_port
    from verifier.tools.demo import run_demo

    e, url = demo_api
    assert run_demo(url) == 0
    with e.db.tx() as s:
        r = s.scalars(select(Receipt)).one()
    assert (r.owner_id, r.amount, r.created_by) == ("demo-owner", 25000000, "demo-operator")
    # One transfer pays one session: a second run is refused, not applied twice.
    assert run_demo(url) == 1
    assert run_demo(f"http://127.0.0.1:{closed_port()}") == 2


def test_demo_run_again_on_the_same_database_says_why_it_stopped(demo_api, capsys):
    # The second run replays the first's session and proof (the same Idempotency-Keys), and
    # the dry run answers would_apply false (already applied): demo returned 1 and said nothing.
    from verifier.tools.demo import run_demo

    e, url = demo_api
    assert run_demo(url) == 0
    capsys.readouterr()
    assert run_demo(url) == 1
    err = capsys.readouterr().err
    assert "one transfer pays one session" in err and "make clean serve" in err, err
    assert counts(e)["receipts"] == 1


def test_demo_whose_transfer_backs_another_session_says_why_it_stopped(demo_api, capsys):
    # Another session holds the demo's reference: the API answers 422 reference_in_use; the
    # demo looked for a 409, and said only "HTTP 422 reference_in_use".
    from verifier.tools.demo import demo_payment, run_demo

    e, url = demo_api
    pay = demo_payment()
    r = httpx.post(
        f"{url}/v1/payment-sessions",
        headers={"Authorization": "Bearer demo-service-token", "Idempotency-Key": "earlier"},
        json={
            "owner_id": "demo-owner",
            "rail_id": "solana_usdc",
            "access_product_id": "pro-monthly",
            "amount": pay["amount"],
            "reference": pay["reference"],
            "memo": pay["memo"],
        },
    )
    assert r.status_code == 201, r.text
    assert run_demo(url) == 1
    err = capsys.readouterr().err
    assert "one transfer pays one session" in err and "make clean serve" in err, err
    assert counts(e)["receipts"] == 0


def test_demo_a_dry_run_would_refuse_names_the_failed_checks():
    from verifier.tools.demo import _would_not_apply

    said = _would_not_apply(
        {
            "would_apply": False,
            "already_applied": False,
            "checks": [
                {"name": "proof_verified", "passed": True},
                {"name": "rail_not_paused", "passed": False},
            ],
        }
    )
    assert "failed: rail_not_paused" in said and "make serve" in said, said


def test_demo_with_a_staff_token_the_server_refuses_names_it_and_stops(
    demo_api, monkeypatch, capsys
):
    # The dry-run answered 401 and the demo read `would_apply` from the error body: a
    # KeyError traceback.
    from verifier.tools.demo import run_demo

    e, url = demo_api
    monkeypatch.setenv("RAILPROOF_STAFF_TOKEN", "another-deployments-token")
    assert run_demo(url) == 1
    out = capsys.readouterr()
    assert "refused the token from RAILPROOF_STAFF_TOKEN (HTTP 401)" in out.err
    assert "another-deployments-token" not in out.out + out.err
    assert counts(e)["receipts"] == 0


@pytest.mark.parametrize("var", ["RAILPROOF_DEMO_SERVICE_TOKEN", "RAILPROOF_STAFF_TOKEN"])
def test_demo_refuses_a_token_it_cannot_send_without_printing_it(
    demo_api, monkeypatch, capsys, var
):
    # A token with its file's newline: httpx's LocalProtocolError escaped as a traceback
    # ending `Illegal header value b'Bearer <token>'`.
    from verifier.tools.demo import run_demo

    _, url = demo_api
    monkeypatch.setenv(var, "demo-SECRET-token\n")
    assert run_demo(url) == 2
    out = capsys.readouterr()
    assert var in out.err and "SECRET" not in out.out + out.err


@pytest.mark.parametrize("base", ["http://[::1", "ftp://127.0.0.1:1"])
def test_demo_with_an_unusable_base_url_exits_2_naming_it(capsys, base):
    # `http://[::1` raised httpx.InvalidURL, which the demo did not catch: a traceback.
    from verifier.tools.demo import run_demo

    assert run_demo(base) == 2
    assert base in capsys.readouterr().err


def test_a_garbled_node_answer_leaves_the_proof_pending_until_the_node_answers(sol_engine):
    # A parsed instruction whose `info` is not an object used to escape the Solana adapter:
    # POST /v1/proofs answered 500 internal_error. It is the node's garbage: pending
    # rpc_unavailable, and the worker verifies the proof once the node answers properly.
    calls = recorded_calls(SOL / "demo_payment.json")
    garbled = copy.deepcopy(calls)
    ata_create = {"programId": "ATokenGPvbdGVxr1b2hvZbsiqW5xWH25efTNsLJA8knL"}
    ata_create["parsed"] = {"type": "createIdempotent", "info": "x"}
    garbled[0]["result"]["meta"]["innerInstructions"] = [{"index": 0, "instructions": [ata_create]}]
    chain = SwitchableTransport(garbled)
    sol_engine.chains.set_transport("solana-mainnet", chain)
    c = _client(sol_engine)
    demo = cassette_expect(SOL / "demo_payment.json")
    r = open_session(c, amount=demo["amount"], reference=demo["reference"], memo=demo["memo"])
    assert r.status_code == 201, r.text
    r = c.post(
        "/v1/proofs",
        headers=auth(),
        json={"session_id": r.json()["id"], "proof": demo["signature"]},
    )
    assert r.status_code == 201, r.text
    assert (r.json()["status"], r.json()["failure_code"]) == ("pending", "rpc_unavailable")

    chain.load(calls)
    advance(sol_engine, 120)
    assert worker.reverify_pending(sol_engine, "w1", 100) == 1
    proof = c.get(f"/v1/proofs/{r.json()['id']}", headers=auth()).json()
    assert proof["status"] == "verified", (proof["failure_code"], proof.get("detail"))
