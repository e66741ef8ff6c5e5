"""Reconciliation runs: persisted with operator context and findings; the rail_proofs scope
over stored data; the chain_inflows scope over the treasury's recorded history (LiteSVM
transfers, fixtures/solana/generated/inflows/); apply through the normal submission path,
exactly once across runs; a chain that cannot be read is `incomplete`, never "no drift"."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from typer.testing import CliRunner

from rails.transport.cassette import Call, CassetteTransport
from tests.conftest import STAFF_TOKEN, auth
from tests.helpers import FIXTURES, cassette_engine, recorded_calls
from tests.live_server import LiveServer
from verifier.cli.main import app as cli_app
from verifier.core.errors import BadInput
from verifier.http.api import create_app
from verifier.services import proofs, reconciliation
from verifier.services.sessions import NewSession, open_session
from verifier.storage.models import AuditEvent, PaymentSession, Proof

INFLOWS = FIXTURES / "solana" / "generated" / "inflows" / "treasury_inflows.json"
DOC = json.loads(INFLOWS.read_text())
EXPECT = DOC["expect"]
TREASURY = DOC["treasury"]
OPS = {"incident_id": "INC-13", "operator_reason": "post-rollout reconciliation"}


@pytest.fixture
def eng(db_url):
    e = cassette_engine(
        db_url, discovery_page_limit=DOC["page"], env={"RAILPROOF_TREASURY_SOLANA_USDC": TREASURY}
    )
    yield e
    e.db.dispose()


def session_for(engine, case: str, **kw):
    exp = EXPECT[case]
    return open_session(
        engine,
        NewSession(
            owner_id="alice",
            rail_id="solana_usdc",
            access_product_id="pro",
            amount=exp["amount"],
            reference=exp["reference"],
            **kw,
        ),
        actor="svc",
    )


def req(scope="chain_inflows", **kw) -> reconciliation.RunRequest:
    base = {"scope": scope, "rail_id": "solana_usdc" if scope == "chain_inflows" else None, **OPS}
    base.update(kw)
    return reconciliation.RunRequest(**base)


def by_kind(run) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for f in run["findings"]:
        out.setdefault(f["kind"], []).append(f)
    return out


def proofs_of(engine, session_id: str) -> list[Proof]:
    with engine.db.tx() as s:
        return list(s.scalars(select(Proof).where(Proof.session_id == session_id)).all())


def test_orphan_bound_attached_exactly_once_and_unbound_never(eng):
    matched = session_for(eng, "matched")
    bound = session_for(eng, "bound")
    view, _ = proofs.submit_proof(eng, matched["id"], EXPECT["matched"]["signature"], ["alice"])
    assert view["status"] == "verified"

    dry = reconciliation.run(eng, req(), "ops1")
    assert dry["status"] == "complete" and dry["dry_run"] is True
    kinds = by_kind(dry)
    assert dry["summary"]["matched"] == 1 and dry["summary"]["inflows"] == 4
    [orphan] = kinds["orphan_bound"]
    assert orphan["subjects"]["session_id"] == bound["id"]
    assert orphan["subjects"]["transfer"] == EXPECT["bound"]["signature"]
    assert orphan["repair_status"] == "proposed"
    unbound = {f["subjects"]["transfer"] for f in kinds["orphan_unbound"]}
    assert unbound == {EXPECT["unbound"]["signature"], EXPECT["discovered"]["signature"]}
    assert proofs_of(eng, bound["id"]) == []  # a dry run changes nothing

    first = reconciliation.run(eng, req(apply=True, confirm=True), "ops1")
    assert first["status"] == "complete" and first["summary"]["applied"] == 1
    [applied] = by_kind(first)["orphan_bound"]
    assert applied["repair_status"] == "applied"
    assert applied["repair_result"]["proof_status"] == "verified"
    [p] = proofs_of(eng, bound["id"])
    assert p.ref == EXPECT["bound"]["signature"]
    with eng.db.tx() as s:  # through the normal path, on the record as the staff member
        actors = s.scalars(
            select(AuditEvent.actor).where(
                AuditEvent.subject_id == p.id, AuditEvent.action == "proof.submitted"
            )
        ).all()
    assert actors == ["ops1"]

    second = reconciliation.run(eng, req(apply=True, confirm=True), "ops1")
    assert second["summary"]["applied"] == 0 and second["summary"]["matched"] == 2
    assert "orphan_bound" not in by_kind(second)
    assert len(proofs_of(eng, bound["id"])) == 1
    with eng.db.tx() as s:  # the unbound transfers were never attached to anything
        n = s.scalar(
            select(func.count())
            .select_from(Proof)
            .where(
                Proof.ref.in_([EXPECT["unbound"]["signature"], EXPECT["discovered"]["signature"]])
            )
        )
    assert n == 0
    runs = reconciliation.list_runs(eng)
    # (the pinned clock gives the three runs one start time: their order is not asserted)
    assert {r["id"] for r in runs} == {second["id"], first["id"], dry["id"]}
    assert all(r["incident_id"] == "INC-13" and r["staff"] == "ops1" for r in runs)


def test_bound_session_that_fails_its_checks_is_unbound(eng):
    # The "bound" transfer pays 2 USDC; a session asking 5 with its reference is not paid by it.
    exp = EXPECT["bound"]
    open_session(
        eng,
        NewSession(
            owner_id="alice",
            rail_id="solana_usdc",
            access_product_id="pro",
            amount=5_000_000,
            reference=exp["reference"],
        ),
        actor="svc",
    )
    run = reconciliation.run(eng, req(apply=True, confirm=True), "ops1")
    assert "orphan_bound" not in by_kind(run)
    [f] = [
        f for f in by_kind(run)["orphan_unbound"] if f["subjects"]["transfer"] == exp["signature"]
    ]
    assert "amount_mismatch" in f["detail"] and f["repair_status"] == "none"


@pytest.mark.parametrize("missing", ["incident_id", "operator_reason"])
def test_run_without_incident_or_reason_is_refused(eng, missing):
    for scope in ("rail_proofs", "chain_inflows"):
        with pytest.raises(BadInput) as e:
            reconciliation.run(eng, req(scope, **{missing: "  "}), "ops1")
        assert e.value.field == missing
    assert reconciliation.list_runs(eng) == []


def test_apply_needs_confirm(eng):
    with pytest.raises(BadInput) as e:
        reconciliation.run(eng, req(apply=True), "ops1")
    assert e.value.code == "confirmation_required"


def _failing_page_two() -> CassetteTransport:
    calls = recorded_calls(INFLOWS)
    for c in calls:
        if c["method"] == "getSignaturesForAddress" and "before" in c["params"][1]:
            c.pop("result")
            c["error"] = {"code": -32005, "message": "Node is unhealthy"}
            break
    return CassetteTransport([Call(c) for c in calls])


def test_a_node_that_errors_mid_scan_makes_the_run_incomplete(eng):
    session_for(eng, "discovered")
    eng.chains.set_transport("solana-mainnet", _failing_page_two())
    run = reconciliation.run(eng, req(), "ops1")
    assert run["status"] == "incomplete"
    assert "getSignaturesForAddress" in run["detail"] and "Node is unhealthy" in run["detail"]
    # What it did read (the newest page) is reported; nothing claims "no drift".
    assert [f["subjects"]["transfer"] for f in by_kind(run)["orphan_bound"]] == [
        EXPECT["discovered"]["signature"]
    ]
    issues = reconciliation.assurance_issues(eng)
    assert any(i["category"] == "reconciliation_incomplete" for i in issues)


def test_a_transaction_the_node_returns_garbled_makes_the_run_incomplete_not_failed(eng):
    # A token balance entry that is null (a provider's broken rendering) raised out of the
    # transaction parser and ended the run `failed`; it is an unreadable answer like any.
    bad = EXPECT["bound"]["signature"]
    calls = recorded_calls(INFLOWS)
    for c in calls:
        if c["method"] == "getTransaction" and c["params"][0] == bad:
            c["result"]["meta"]["preTokenBalances"].insert(0, None)
    eng.chains.set_transport("solana-mainnet", CassetteTransport([Call(c) for c in calls]))
    run = reconciliation.run(eng, req(), "ops1")
    assert run["status"] == "incomplete", run["detail"]
    assert f"getTransaction({bad})" in run["detail"]


def test_tron_is_review_only_and_never_reports_no_drift(eng):
    run = reconciliation.run(eng, req(rail_id="tron_usdt"), "ops1")
    assert run["status"] == "incomplete" and run["findings"] == []
    # The run says what was not checked and why (the adapter declares no inflow listing).
    assert run["detail"].startswith("treasury inflows of tron_usdt are not scanned: ")
    assert "Nothing was checked" in run["detail"] and run["summary"]["inflows_scanned"] == 0


def test_failed_then_paid_and_other_stored_findings(eng):
    s = session_for(eng, "bound")
    # First the payer's other transfer (it lacks this session's reference): failed.
    failed, _ = proofs.submit_proof(eng, s["id"], EXPECT["unbound"]["signature"], ["alice"])
    assert failed["status"] == "failed" and failed["failure_code"] == "reference_missing"
    paid, _ = proofs.submit_proof(eng, s["id"], EXPECT["bound"]["signature"], ["alice"])
    assert paid["status"] == "verified"
    run = reconciliation.run(eng, req("rail_proofs"), "ops1")
    assert run["status"] == "complete"
    [f] = by_kind(run)["failed_then_paid"]
    assert f["subjects"] == {
        "proof_id": failed["id"],
        "paid_proof_id": paid["id"],
        "session_id": s["id"],
        "receipt_id": None,
    }
    # Verified and final without a receipt, past the SLA (the clock moves on two hours).
    eng.settings.clock = eng.settings.now().replace(hour=2)
    run = reconciliation.run(eng, req("rail_proofs"), "ops1")
    assert [x["subjects"]["proof_id"] for x in by_kind(run)["verified_without_receipt"]] == [
        paid["id"]
    ]
    eng.metrics.render()  # the drift gauge is set from the latest run
    assert (
        b'railproof_reconciliation_drift{kind="verified_without_receipt"} 1.0'
        in eng.metrics.render()
    )


def test_http_routes_and_cli(eng):
    session_for(eng, "bound")
    app = create_app(eng)
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post(
            "/v1/admin/reconciliation-runs",
            json={"scope": "chain_inflows", "rail_id": "solana_usdc"},
            headers=auth(STAFF_TOKEN),
        )
        assert r.status_code == 422 and r.json()["error"]["field"] == "incident_id"
        r = c.post(
            "/v1/admin/reconciliation-runs",
            json={"scope": "chain_inflows", "rail_id": "solana_usdc", **OPS},
            headers=auth(),
        )  # a service token is not staff
        assert r.status_code == 401
        r = c.post(
            "/v1/admin/reconciliation-runs",
            json={"scope": "chain_inflows", "rail_id": "solana_usdc", **OPS},
            headers=auth(STAFF_TOKEN),
        )
        assert r.status_code == 201, r.text
        run = r.json()
        assert run["staff"] == "ops1" and run["dry_run"] is True
        # Window bounds at datetime's ends overflow the UTC conversion: refused by name.
        for field, value in (
            ("since", "0001-01-01T00:00:00+14:00"),
            ("until", "9999-12-31T23:59:59-14:00"),
            ("since", "1969-12-31T23:59:59Z"),
        ):
            bad = c.post(
                "/v1/admin/reconciliation-runs",
                json={"scope": "rail_proofs", field: value, **OPS},
                headers=auth(STAFF_TOKEN),
            )
            assert (bad.status_code, bad.json()["error"]["code"]) == (422, "invalid_time"), value
            assert bad.json()["error"]["field"] == field
        assert [f["kind"] for f in run["findings"]].count("orphan_bound") == 1
        listed = c.get("/v1/admin/reconciliation-runs", headers=auth(STAFF_TOKEN)).json()
        assert [x["id"] for x in listed] == [run["id"]] and "findings" not in listed[0]
        got = c.get(f"/v1/admin/reconciliation-runs/{run['id']}", headers=auth(STAFF_TOKEN)).json()
        assert got == run
        assert (
            c.get("/v1/admin/reconciliation-runs/nope", headers=auth(STAFF_TOKEN)).status_code
            == 404
        )

    with LiveServer(app) as srv:
        env = {
            "RAILPROOF_API_BASE_URL": srv.url,
            "RAILPROOF_STAFF_TOKEN": STAFF_TOKEN,
            "COLUMNS": "200",
        }
        cli = CliRunner()
        r = cli.invoke(
            cli_app, ["reconcile", "--scope", "chain_inflows", "--rail-id", "solana_usdc"], env=env
        )
        assert r.exit_code == 2 and "--incident-id" in r.output
        r = cli.invoke(
            cli_app,
            [
                "reconcile",
                "--scope",
                "chain_inflows",
                "--rail-id",
                "solana_usdc",
                "--apply",
                "--incident-id",
                "INC-13",
                "--operator-reason",
                "x",
            ],
            env=env,
        )
        assert r.exit_code == 2 and "--confirm" in r.output
        r = cli.invoke(
            cli_app,
            [
                "reconcile",
                "--scope",
                "chain_inflows",
                "--rail-id",
                "solana_usdc",
                "--apply",
                "--confirm",
                "--incident-id",
                "INC-13",
                "--operator-reason",
                "repair",
                "--json",
            ],
            env=env,
        )
        assert r.exit_code == 0, r.output
        applied = json.loads(r.stdout)
        assert applied["summary"]["applied"] == 1 and applied["dry_run"] is False
        r = cli.invoke(
            cli_app, ["list-reconciliation-runs", "--scope", "chain_inflows", "--json"], env=env
        )
        assert r.exit_code == 0 and len(json.loads(r.stdout)) == 2
        r = cli.invoke(cli_app, ["inspect-reconciliation-run", applied["id"]], env=env)
        assert r.exit_code == 0 and applied["id"] in r.stdout and "orphan_bound" in r.stdout


# -- EVM: eth_getLogs over bounded ranges, split on refusal --------------------------------------

EVM_LOGS = FIXTURES / "evm" / "inflows" / "treasury_transfer_logs.json"
EVM_DOC = json.loads(EVM_LOGS.read_text())


def test_evm_scan_replays_refusals_and_split_ranges():
    from rails.evm_inflows import transfer_logs

    exp = EVM_DOC["expect"]
    chain = CassetteTransport.from_files([EVM_LOGS])
    scan = transfer_logs(
        chain, exp["token"], exp["treasury"], 0, exp["head"], max_range=exp["max_range"]
    )
    assert scan.error is None and scan.scanned_to == exp["head"]
    assert [(i.tx_hash, i.sender, i.value) for i in scan.inflows] == [
        (i["tx_hash"], i["sender"], i["value"]) for i in exp["inflows"]
    ]
    refused = [c for c in EVM_DOC["calls"] if "error" in c]
    assert refused and scan.calls == len(EVM_DOC["calls"]) - 1  # all but eth_blockNumber


def test_evm_range_the_node_refuses_even_alone_is_an_error_not_no_transfers():
    from rails.evm_inflows import transfer_logs

    exp = EVM_DOC["expect"]
    calls = recorded_calls(EVM_LOGS)
    for c in calls:  # the node now refuses even the last single block it was asked for
        if c["method"] == "eth_getLogs" and c["params"][0]["fromBlock"] == "0xa":
            c.pop("result")
            c["error"] = {"code": -32005, "message": "query returned more than 10000 results"}
    scan = transfer_logs(
        CassetteTransport([Call(c) for c in calls]),
        exp["token"],
        exp["treasury"],
        0,
        exp["head"],
        max_range=exp["max_range"],
    )
    assert scan.error is not None and "-32005" in scan.error
    # What was read is kept, and the scan says where it stopped.
    assert scan.scanned_to == 9 and len(scan.inflows) == 3


def evm_world(db_url, env: dict[str, str] | None = None) -> Iterator[dict]:
    """A local EVM chain with a token, two funded payers and the treasury, and an engine on
    it (its logs answered two at a time); `env` adds to the engine's settings."""
    from scripts.make_evm_inflow_cassettes import GENESIS, LogsNode
    from tests.evm_chain import LocalEvmChain

    chain = LocalEvmChain(chain_id=1, genesis_timestamp=GENESIS, block_time=12)
    token = chain.deploy_token()
    payer, other, treasury = chain.accounts[1], chain.accounts[3], chain.accounts[2]
    for who in (payer, other):
        token.functions.mint(who, 1_000 * 10**6).transact({"from": chain.accounts[0]})
    e = cassette_engine(
        db_url,
        reconcile_evm_max_range=8,
        env={
            "RAILPROOF_TREASURY_EVM_USDC": treasury,
            "RAILPROOF_ASSET_EVM_USDC": token.address,
            **(env or {}),
        },
    )
    e.chains.set_transport("ethereum", LogsNode(chain, cap=2))
    yield {
        "engine": e,
        "chain": chain,
        "token": token,
        "payer": payer,
        "other": other,
        "treasury": treasury,
    }
    e.db.dispose()


