"""Resolving a reconciliation finding repaired outside railproof (a refund, a credit or an
attach by hand, a decision): the resolution is kept by (kind, subject key), so later runs
report the same finding `resolved` and the drift reaches zero. It needs an incident id and a
reason, is audited, and refuses what is already resolved or was applied by its run. On
SQLite and PostgreSQL, over the fake rail and the recorded treasury history."""

from __future__ import annotations

import json
from typing import get_args

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from tests.conftest import STAFF_TOKEN, auth
from tests.helpers import advance, cassette_engine
from tests.live_server import LiveServer
from tests.test_binding import fake_session, pay
from tests.test_reconciliation import DOC, EXPECT, by_kind, proofs_of, req, session_for
from tests.test_reconciliation_drift import nonzero, reconciliation_issues
from verifier.cli.main import app as cli_app
from verifier.http.api import create_app
from verifier.http.routes.reconciliation import ResolutionName
from verifier.services import gate, proofs, reconciliation
from verifier.services.audit import Operator
from verifier.storage.models import AuditEvent
from verifier.storage.reconciliation_models import Resolution

OP = Operator("ops1", "INC-21", "refunded the second transfer")
CTX = {"incident_id": "INC-21", "operator_reason": "refunded the second transfer"}
STAFF = auth(STAFF_TOKEN)


def stored_run(engine) -> dict:
    return reconciliation.run(
        engine,
        reconciliation.RunRequest(
            scope="rail_proofs",
            rail_id="fake_live",
            incident_id="INC-21",
            operator_reason="post-incident reconciliation",
        ),
        "ops1",
    )


def uncredited(engine, chain, tx: str = "fx2b2b2b2b01") -> tuple[dict, dict]:
    """A session paid twice (both transfers verified, the first credited), and the run that
    reports the second as `verified_transfer_not_credited`: (run, that finding)."""
    sess = fake_session(engine)
    second_tx = tx[:-1] + "2"
    pay(chain, tx, sess)
    pay(chain, second_tx, sess)
    first, _ = proofs.submit_proof(engine, sess["id"], tx, ["alice"])
    second, _ = proofs.submit_proof(engine, sess["id"], second_tx, ["alice"])
    assert gate.apply(engine, first["id"], OP, gate.Via.staff)["applied"] is True
    run = stored_run(engine)
    [f] = [
        x
        for x in by_kind(run)["verified_transfer_not_credited"]
        if x["subjects"]["proof_id"] == second["id"]
    ]
    return run, f


def resolve(client, finding_id, body=None, headers=STAFF):
    return client.post(
        f"/v1/admin/reconciliation-findings/{finding_id}/resolution",
        json={"resolution": "refunded", **CTX} if body is None else body,
        headers=headers,
    )


def audit_of(engine, finding_id) -> list[AuditEvent]:
    with engine.db.tx() as s:
        return list(
            s.scalars(
                select(AuditEvent).where(
                    AuditEvent.action == "reconciliation.finding_resolved",
                    AuditEvent.subject_id == str(finding_id),
                )
            ).all()
        )


