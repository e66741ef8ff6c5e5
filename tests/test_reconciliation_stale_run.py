"""A reconciliation run whose process died (a deploy, the OOM killer) stays `running`: nothing
finishes it, and assurance, which reports the latest finished run of each scope, said all was
well. A run still running long after any run takes is reported as incomplete."""

from __future__ import annotations

from datetime import timedelta

from tests.test_reconciliation import eng, req  # noqa: F401  (fixture)
from verifier.services import reconciliation
from verifier.services.assurance import assurance_report
from verifier.storage.models import new_id
from verifier.storage.reconciliation_models import RunStatus
from verifier.storage.repo import reconciliation as repo


def _running_run(engine, started_ago: timedelta) -> str:
    run_id = new_id()
    with engine.db.tx() as s:
        repo.insert_run(
            s,
            {
                "id": run_id,
                "scope": "chain_inflows",
                "rail_id": "solana_usdc",
                "since": None,
                "until": None,
                "row_limit": 100,
                "dry_run": False,
                "incident_id": "INC-7",
                "operator_reason": "crash",
                "staff": "ops1",
                "started_at": engine.now() - started_ago,
                "finished_at": None,
                "status": RunStatus.running.value,
                "detail": "",
                "summary": {},
            },
        )
    return run_id


def test_a_run_left_running_by_a_process_that_ended_is_reported(eng):  # noqa: F811
    left = _running_run(eng, timedelta(hours=3))
    current = _running_run(eng, timedelta(minutes=2))  # a run under way now is no issue
    issues = assurance_report(eng)["issues"]
    named = [i for i in issues if i["category"] == "reconciliation_incomplete"]
    assert [i["subject"] for i in named] == [f"reconciliation run {left}"], issues
    assert "running since" in named[0]["repair"]
    assert all(current not in i["subject"] for i in issues)


def test_running_the_same_scope_again_as_asked_clears_it(eng):  # noqa: F811
    left = _running_run(eng, timedelta(hours=3))  # chain_inflows on solana_usdc, died
    named = [
        i for i in assurance_report(eng)["issues"] if i["category"] == "reconciliation_incomplete"
    ]
    assert [i["subject"] for i in named] == [f"reconciliation run {left}"]
    run = reconciliation.run(eng, req(), "ops1")
    assert (run["scope"], run["rail_id"], run["status"]) == (
        "chain_inflows",
        "solana_usdc",
        "complete",
    )
    still = [
        i for i in assurance_report(eng)["issues"] if i["category"] == "reconciliation_incomplete"
    ]
    assert still == [], still


def test_a_run_over_a_narrower_window_does_not_clear_it(eng):  # noqa: F811
    left = _running_run(eng, timedelta(hours=3))  # over the whole history, died
    narrow = reconciliation.run(eng, req(since=eng.now() - timedelta(hours=1)), "ops1")
    assert narrow["status"] == "complete"
    named = [
        i for i in assurance_report(eng)["issues"] if i["category"] == "reconciliation_incomplete"
    ]
    assert [i["subject"] for i in named] == [f"reconciliation run {left}"]
