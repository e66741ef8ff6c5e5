"""Reconciliation drift: what a person still has to act on. It reaches zero once the drift is
repaired and the runs repeated (information-only findings such as failed_then_paid never count);
the gauge and `railproof assurance` read the current runs of each (scope, rail), so a clean run
of another rail hides nothing, and the latest complete whole-history run stays current beside
any later one, so a run over a narrower window hides nothing either; a run that fails keeps
the repairs it made. On SQLite and PostgreSQL, over the recorded treasury history
(fixtures/solana/generated/inflows/)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from tests.conftest import CLOCK
from tests.helpers import advance, cassette_engine
from tests.test_reconciliation import DOC, EXPECT, by_kind, proofs_of, req, session_for
from verifier.services import gate, proofs, reconciliation
from verifier.services.assurance import assurance_report
from verifier.services.audit import Operator
from verifier.storage.models import AuditEvent, Proof
from verifier.storage.repo import reconciliation as repo

OP = Operator("ops1", "INC-13", "credit the reconciled payments")


@pytest.fixture
def eng(db_url):
    e = cassette_engine(
        db_url,
        live_apply=True,
        discovery_page_limit=DOC["page"],
        env={"RAILPROOF_TREASURY_SOLANA_USDC": DOC["treasury"]},
    )
    yield e
    e.db.dispose()


def drift(engine) -> dict[str, float]:
    """The drift gauge as a scrape renders it, by kind (zeros included)."""
    reconciliation.refresh_drift_gauge(engine)
    out = {}
    for line in engine.metrics.render().decode().splitlines():
        if line.startswith("railproof_reconciliation_drift{"):
            kind = line.split('kind="', 1)[1].split('"', 1)[0]
            out[kind] = float(line.rsplit(" ", 1)[1])
    return out


def nonzero(engine) -> dict[str, float]:
    return {k: v for k, v in drift(engine).items() if v}


def reconciliation_issues(engine) -> list[dict]:
    return [
        i for i in assurance_report(engine)["issues"] if i["category"].startswith("reconciliation")
    ]


def test_drift_reaches_zero_once_repaired_and_run_again(eng):
    paid_late = session_for(eng, "bound")
    unbound_s = session_for(eng, "unbound")
    discovered_s = session_for(eng, "discovered")
    matched_s = session_for(eng, "matched")
    # The payer's first proof names another transfer (failed), then the right one.
    failed, _ = proofs.submit_proof(eng, paid_late["id"], EXPECT["unbound"]["signature"], None)
    assert failed["status"] == "failed"
    for sess, case in ((paid_late, "bound"), (matched_s, "matched")):
        view, _ = proofs.submit_proof(eng, sess["id"], EXPECT[case]["signature"], None)
        assert view["status"] == "verified"

    dry = reconciliation.run(eng, req(), "ops1")
    assert dry["summary"]["unresolved"] == {"orphan_bound": 2}
    assert nonzero(eng) == {"orphan_bound": 2.0}
    advance(eng, 1)
    applied = reconciliation.run(eng, req(apply=True, confirm=True), "ops1")
    assert applied["summary"]["applied"] == 2 and applied["summary"]["unresolved"] == {}
    assert nonzero(eng) == {}  # the apply run's own repairs are not drift

    # Two hours on: four verified transfers still wait for their receipt (drift), and the
    # failed-then-paid session is reported for support, as information only.
    advance(eng, 2 * 3600)
    stored = reconciliation.run(eng, req("rail_proofs"), "ops1")
    assert [f["severity"] for f in by_kind(stored)["failed_then_paid"]] == ["info"]
    assert stored["summary"]["unresolved"] == {"verified_without_receipt": 4}
    assert nonzero(eng) == {"verified_without_receipt": 4.0}
    assert {i["category"] for i in reconciliation_issues(eng)} == {
        "reconciliation_verified_without_receipt"
    }

    # The repair: each verified proof through the apply gate.
    for sess in (paid_late, unbound_s, discovered_s, matched_s):
        [p] = [p for p in proofs_of(eng, sess["id"]) if p.status == "verified"]
        assert gate.apply(eng, p.id, OP, gate.Via.staff)["applied"] is True
    advance(eng, 1)
    again = reconciliation.run(eng, req("rail_proofs"), "ops1")
    [ftp] = by_kind(again)["failed_then_paid"]  # still told, as resolved information
    assert ftp["subjects"]["receipt_id"] is not None and ftp["severity"] == "info"
    assert again["summary"]["unresolved"] == {}
    advance(eng, 1)
    chain = reconciliation.run(eng, req(), "ops1")
    assert chain["status"] == "complete" and chain["findings"] == []
    assert chain["summary"]["matched"] == 4
    gauge = drift(eng)
    assert gauge["verified_without_receipt"] == gauge["orphan_bound"] == 0.0
    assert nonzero(eng) == {}
    assert reconciliation_issues(eng) == []


def test_a_clean_run_of_another_rail_hides_nothing(eng):
    s = session_for(eng, "bound")
    proofs.submit_proof(eng, s["id"], EXPECT["bound"]["signature"], None)
    eng.settings.clock = CLOCK.replace(hour=2)
    first = reconciliation.run(eng, req("rail_proofs", rail_id="solana_usdc"), "ops1")
    assert first["summary"]["unresolved"] == {"verified_without_receipt": 1}
    advance(eng, 1)
    clean = reconciliation.run(eng, req("rail_proofs", rail_id="fake_live"), "ops1")
    assert clean["status"] == "complete" and clean["findings"] == []
    advance(eng, 1)
    # A Tron run checks nothing: it is incomplete, says why, and hides nothing either.
    tron = reconciliation.run(eng, req(rail_id="tron_usdt"), "ops1")
    assert tron["status"] == "incomplete" and tron["findings"] == []
    assert "not scanned" in tron["detail"] and "wallet/*" in tron["detail"]
    assert tron["summary"]["inflows_scanned"] == 0

    assert nonzero(eng) == {"verified_without_receipt": 1.0}
    issues = {
        (i["category"], i["subject"].split(" finding")[0]) for i in reconciliation_issues(eng)
    }
    assert issues == {
        ("reconciliation_verified_without_receipt", f"reconciliation run {first['id']}"),
        ("reconciliation_incomplete", f"reconciliation run {tron['id']}"),
    }
    # Incomplete by design: no warning a re-run would clear (a re-run checks nothing).
    [told] = [i for i in reconciliation_issues(eng) if i["category"] == "reconciliation_incomplete"]
    assert told["severity"] == "info", told
    assert "explorer" in told["repair"] and "re-run it" not in told["repair"], told

    # A later run of the same scope and rail does replace its predecessor.
    [p] = proofs_of(eng, s["id"])
    gate.apply(eng, p.id, OP, gate.Via.staff)
    advance(eng, 1)
    reconciliation.run(eng, req("rail_proofs", rail_id="solana_usdc"), "ops1")
    assert nonzero(eng) == {}
    assert [i["category"] for i in reconciliation_issues(eng)] == ["reconciliation_incomplete"]


def _at(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


def test_a_run_over_a_narrower_window_hides_nothing_an_earlier_run_found(eng):
    bound = session_for(eng, "bound")
    full = reconciliation.run(eng, req(), "ops1")
    [orphan] = by_kind(full)["orphan_bound"]
    assert orphan["subjects"]["session_id"] == bound["id"]
    found = {"orphan_bound": 1.0, "orphan_unbound": 3.0}
    assert nonzero(eng) == found

    # After every transfer: it cannot see them, so it repairs and replaces nothing.
    advance(eng, 1)
    later = reconciliation.run(eng, req(since=_at(EXPECT["discovered"]["block_time"] + 1)), "ops1")
    assert later["status"] == "complete" and later["findings"] == []
    assert nonzero(eng) == found
    assert sorted(i["category"] for i in reconciliation_issues(eng)) == [
        "reconciliation_orphan_bound",
        *["reconciliation_orphan_unbound"] * 3,
    ]

    # A window that holds the bound payment finds it again: one payment to attach, counted
    # once.
    window = {
        "since": _at(EXPECT["bound"]["block_time"]),
        "until": _at(EXPECT["bound"]["block_time"] + 1),
    }
    advance(eng, 1)
    again = reconciliation.run(eng, req(**window), "ops1")
    assert [f["subject_key"] for f in again["findings"]] == [orphan["subject_key"]]
    assert nonzero(eng) == found
    assert len(reconciliation_issues(eng)) == 4

    # Attached there: the latest run's finding of it stands, repaired; the others are left.
    advance(eng, 1)
    applied = reconciliation.run(eng, req(apply=True, confirm=True, **window), "ops1")
    assert applied["summary"]["applied"] == 1
    assert nonzero(eng) == {"orphan_unbound": 3.0}
    assert {i["category"] for i in reconciliation_issues(eng)} == {"reconciliation_orphan_unbound"}

    # A complete run over the whole history looked again at everything: it alone stands.
    advance(eng, 1)
    whole = reconciliation.run(eng, req(), "ops1")
    with eng.db.tx() as s:
        assert [r.id for r in repo.current_runs(s) if r.scope == "chain_inflows"] == [whole["id"]]
    assert nonzero(eng) == {"orphan_unbound": 3.0}


def test_a_run_that_fails_keeps_the_repairs_it_made(eng, monkeypatch):
    first_s, second_s = session_for(eng, "bound"), session_for(eng, "discovered")
    real = proofs.submit_proof
    calls = []

    def flaky(engine, session_id, *a, **kw):
        calls.append(session_id)
        if len(calls) == 2:
            raise RuntimeError("the database went away")
        return real(engine, session_id, *a, **kw)

    monkeypatch.setattr(proofs, "submit_proof", flaky)
    run = reconciliation.run(eng, req(apply=True, confirm=True), "ops1")
    assert run["status"] == "failed" and "RuntimeError" in run["detail"]
    status = {f["subjects"]["session_id"]: f for f in by_kind(run)["orphan_bound"]}
    done, broken = status[calls[0]], status[calls[1]]
    assert done["repair_status"] == "applied" and broken["repair_status"] == "failed"
    assert broken["repair_result"] == {"code": "internal_error", "message": "RuntimeError"}
    assert run["summary"]["applied"] == 1
    assert [p.status for p in proofs_of(eng, calls[0])] == ["verified"]
    assert proofs_of(eng, calls[1]) == []
    assert {calls[0], calls[1]} == {first_s["id"], second_s["id"]}
    with eng.db.tx() as s:
        finished = s.scalar(
            select(AuditEvent.data).where(
                AuditEvent.subject_id == run["id"], AuditEvent.action == "reconciliation.finished"
            )
        )
    assert finished["status"] == "failed" and finished["applied"] == 1
    # The transfer it could not attach is still drift, and the run is reported as failed.
    issues = {i["category"]: i for i in reconciliation_issues(eng)}
    assert {"reconciliation_orphan_bound", "reconciliation_incomplete"} <= set(issues)
    assert "failed" in issues["reconciliation_incomplete"]["repair"]


def test_a_scan_that_raises_is_a_failed_run(eng, monkeypatch):
    from verifier.storage.repo import reconciliation as repo

    def broken(*a, **kw):
        raise RuntimeError("relation does not exist")

    monkeypatch.setattr(repo, "pending_past", broken)
    run = reconciliation.run(eng, req("rail_proofs"), "ops1")
    assert run["status"] == "failed" and run["findings"] == []
    assert "relation does not exist" in run["detail"] and run["finished_at"] is not None
    assert any(
        i["category"] == "reconciliation_incomplete" and "failed" in i["repair"]
        for i in reconciliation_issues(eng)
    )


def test_apply_is_refused_for_stored_data(eng):
    from verifier.core.errors import BadInput

    with pytest.raises(BadInput) as e:
        reconciliation.run(eng, req("rail_proofs", apply=True, confirm=True), "ops1")
    assert (e.value.code, e.value.field) == ("invalid_apply", "apply")
    assert reconciliation.list_runs(eng) == []
    with eng.db.tx() as s:
        assert s.scalars(select(Proof)).all() == []