def test_a_refunded_transfer_leaves_the_drift_and_stays_resolved(engine, chain, client):
    run, f = uncredited(engine, chain)
    assert run["summary"]["unresolved"] == {"verified_transfer_not_credited": 1}
    assert nonzero(engine) == {"verified_transfer_not_credited": 1.0}
    assert f["subject_key"] == f"proof_id={f['subjects']['proof_id']}"

    r = resolve(client, f["id"])
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["id"], out["repair_status"]) == (f["id"], "resolved")
    assert out["repair_result"]["resolution"] == "refunded"
    assert out["repair_result"]["incident_id"] == "INC-21"
    # At once, without a re-run: the gauge and assurance no longer count it.
    assert nonzero(engine) == {}
    assert reconciliation_issues(engine) == []
    [ev] = audit_of(engine, f["id"])
    assert (ev.actor, ev.incident_id, ev.reason) == ("ops1", "INC-21", CTX["operator_reason"])
    assert ev.data["resolution"] == "refunded" and ev.data["subject_key"] == f["subject_key"]

    # The next run finds the same transfer again, and reports it resolved: zero drift.
    advance(engine, 1)
    again = stored_run(engine)
    [g] = by_kind(again)["verified_transfer_not_credited"]
    assert g["id"] != f["id"] and g["subject_key"] == f["subject_key"]
    assert g["repair_status"] == "resolved"
    assert g["repair_result"]["resolution"] == "refunded"
    assert g["repair_result"]["finding_id"] == f["id"]
    assert again["summary"]["unresolved"] == {}
    assert nonzero(engine) == {}
    assert reconciliation_issues(engine) == []
    # The later finding is the same resolved thing: resolving it again is refused.
    assert resolve(client, g["id"]).json()["error"]["code"] == "finding_resolved"

    # Another transfer of the same kind is not covered by that resolution.
    uncredited(engine, chain, "fx2c2c2c2c01")
    advance(engine, 1)
    third = stored_run(engine)
    assert [x["repair_status"] for x in by_kind(third)["verified_transfer_not_credited"]] == [
        "resolved",
        "none",
    ]
    assert third["summary"]["unresolved"] == {"verified_transfer_not_credited": 1}
    assert nonzero(engine) == {"verified_transfer_not_credited": 1.0}


def test_resolving_needs_an_incident_and_a_reason_and_a_fitting_resolution(engine, chain, client):
    _, f = uncredited(engine, chain)
    for body, field in (
        ({"resolution": "refunded", "operator_reason": "why"}, "incident_id"),
        ({"resolution": "refunded", "incident_id": "INC-21"}, "operator_reason"),
        ({"resolution": "refunded", "incident_id": " ", "operator_reason": "why"}, "incident_id"),
    ):
        r = resolve(client, f["id"], body)
        assert r.status_code == 422, r.text
        err = r.json()["error"]
        assert (err["code"], err["field"]) == ("operator_context_required", field)
    r = resolve(client, f["id"], {"resolution": "forgotten", **CTX})
    assert r.status_code == 422 and r.json()["error"]["field"] == "resolution"
    # A resolution of the closed set that does not fit the kind: a refund fits, not_ours not.
    r = resolve(client, f["id"], {"resolution": "not_ours", **CTX})
    assert r.status_code == 422, r.text
    assert (r.json()["error"]["code"], r.json()["error"]["field"]) == (
        "invalid_resolution",
        "resolution",
    )
    assert "refunded" in r.json()["error"]["message"]
    assert audit_of(engine, f["id"]) == []
    assert nonzero(engine) == {"verified_transfer_not_credited": 1.0}


def test_twice_unknown_and_not_staff(engine, chain, client):
    _, f = uncredited(engine, chain)
    assert resolve(client, f["id"], headers=auth()).status_code == 401  # a service token
    assert resolve(client, f["id"], headers={}).status_code == 401
    r = resolve(client, 999_999)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "reconciliation_finding_not_found"
    assert resolve(client, f["id"]).status_code == 200
    r = resolve(client, f["id"], {"resolution": "accepted", **CTX})
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "finding_resolved"
    assert r.json()["error"]["resolution"] == "refunded"  # the first decision stands
    assert len(audit_of(engine, f["id"])) == 1


def test_the_http_resolutions_are_the_stored_set():
    assert set(get_args(ResolutionName)) == {r.value for r in Resolution}
    assert set().union(*reconciliation.RESOLUTIONS.values()) <= set(Resolution)
    assert all(Resolution.accepted in fits for fits in reconciliation.RESOLUTIONS.values())


# -- chain inflows: applied findings, and a transfer a person settled is never attached ------


@pytest.fixture
def eng(db_url):
    e = cassette_engine(
        db_url,
        discovery_page_limit=DOC["page"],
        env={"RAILPROOF_TREASURY_SOLANA_USDC": DOC["treasury"]},
    )
    yield e
    e.db.dispose()