@pytest.fixture
def evm(db_url):
    yield from evm_world(db_url)


def evm_session(engine, payer: str, amount: int):
    return open_session(
        engine,
        NewSession(
            owner_id="alice",
            rail_id="evm_usdc",
            access_product_id="pro",
            amount=amount,
            payer=payer,
            reference=None,
        ),
        actor="svc",
    )


def test_evm_inflows_bound_by_payer_and_amount_applied_once(evm):
    e, chain, token = evm["engine"], evm["chain"], evm["token"]
    bound = evm_session(e, evm["payer"], 5_000_000)
    evm_session(e, evm["payer"], 9_000_000)
    # Two sessions could take the 9 (stored before such a pair was refused at opening, as the
    # second is here: opened for another amount, then given the first's): a person decides.
    twin = evm_session(e, evm["payer"], 9_000_001)
    with e.db.tx() as s:
        s.get(PaymentSession, twin["id"]).amount = 9_000_000
    tx5 = chain.transfer(token, evm["payer"], evm["treasury"], 5_000_000)
    tx7 = chain.transfer(token, evm["other"], evm["treasury"], 7_000_000)  # nobody's session
    tx9 = chain.transfer(token, evm["payer"], evm["treasury"], 9_000_000)
    chain.mine(2)

    dry = reconciliation.run(e, req(rail_id="evm_usdc"), "ops1")
    assert dry["status"] == "complete", dry["detail"]
    kinds = by_kind(dry)
    [orphan] = kinds["orphan_bound"]
    assert (orphan["subjects"]["transfer"], orphan["subjects"]["session_id"]) == (
        tx5.lower(),
        bound["id"],
    )
    assert {f["subjects"]["transfer"] for f in kinds["orphan_unbound"]} == {
        tx7.lower(),
        tx9.lower(),
    }

    first = reconciliation.run(e, req(rail_id="evm_usdc", apply=True, confirm=True), "ops1")
    assert first["summary"]["applied"] == 1
    assert by_kind(first)["orphan_bound"][0]["repair_result"]["proof_status"] == "verified"
    # A window in time is found in blocks (by their timestamps): from tx7's block on.
    from datetime import datetime

    b7 = chain.w3.eth.get_transaction_receipt(tx7).blockNumber
    since = datetime.fromtimestamp(chain.w3.eth.get_block(b7).timestamp, UTC)
    windowed = reconciliation.run(e, req(rail_id="evm_usdc", since=since), "ops1")
    assert {f["subjects"]["transfer"] for f in windowed["findings"]} == {tx7.lower(), tx9.lower()}
    assert windowed["summary"]["matched"] == 0
    second = reconciliation.run(e, req(rail_id="evm_usdc", apply=True, confirm=True), "ops1")
    assert second["summary"]["applied"] == 0 and second["summary"]["matched"] == 1
    assert len(proofs_of(e, bound["id"])) == 1


