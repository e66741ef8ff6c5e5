"""Which reconciliation runs drift is read from (`repo.current_runs`): of each scope and rail,
the latest run that completed over the whole history, the latest finished run after it, and
a run still reading when that one started.

A run that could not read its window (a chain out of its page budget: anyone's dust transfers
to the treasury are enough) is no evidence about what the whole-history run found there, and
neither is a run over a narrower window; what such a run saw repaired clears at the next
complete whole-history run. The set stays at two runs of a scope and rail whatever the
schedule, so the gauge, assurance and a resolution read a bounded set. On SQLite and
PostgreSQL, over the recorded treasury history (fixtures/solana/generated/inflows/)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event

from tests.conftest import CLOCK, make_pg_db
from tests.helpers import advance, cassette_engine
from tests.test_reconciliation import DOC, EXPECT, by_kind, req, session_for
from tests.test_reconciliation_drift import drift, nonzero, reconciliation_issues
from tests.test_reconciliation_solana_window import _Growing
from verifier.services import proofs, reconciliation
from verifier.services.audit import Operator
from verifier.storage.models import Proof
from verifier.storage.repo import reconciliation as repo


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


def _at(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


def test_an_incomplete_run_does_not_hide_drift_a_complete_run_found(eng):
    bound = session_for(eng, "bound")
    full = reconciliation.run(eng, req(), "ops1")
    assert full["status"] == "complete"
    [orphan] = by_kind(full)["orphan_bound"]
    assert orphan["subjects"]["session_id"] == bound["id"]
    assert nonzero(eng)["orphan_bound"] == 1.0

    # The same scope, rail and whole-history window, but the listing runs out of its page
    # budget after the newest page: the older transfers (the bound payment among them) were
    # never looked at again.
    eng.settings.reconcile_max_pages = 1
    advance(eng, 1)
    partial = reconciliation.run(eng, req(), "ops1")
    assert partial["status"] == "incomplete"
    # (What it shows of the bound payment is the complete run's finding, carried.)
    assert [f["subjects"].get("carried_from") for f in by_kind(partial)["orphan_bound"]] == [
        full["id"]
    ]

    # The payer of `bound` is still not credited: still drift, and the run is reported too.
    assert nonzero(eng).get("orphan_bound") == 1.0
    categories = {i["category"] for i in reconciliation_issues(eng)}
    assert {"reconciliation_orphan_bound", "reconciliation_incomplete"} <= categories

    # Nor does a second incomplete run push the complete one out.
    advance(eng, 1)
    assert reconciliation.run(eng, req(), "ops1")["status"] == "incomplete"
    assert nonzero(eng).get("orphan_bound") == 1.0
    with eng.db.tx() as s:
        current = [r.id for r in repo.current_runs(s) if r.scope == "chain_inflows"]
    assert len(current) == 2 and current[0] == full["id"] and partial["id"] not in current


def test_drift_a_narrower_run_saw_repaired_clears_at_the_next_whole_history_run(eng):
    bound = session_for(eng, "bound")
    full = reconciliation.run(eng, req(), "ops1")
    assert [f["subjects"]["session_id"] for f in by_kind(full)["orphan_bound"]] == [bound["id"]]

    # Repaired: the tenant submits the payment itself; it is verified.
    view, _ = proofs.submit_proof(eng, bound["id"], EXPECT["bound"]["signature"], None)
    assert view["status"] == "verified"

    # A run over a window holding the transfer sees it matched, but a narrower run stands
    # for nothing outside its window: the whole-history run's finding is still counted.
    advance(eng, 1)
    window = {
        "since": _at(EXPECT["bound"]["block_time"]),
        "until": _at(EXPECT["discovered"]["block_time"] + 1),
    }
    narrow = reconciliation.run(eng, req(**window), "ops1")
    assert narrow["status"] == "complete" and "orphan_bound" not in by_kind(narrow)
    assert narrow["summary"]["matched"] >= 1
    assert nonzero(eng).get("orphan_bound") == 1.0

    # The runbook's answer: re-run without --since/--until.
    advance(eng, 1)
    whole = reconciliation.run(eng, req(), "ops1")
    assert whole["status"] == "complete" and "orphan_bound" not in by_kind(whole)
    assert nonzero(eng).get("orphan_bound") is None
    assert "reconciliation_orphan_bound" not in {i["category"] for i in reconciliation_issues(eng)}


def test_a_rolling_schedule_without_a_whole_history_run_reads_its_latest_run(eng):
    """Only narrow runs: each replaces the one before it, so one that finds the thing
    repaired clears it at once."""
    bound = session_for(eng, "bound")
    first_window = {
        "since": _at(EXPECT["matched"]["block_time"]),
        "until": _at(EXPECT["bound"]["block_time"] + 1),
    }
    first = reconciliation.run(eng, req(**first_window), "ops1")
    assert first["status"] == "complete", first["detail"]
    assert [f["subjects"]["session_id"] for f in by_kind(first)["orphan_bound"]] == [bound["id"]]
    assert nonzero(eng).get("orphan_bound") == 1.0

    view, _ = proofs.submit_proof(eng, bound["id"], EXPECT["bound"]["signature"], None)
    assert view["status"] == "verified"
    advance(eng, 1)
    second_window = {
        "since": _at(EXPECT["bound"]["block_time"]),
        "until": _at(EXPECT["discovered"]["block_time"] + 1),
    }
    second = reconciliation.run(eng, req(**second_window), "ops1")
    assert second["status"] == "complete" and "orphan_bound" not in by_kind(second)
    assert nonzero(eng).get("orphan_bound") is None


# -- runs that overlap ---------------------------------------------------------------------


@pytest.fixture
def pg_url(pg_template):
    url, drop = make_pg_db(pg_template)
    yield url
    drop()


class _Held:
    """The recorded treasury; the first listing made by the thread named `held` waits at
    `reached` / `go` (a long run, mid-read)."""

    source = "cassette"

    def __init__(self, inner: _Growing, held: str):
        self.inner, self.held = inner, held
        self.reached, self.go = threading.Event(), threading.Event()
        self._waited = False

    def call(self, method: str, params: list[Any]) -> Any:
        if (
            method == "getSignaturesForAddress"
            and threading.current_thread().name == self.held
            and not self._waited
        ):
            self._waited = True
            self.reached.set()
            assert self.go.wait(60), "never released"
        return self.inner.call(method, params)


def _of(run, sig: str) -> list[dict]:
    return [f for f in run["findings"] if f["subjects"].get("transfer") == sig]


@pytest.mark.postgres
def test_a_since_run_still_reading_when_a_whole_history_run_starts_is_drift_and_carried(
    pg_url, monkeypatch
):
    """An operator's `--since` run over an old transfer (its proof stopped holding it) that
    finishes after the scheduled run started: what it found is drift at once, and the next
    scheduled run carries it, though neither scheduled run reads back that far."""
    monkeypatch.setattr(reconciliation, "SOLANA_LOOKBACK_SECONDS", 50)
    e = cassette_engine(
        pg_url,
        live_apply=True,
        discovery_page_limit=DOC["page"],
        reconcile_max_pages=10,
        env={"RAILPROOF_TREASURY_SOLANA_USDC": DOC["treasury"]},
    )
    chain = _Held(_Growing(4), held="operator")
    try:
        e.chains.set_transport("solana-mainnet", chain)
        sig = EXPECT["bound"]["signature"]
        view, _ = proofs.submit_proof(e, session_for(e, "bound")["id"], sig, ["alice"])
        assert view["status"] == "verified", view
        advance(e, 1)
        first = reconciliation.run(e, req(), "ops1")
        assert first["status"] == "complete", first["detail"]
        assert _of(first, sig) == []  # matched: the proof holds it
        with e.db.tx() as db:  # the proof stops holding it (a review rejected, say)
            db.get(Proof, view["id"]).status = "failed"

        # The operator's run over the old window starts first ...
        advance(e, 1)
        result: dict[str, Any] = {}

        def operator() -> None:
            since = _at(EXPECT["bound"]["block_time"] - 1)
            result["run"] = reconciliation.run(e, req(since=since), "ops2")

        t = threading.Thread(target=operator, name="operator")
        t.start()
        assert chain.reached.wait(60)
        # ... and while it reads, the scheduled run starts and completes.
        advance(e, 1)
        scheduled = reconciliation.run(e, req(), "ops1")
        assert scheduled["status"] == "complete", scheduled["detail"]
        assert _of(scheduled, sig) == []  # older than its lookback: not read
        chain.go.set()
        t.join(60)
        found = result["run"]
        assert found["status"] == "complete", found["detail"]
        [orphan] = _of(found, sig)
        assert reconciliation.is_drift(orphan), orphan  # money to send back

        with e.db.tx() as s:
            current = {r.id for r in repo.current_runs(s) if r.scope == "chain_inflows"}
        assert current == {scheduled["id"], found["id"]}
        subjects = [
            i["subject"]
            for i in reconciliation_issues(e)
            if i["category"].startswith("reconciliation_orphan")
        ]
        assert f"reconciliation run {found['id']} finding {orphan['id']}" in subjects

        advance(e, 1)
        nxt = reconciliation.run(e, req(), "ops1")
        assert nxt["status"] == "complete", nxt["detail"]
        [carried] = _of(nxt, sig)
        assert reconciliation.is_drift(carried), carried
        assert carried["subjects"]["carried_from"] == found["id"]
    finally:
        chain.go.set()
        e.db.dispose()


# -- a schedule of many runs ------------------------------------------------------------------


def _rolling_runs(engine, n: int, *, whole_first: bool) -> list[str]:
    """`railproof reconcile --scope rail_proofs --since <an hour ago>` every ten minutes, `n`
    runs (after one over the whole history when `whole_first`), each with a finding about a
    thing of its own: no run's window covers an earlier one's."""
    ids = []
    with engine.db.tx() as s:
        for i in range(n + whole_first):
            start = CLOCK + timedelta(minutes=10 * i)
            whole = whole_first and i == 0
            rid = uuid.uuid4().hex
            repo.insert_run(
                s,
                {
                    "id": rid,
                    "scope": "rail_proofs",
                    "rail_id": None,
                    "since": None if whole else start - timedelta(hours=1),
                    "until": None if whole else start,
                    "row_limit": 100,
                    "dry_run": True,
                    "incident_id": "INC-1",
                    "operator_reason": "scheduled reconciliation",
                    "staff": "cron",
                    "started_at": start,
                    "finished_at": start,
                    "status": "complete",
                    "detail": "",
                    "summary": {},
                },
            )
            repo.insert_findings(
                s,
                rid,
                [
                    {
                        "kind": "pending_past_sla",
                        "severity": "warning",
                        "subjects": {"proof_id": f"prf_{i}"},
                        "subject_key": f"proof_id=prf_{i}",
                    }
                ],
            )
            ids.append(rid)
    return ids


@contextmanager
def _statements(engine) -> Iterator[list[tuple[str, int]]]:
    """The statements sent to the database meanwhile, each with its parameter count."""
    sent: list[tuple[str, int]] = []

    def seen(conn, cursor, statement, parameters, context, executemany):
        sent.append((statement, len(parameters or ())))

    event.listen(engine.db.engine, "before_cursor_execute", seen)
    try:
        yield sent
    finally:
        event.remove(engine.db.engine, "before_cursor_execute", seen)


@pytest.mark.parametrize("whole_first", [False, True])
def test_a_rolling_schedule_keeps_the_current_runs_bounded(db_url, whole_first):
    e = cassette_engine(db_url)
    try:
        ids = _rolling_runs(e, 200, whole_first=whole_first)
        with e.db.tx() as s:
            current = [r.id for r in repo.current_runs(s)]
        # The whole-history run, if any, and the latest run.
        assert current == ([ids[0]] if whole_first else []) + [ids[-1]]

        assert drift(e)["pending_past_sla"] == len(current)

        # Assurance reads the findings of every current run in one query, not one per run.
        with _statements(e) as sent:
            issues = [
                i for i in reconciliation.assurance_issues(e) if i["category"].endswith("sla")
            ]
        assert len(issues) == len(current)
        assert len([q for q, _ in sent if q.lstrip().upper().startswith("SELECT")]) == 3

        # A resolution marks the same thing in the current runs only: a short list.
        with e.db.tx() as s:
            [finding] = repo.findings_of(s, ids[-1])
        op = Operator("ops1", "INC-2", "refunded by hand")
        with _statements(e) as sent:
            reconciliation.resolve_finding(e, finding.id, "accepted", op)
        [marked] = [n for q, n in sent if q.lstrip().upper().startswith("UPDATE RECONCILIATION")]
        assert marked < 12
    finally:
        e.db.dispose()