def test_an_applied_or_information_finding_is_refused(eng):
    session_for(eng, "bound")
    applied = reconciliation.run(eng, req(apply=True, confirm=True), "ops1")
    [f] = [x for x in applied["findings"] if x["repair_status"] == "applied"]
    with TestClient(create_app(eng), raise_server_exceptions=False) as c:
        r = resolve(c, f["id"], {"resolution": "attached_by_hand", **CTX})
        assert r.status_code == 409, r.text
        assert r.json()["error"]["code"] == "finding_not_resolvable"
    assert audit_of(eng, f["id"]) == []


def test_a_transfer_settled_by_hand_is_never_attached(eng):
    bound = session_for(eng, "bound")
    dry = reconciliation.run(eng, req(), "ops1")
    [f] = by_kind(dry)["orphan_bound"]
    assert f["repair_status"] == "proposed"
    assert f["subject_key"] == f"rail_id=solana_usdc;transfer={EXPECT['bound']['signature']}"
    assert "orphan_bound" in nonzero(eng)
    out = reconciliation.resolve_finding(eng, f["id"], "not_ours", OP)
    assert out["repair_status"] == "resolved" and "orphan_bound" not in nonzero(eng)

    advance(eng, 1)
    applied = reconciliation.run(eng, req(apply=True, confirm=True), "ops1")
    [g] = by_kind(applied)["orphan_bound"]
    assert g["repair_status"] == "resolved" and g["repair_result"]["resolution"] == "not_ours"
    assert applied["summary"]["applied"] == 0
    assert "orphan_bound" not in applied["summary"]["unresolved"]
    assert proofs_of(eng, bound["id"]) == []  # nothing was submitted for the session
    assert "orphan_bound" not in nonzero(eng)


def test_cli_resolve_finding(engine, chain):
    run, f = uncredited(engine, chain)
    with LiveServer(create_app(engine)) as srv:
        env = {
            "RAILPROOF_API_BASE_URL": srv.url,
            "RAILPROOF_STAFF_TOKEN": STAFF_TOKEN,
            "COLUMNS": "200",
        }
        cli = CliRunner()
        ctx = ["--incident-id", "INC-21", "--operator-reason", "refunded the payer"]
        base = ["resolve-finding", str(f["id"])]
        r = cli.invoke(cli_app, [*base, "--resolution", "refunded"], env=env)
        assert r.exit_code == 2 and "--incident-id" in r.output and "--operator-reason" in r.output
        r = cli.invoke(cli_app, [*base, "--resolution", "forgotten", *ctx], env=env)
        assert r.exit_code == 2 and "--resolution" in r.output
        r = cli.invoke(cli_app, [*base, *ctx], env=env)
        assert r.exit_code == 2 and "--resolution" in r.output
        for bad in ("abc", "²", "１２"):  # superscript and fullwidth digits: int() refused "²"
            r = cli.invoke(
                cli_app, ["resolve-finding", bad, "--resolution", "refunded", *ctx], env=env
            )
            assert isinstance(r.exception, SystemExit), repr(r.exception)
            assert r.exit_code == 2 and "FINDING_ID" in r.output, r.output
        assert audit_of(engine, f["id"]) == []
        r = cli.invoke(
            cli_app, ["resolve-finding", "999999", "--resolution", "refunded", *ctx], env=env
        )
        assert r.exit_code == 1 and "reconciliation_finding_not_found" in r.output

        r = cli.invoke(cli_app, [*base, "--resolution", "refunded", *ctx], env=env)
        assert r.exit_code == 0, r.output
        assert "resolved: refunded" in r.output and "INC-21" in r.output
        r = cli.invoke(cli_app, [*base, "--resolution", "refunded", *ctx], env=env)
        assert r.exit_code == 1 and "finding_resolved" in r.output

        r = cli.invoke(cli_app, ["inspect-reconciliation-run", run["id"]], env=env)
        assert r.exit_code == 0, r.output
        assert f"finding {f['id']} resolved: refunded by ops1" in r.output
        r = cli.invoke(cli_app, ["inspect-reconciliation-run", run["id"], "--json"], env=env)
        [g] = [x for x in json.loads(r.stdout)["findings"] if x["id"] == f["id"]]
        assert g["repair_status"] == "resolved"
        assert g["repair_result"]["operator_reason"] == "refunded the payer"