# -- the live Solana transport against a loopback JSON-RPC node ---------------------------------


def _node_answers(srv, fail_after_first_page: bool = False):
    entries = [c["result"] for c in DOC["calls"] if c["method"] == "getSignaturesForAddress"]
    newest_first = [x for page in entries[-1:] + entries[:-1] for x in page]
    txs = {c["params"][0]: c["result"] for c in DOC["calls"] if c["method"] == "getTransaction"}
    statuses = {
        c["params"][0][0]: c["result"]
        for c in DOC["calls"]
        if c["method"] == "getSignatureStatuses"
    }

    def listing(params):
        address, opts = params[0], params[1]
        assert address == DOC["token_account"]
        sigs = [x["signature"] for x in newest_first]
        start = sigs.index(opts["before"]) + 1 if opts.get("before") else 0
        page = newest_first[start : start + opts["limit"]]
        if fail_after_first_page and not opts.get("before"):
            from tests.jsonrpc_server import Fault

            srv.push(Fault.rpc_error(-32005, "Node is behind"))
        return page

    srv.answer("getSignaturesForAddress", listing)
    srv.answer("getTransaction", lambda params: txs.get(params[0]))
    srv.answer("getSignatureStatuses", lambda params: statuses[params[0][0]])


def _live(url):
    from rails.rpc_policy import RpcPolicy
    from rails.solana_live import SolanaRpcTransport

    t = SolanaRpcTransport([url], "solana-mainnet")
    t.set_policy(RpcPolicy(timeout_s=2.0, attempts=1, total_s=5.0))
    return t


def test_live_transport_against_a_loopback_node(eng):
    from tests.jsonrpc_server import JsonRpcServer

    bound = session_for(eng, "bound")
    with JsonRpcServer() as srv:
        _node_answers(srv)
        eng.chains.set_transport("solana-mainnet", _live(srv.url))
        run = reconciliation.run(eng, req(apply=True, confirm=True), "ops1")
        assert run["status"] == "complete", run["detail"]
        assert (
            run["summary"]["applied"] == 1 and proofs_of(eng, bound["id"])[0].status == "verified"
        )
        assert srv.count("getSignaturesForAddress") == 3  # two full pages of 2, then the end
    with JsonRpcServer() as srv:
        _node_answers(srv, fail_after_first_page=True)
        eng.chains.set_transport("solana-mainnet", _live(srv.url))
        run = reconciliation.run(eng, req(), "ops1")
        assert run["status"] == "incomplete" and "Node is behind" in run["detail"]
