"""A Solana `chain_inflows` run over an old window: the treasury's signatures are listed from
the newest, so the pages after the window's end are read on the way to it. They have a budget
of their own (ten times RAILPROOF_RECONCILE_MAX_PAGES), so later transfers (anyone's dust to
the shared treasury) never put a window out of reach, and the RPC calls stay bounded. Over the
recorded treasury history (fixtures/solana/generated/inflows/) and a synthetic listing.

A whole-history run after a complete one lists down to (a lookback before) the newest
signature that one listed and carries what it found that still needs a person: each run
listed the treasury's whole history, so once that was longer than a run reads every scheduled
run ended `incomplete`."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from rails.solana_inflows import list_signatures
from rails.transport.cassette import Call, CassetteTransport
from tests.helpers import advance, cassette_engine, recorded_calls
from tests.test_reconciliation import DOC, EXPECT, INFLOWS, by_kind, req, session_for
from tests.test_reconciliation_resolve import OP
from verifier.core.timeutil import utc
from verifier.services import proofs, reconciliation
from verifier.storage.models import PaymentSession


@pytest.fixture
def one_page(db_url):
    """One page of the window per run (two signatures a page, as recorded)."""
    e = cassette_engine(
        db_url,
        live_apply=True,
        discovery_page_limit=DOC["page"],
        reconcile_max_pages=1,
        env={"RAILPROOF_TREASURY_SOLANA_USDC": DOC["treasury"]},
    )
    yield e
    e.db.dispose()


def _at(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


# The two oldest transfers, behind a page of two later ones.
OLD = {
    "since": _at(EXPECT["matched"]["block_time"]),
    "until": _at(EXPECT["bound"]["block_time"] + 1),
}


def test_an_old_window_is_read_whole_behind_pages_of_later_transfers(one_page):
    bound = session_for(one_page, "bound")
    run = reconciliation.run(one_page, req(**OLD), "ops1")
    assert run["status"] == "complete", run["detail"]
    [orphan] = by_kind(run)["orphan_bound"]
    assert orphan["subjects"]["session_id"] == bound["id"]
    assert run["summary"]["inflows"] == 2


def test_the_pages_after_the_window_are_bounded_and_the_detail_names_the_setting(
    one_page, monkeypatch
):
    # Before the oldest transfer: both recorded pages are later than the window.
    before_all = {
        "since": _at(EXPECT["matched"]["block_time"] - 100),
        "until": _at(EXPECT["matched"]["block_time"]),
    }
    run = reconciliation.run(one_page, req(**before_all), "ops1")
    assert run["status"] == "complete", run["detail"]
    # Two pages, the empty one after them, and the status of the signature the empty one was
    # asked before: the node knows it, so the history ends there.
    assert run["findings"] == [] and run["summary"]["rpc_calls"] == 4

    monkeypatch.setattr(reconciliation, "LATER_PAGES", 1)  # one later page a run
    run = reconciliation.run(one_page, req(**before_all), "ops1")
    assert run["status"] == "incomplete"
    assert run["summary"]["rpc_calls"] == 2  # the one allowed, and the one past it
    assert "RAILPROOF_RECONCILE_MAX_PAGES" in run["detail"]
    assert "later signatures" in run["detail"]


def test_a_window_longer_than_the_budget_names_the_setting(one_page):
    run = reconciliation.run(one_page, req(), "ops1")  # the whole history: two pages
    assert run["status"] == "incomplete"
    assert "RAILPROOF_RECONCILE_MAX_PAGES" in run["detail"]
    assert "narrow the window" in run["detail"]


# -- the listing ------------------------------------------------------------------------------


class _Listing:
    """A treasury's signatures, one a second from `oldest`, paged newest first as
    getSignaturesForAddress pages them (`before`, `limit`)."""

    def __init__(self, n: int, oldest: int = 1_000):
        self.entries = [
            {"signature": f"s{t}", "slot": t, "blockTime": t, "err": None}
            for t in range(oldest + n - 1, oldest - 1, -1)
        ]
        self.calls = 0

        self.statuses = 0  # getSignatureStatuses asked (the signature an empty page was before)
        self.forgotten: set[str] = set()  # signatures this node does not have

    def call(self, method: str, params: list[Any]) -> Any:
        known = [e["signature"] for e in self.entries if e["signature"] not in self.forgotten]
        if method == "getSignatureStatuses":
            self.statuses += 1
            return {"value": [{"slot": 1} if sig in known else None for sig in params[0]]}
        assert method == "getSignaturesForAddress"
        self.calls += 1
        opts = params[1]
        start = 0
        if "before" in opts:
            if opts["before"] not in known:
                return []  # as a node answers for a signature it does not have
            start = next(i for i, e in enumerate(self.entries) if e["signature"] == opts["before"])
            start += 1
        return self.entries[start : start + opts["limit"]]


def test_an_empty_page_before_a_signature_the_node_does_not_have_is_not_the_end():
    # A node answers an empty page older than a signature it does not have (its block
    # dropped, a node of a pool behind the one that listed it): the scan says so, never that
    # the history ends there.
    chain = _Listing(30)
    chain.forgotten = {"s1015"}
    scan = list_signatures(chain, "T", before="s1015", page_limit=10, max_pages=3)
    assert scan.entries == [] and not scan.reached_end and scan.before_unknown
    assert scan.error is not None and "does not know s1015" in scan.error
    assert (chain.calls, chain.statuses) == (1, 1)
    # The end of the history is still the end: the status of the signature it was asked
    # before is asked once, and the node has it.
    chain = _Listing(20)
    scan = list_signatures(chain, "T", page_limit=10, max_pages=5)
    assert scan.reached_end and scan.error is None and len(scan.entries) == 20
    assert (chain.calls, chain.statuses) == (3, 1)


def test_later_pages_count_against_their_own_budget():
    chain = _Listing(100)  # 1000 … 1099, ten a page
    scan = list_signatures(
        chain,
        "T",
        not_before=1_000,
        not_after=1_010,
        page_limit=10,
        max_pages=1,
        max_later_pages=9,
        confirm_end=True,
    )
    assert scan.error is None and scan.reached_end
    assert [e.block_time for e in scan.entries] == list(range(1_009, 999, -1))
    assert chain.calls == 9 + 1 + 1  # the later pages, the window's, the one that ends it

    chain = _Listing(100)
    scan = list_signatures(
        chain,
        "T",
        not_before=1_000,
        not_after=1_010,
        page_limit=10,
        max_pages=1,
        max_later_pages=8,
        confirm_end=True,
    )
    assert scan.out_of == "later" and scan.entries == [] and chain.calls == 8 + 1


def test_a_window_of_exactly_its_pages_is_read_whole_and_one_more_is_not():
    chain = _Listing(30)  # 1000 … 1029
    scan = list_signatures(
        chain,
        "T",
        not_before=1_010,
        not_after=1_030,
        page_limit=10,
        max_pages=2,
        max_later_pages=20,
        confirm_end=True,
    )
    assert scan.error is None and len(scan.entries) == 20 and chain.calls == 3
    scan = list_signatures(
        chain,
        "T",
        not_before=1_009,
        not_after=1_030,
        page_limit=10,
        max_pages=2,
        max_later_pages=20,
        confirm_end=True,
    )
    assert scan.out_of == "window" and len(scan.entries) == 20


def test_without_a_later_budget_every_page_counts_as_before():
    chain = _Listing(100)
    scan = list_signatures(chain, "T", not_before=1_000, page_limit=10, max_pages=3)
    assert scan.out_of == "window" and chain.calls == 3 and len(scan.entries) == 30


# -- a whole-history run follows on from the last complete one ---------------------------------


class _Growing:
    """The recorded treasury as its history grows: the oldest `shown` of its transfers are
    listed, paged newest first as getSignaturesForAddress pages them; every other call is
    answered from the recording."""

    source = "cassette"

    def __init__(self, shown: int):
        calls = recorded_calls(INFLOWS)
        listing = "getSignaturesForAddress"
        self.recorded = CassetteTransport([Call(c) for c in calls if c["method"] != listing])
        self.history = sorted(
            (e for c in calls if c["method"] == listing for e in c["result"]),
            key=lambda e: e["blockTime"],
            reverse=True,
        )
        self.shown = shown
        self.listed = 0  # getSignaturesForAddress calls
        self.unfinal: set[str] = set()  # signatures whose status is `confirmed` as yet

    def call(self, method: str, params: list[Any]) -> Any:
        if method == "getSignatureStatuses" and params[0][0] in self.unfinal:
            answer = copy.deepcopy(self.recorded.call(method, params))
            answer["value"][0].update(confirmations=5, confirmationStatus="confirmed")
            return answer
        if method != "getSignaturesForAddress":
            return self.recorded.call(method, params)
        self.listed += 1
        opts = params[1]
        entries = self.history[len(self.history) - self.shown :]
        start = 0
        if "before" in opts:
            start = 1 + next(i for i, e in enumerate(entries) if e["signature"] == opts["before"])
        return entries[start : start + opts["limit"]]


@pytest.fixture
def growing(one_page, monkeypatch):
    # The recorded transfers are 100 s apart: a lookback of 50 s re-lists only the newest.
    monkeypatch.setattr(reconciliation, "SOLANA_LOOKBACK_SECONDS", 50)
    chain = _Growing(4)
    one_page.chains.set_transport("solana-mainnet", chain)
    return one_page, chain


def _whole(e):
    advance(e, 1)  # runs are ordered by their start: the pinned clock moves on between them
    return reconciliation.run(e, req(), "ops1")


def _first_complete(e):
    e.settings.reconcile_max_pages = 10  # raised for one run, as the README says
    run = _whole(e)
    e.settings.reconcile_max_pages = 1
    assert run["status"] == "complete", run["detail"]
    return run


def _drift(e) -> list[str]:
    return [
        i["subject"]
        for i in reconciliation.assurance_issues(e)
        if i["category"].startswith("reconciliation_orphan")
    ]


def _of(run, case: str) -> list[dict]:
    return [f for f in run["findings"] if f["subjects"]["transfer"] == EXPECT[case]["signature"]]


def test_a_history_longer_than_the_budget_completes_its_scheduled_runs_after_one_complete_run(
    growing,
):
    # Every whole-history run listed the treasury back to its first signature: once that was
    # more than RAILPROOF_RECONCILE_MAX_PAGES pages, every scheduled run ended `incomplete`.
    e, chain = growing
    chain.shown = 3
    session_for(e, "bound")
    assert _whole(e)["status"] == "incomplete"  # two pages of the window, one a run
    first = _first_complete(e)
    [old] = _of(first, "bound")
    assert (
        old["kind"] == "orphan_bound"
        and first["summary"]["newest_signature"] == (EXPECT["unbound"]["signature"])
    )
    chain.shown = 4  # a new transfer: the history is longer still
    run = first
    for _ in range(3):  # the schedule: each run lists down to the last, less the lookback
        chain.listed, prev = 0, run["id"]
        run = _whole(e)
        assert run["status"] == "complete", run["detail"]
        # The window's page, and the one that ends the listing.
        assert chain.listed <= 2 and run["summary"]["follows_run"] == prev
        [f] = _of(run, "bound")
        assert f["kind"] == "orphan_bound" and f["subjects"]["carried_from"] == first["id"], f
        assert f["repair_status"] == "proposed"
        assert run["summary"]["newest_signature"] == EXPECT["discovered"]["signature"]
    assert not any(
        i["category"] == "reconciliation_incomplete" for i in reconciliation.assurance_issues(e)
    )
    # Every transfer of the history is in the last run's drift, once.
    assert len(_drift(e)) == 4
    assert all(s.startswith(f"reconciliation run {run['id']} ") for s in _drift(e))


def test_an_orphan_found_by_an_old_run_stays_drift_until_resolved(growing):
    e, _ = growing
    first = _first_complete(e)
    [found] = _of(first, "matched")  # no session carries its reference
    assert found["kind"] == "orphan_unbound"
    for _ in range(2):
        run = _whole(e)
        assert run["status"] == "complete", run["detail"]
        [f] = _of(run, "matched")
        # Carried, naming the run that read it from the chain, and still drift.
        assert reconciliation.is_drift(f) and f["subjects"]["carried_from"] == first["id"], f
        assert f"reconciliation run {run['id']} finding {f['id']}" in _drift(e)
    reconciliation.resolve_finding(e, f["id"], "refunded", OP)
    assert len(_drift(e)) == 3
    after = _whole(e)
    assert after["status"] == "complete", after["detail"]
    assert not any(reconciliation.is_drift(g) for g in _of(after, "matched")), after["findings"]
    assert len(_drift(e)) == 3


def test_a_carried_orphan_a_proof_now_holds_is_not_drift(growing):
    e, _ = growing
    s = session_for(e, "bound")
    first = _first_complete(e)
    assert [f["kind"] for f in _of(first, "bound")] == ["orphan_bound"]
    carried = _whole(e)
    [g] = _of(carried, "bound")
    assert g["kind"] == "orphan_bound" and g["subjects"]["carried_from"] == first["id"], g
    view, _ = proofs.submit_proof(e, s["id"], EXPECT["bound"]["signature"], ["alice"])
    assert view["status"] == "verified", view
    run = _whole(e)
    assert run["status"] == "complete", run["detail"]
    assert _of(run, "bound") == [] and run["summary"]["carried_matched"] == 1, run["summary"]
    assert len(_drift(e)) == 3


def test_a_carried_transfer_whose_kind_changed_counts_once_in_drift(growing):
    # The complete run found the transfer bound; its session expired since, and the next
    # run (incomplete: --limit) carries it unbound. Both are current runs: the transfer is
    # one thing, counted once, as the later run judged it.
    e, chain = growing
    chain.shown = 3
    s = session_for(e, "bound")
    first = _first_complete(e)
    assert [f["kind"] for f in _of(first, "bound")] == ["orphan_bound"]
    with e.db.tx() as db:
        db.get(PaymentSession, s["id"]).status = "expired"
    chain.shown = 4  # a new transfer: the run lists two, and --limit 1 leaves one
    advance(e, 1)
    run = reconciliation.run(e, req(limit=1), "ops1")
    assert run["status"] == "incomplete", run["detail"]
    [g] = _of(run, "bound")
    assert g["kind"] == "orphan_unbound" and g["subjects"]["carried_from"] == first["id"], g
    about = [d for d in _drift(e) if d.endswith(f"finding {g['id']}")]
    assert about == [f"reconciliation run {run['id']} finding {g['id']}"]
    # The bound finding of the complete run is not drift beside it.
    [old] = _of(first, "bound")
    assert not any(d.endswith(f"finding {old['id']}") for d in _drift(e)), _drift(e)
    assert len(_drift(e)) == 4  # the four transfers of the history, once each


def test_a_since_run_finding_is_carried_however_many_runs_came_after_it(growing, monkeypatch):
    # A transfer a --since run found (its proof stopped holding it) is carried by the next
    # whole-history run however many runs a rolling --since schedule made in between: there
    # was a cap of 50 runs, and the 51st pushed the finding out of drift.
    from verifier.storage.models import Proof
    from verifier.storage.repo import reconciliation as repo

    e, _ = growing
    sig = EXPECT["bound"]["signature"]
    s = session_for(e, "bound")
    view, _ = proofs.submit_proof(e, s["id"], sig, ["alice"])
    assert view["status"] == "verified", view
    first = _first_complete(e)
    assert _of(first, "bound") == []  # matched: the proof holds it
    with e.db.tx() as db:  # the proof stops holding it (a review rejected, say)
        db.get(Proof, view["id"]).status = "failed"
    advance(e, 1)
    e.settings.reconcile_max_pages = 10
    found = reconciliation.run(e, req(since=_at(EXPECT["bound"]["block_time"] - 1)), "ops1")
    e.settings.reconcile_max_pages = 1
    [x] = _of(found, "bound")
    assert reconciliation.is_drift(x), x
    newest = _at(EXPECT["discovered"]["block_time"] + 1)
    for _ in range(51):  # a rolling window over the last minutes, between scheduled runs
        advance(e, 1)
        reconciliation.run(e, req(since=newest), "ops1")
    monkeypatch.setattr(repo, "_PAGE", 1)  # the carried findings are read a page at a time
    run = _whole(e)
    assert run["status"] == "complete", run["detail"]
    assert run["summary"]["carried"] == 3, run["summary"]  # the first run's orphans too
    [f] = _of(run, "bound")
    assert reconciliation.is_drift(f) and f["subjects"]["carried_from"] == found["id"], f


def test_after_a_treasury_change_the_former_treasurys_orphans_stay_drift(growing, monkeypatch):
    # The first run after a treasury change lists the new account's whole history; it carried
    # nothing of the former account's, so an orphan found there (a refund owed) left drift
    # once that run completed. It is carried, naming the account its money came into.
    e, _ = growing
    first = _first_complete(e)
    [x] = _of(first, "matched")  # no session carries its reference
    assert x["kind"] == "orphan_unbound" and reconciliation.is_drift(x)
    new = "9WzDXwBbmkg8ZTbNMqUxvQRAyrZzDsGYdLVL9zYtAWWM"  # the treasury approved next
    monkeypatch.setattr(reconciliation, "_treasury", lambda engine, rail: new)
    for _ in range(2):  # the new account's history read whole, then followed on from
        run = _first_complete(e)
        assert run["summary"]["treasury"] == new
        [f] = _of(run, "matched")
        assert reconciliation.is_drift(f) and f["subjects"]["carried_from"] == first["id"], f
        assert f["subjects"]["recipient"] == DOC["treasury"], f
        assert f"reconciliation run {run['id']} finding {f['id']}" in _drift(e)
    assert len(_drift(e)) == 4  # every orphan of the former account, once


class _Accounts:
    """`inner` with one account's history: every other account's listing is empty. The
    accounts listed are kept, in order."""

    source = "cassette"

    def __init__(self, inner: _Growing, account: str):
        self.inner, self.account = inner, account
        self.listed: list[str] = []

    def call(self, method: str, params: list[Any]) -> Any:
        if method == "getSignaturesForAddress":
            self.listed.append(params[0])
            if params[0] != self.account:
                return []
        return self.inner.call(method, params)


def test_a_former_treasury_a_session_still_pays_is_read(growing, monkeypatch):
    # A session opened before a treasury change pays the former treasury; only the current
    # one's account was listed, so money paid there that nobody proved was never reported.
    from rails.solana import token_account

    e, chain = growing
    s = session_for(e, "bound")  # opened while the recorded treasury was the rail's
    former = token_account(DOC["treasury"], e.rail("solana_usdc").asset)
    accounts = _Accounts(chain, former)
    e.chains.set_transport("solana-mainnet", accounts)
    new = "9WzDXwBbmkg8ZTbNMqUxvQRAyrZzDsGYdLVL9zYtAWWM"  # the treasury approved next
    monkeypatch.setattr(reconciliation, "_treasury", lambda engine, rail: new)
    first = _first_complete(e)
    assert former in accounts.listed and first["summary"]["treasury"] == new
    [f] = _of(first, "bound")
    assert f["kind"] == "orphan_bound" and f["subjects"]["session_id"] == s["id"], f
    assert f["subjects"]["recipient"] == DOC["treasury"], f
    [u] = _of(first, "matched")  # no session carries its reference
    assert u["kind"] == "orphan_unbound" and u["subjects"]["recipient"] == DOC["treasury"], u
    assert len(_drift(e)) == 4
    # Read again while the session may still be paid (from its opening: the budget of
    # pages holds for it too), and carried beside it: once each.
    assert _whole(e)["status"] == "incomplete"
    again = _first_complete(e)
    [g] = _of(again, "bound")
    assert g["kind"] == "orphan_bound" and "carried_from" not in g["subjects"], g
    assert len(again["findings"]) == 4 and len(_drift(e)) == 4
    # No session pays it any more (expired longer than the grace ago): the former account
    # is listed once more, from where the last run got to there (a payment made since is
    # still some session's), then no more, and what was found there is carried, still drift.
    with e.db.tx() as db:
        ended = utc(db.get(PaymentSession, s["id"]).expires_at)
    advance(e, (ended - e.now()).total_seconds() + e.settings.tx_not_found_grace_seconds + 1)
    accounts.listed.clear()
    last = _whole(e)
    assert last["status"] == "complete", last["detail"]
    assert former in accounts.listed, accounts.listed
    assert last["summary"]["former_listed"][DOC["treasury"]]["newest_block_time"]
    accounts.listed.clear()
    run = _whole(e)
    assert run["status"] == "complete", run["detail"]
    assert former not in accounts.listed and accounts.listed, accounts.listed
    [h] = _of(run, "bound")
    assert h["subjects"]["carried_from"] == again["id"], h  # the run that read it
    assert h["subjects"]["recipient"] == DOC["treasury"] and reconciliation.is_drift(h), h
    assert len(run["findings"]) == 4 and len(_drift(e)) == 4
    accounts.listed.clear()  # nor by the runs after it
    assert _whole(e)["status"] == "complete" and former not in accounts.listed


def test_a_payment_into_a_former_treasury_after_its_last_listing_is_reported(growing, monkeypatch):
    # A session opened while the former treasury was the treasury is paid there after the
    # last run listed it, and nobody proves it; the next run comes once that session has
    # expired longer than the grace ago. The former account is listed from where the last
    # run got to there (not only from a session still alive): the payment is drift.
    from rails.solana import token_account

    e, chain = growing
    chain.shown = 3  # the treasury's history as the last run saw it
    session_for(e, "bound")
    first = _first_complete(e)
    assert first["summary"]["treasury"] == DOC["treasury"]
    assert _of(first, "discovered") == []

    late = session_for(e, "discovered")  # opened while it is still the treasury ...
    chain.shown = 4  # ... and paid after that run; nobody submits the proof
    former = token_account(DOC["treasury"], e.rail("solana_usdc").asset)
    e.chains.set_transport("solana-mainnet", _Accounts(chain, former))
    new = "9WzDXwBbmkg8ZTbNMqUxvQRAyrZzDsGYdLVL9zYtAWWM"  # the treasury approved next
    monkeypatch.setattr(reconciliation, "_treasury", lambda engine, rail: new)
    with e.db.tx() as db:
        ended = utc(db.get(PaymentSession, late["id"]).expires_at)
    advance(e, (ended - e.now()).total_seconds() + e.settings.tx_not_found_grace_seconds + 1)

    run = _first_complete(e)
    assert run["summary"]["treasury"] == new
    found = _of(run, "discovered")
    assert found and all(reconciliation.is_drift(f) for f in found), run["findings"]
    assert all(f["subjects"]["recipient"] == DOC["treasury"] for f in found), found
    assert len(_drift(e)) == 4, _drift(e)


def test_a_window_run_reads_a_former_treasury_over_its_window(growing, monkeypatch):
    from rails.solana import token_account

    e, chain = growing
    s = session_for(e, "bound")
    former = token_account(DOC["treasury"], e.rail("solana_usdc").asset)
    accounts = _Accounts(chain, former)
    e.chains.set_transport("solana-mainnet", accounts)
    new = "9WzDXwBbmkg8ZTbNMqUxvQRAyrZzDsGYdLVL9zYtAWWM"
    monkeypatch.setattr(reconciliation, "_treasury", lambda engine, rail: new)
    run = reconciliation.run(e, req(**OLD), "ops1")
    assert run["status"] == "complete", run["detail"]
    assert {f["subjects"]["transfer"] for f in run["findings"]} == {
        EXPECT["matched"]["signature"],
        EXPECT["bound"]["signature"],
    }
    [f] = _of(run, "bound")
    assert (f["kind"], f["subjects"]["session_id"]) == ("orphan_bound", s["id"]), f
    assert f["subjects"]["recipient"] == DOC["treasury"], f


def test_a_transfer_a_pending_proof_waited_for_is_reported_once_the_proof_fails(growing):
    # A run counted a transfer its session's pending proof waited for as matched and kept
    # nothing of it. The proof then failed (what the transfer moved fails only once final:
    # `pending not_final` until then), and the runs after listed no further back than their
    # lookback: money received for a session left unpaid, and no run ever reported it.
    e, chain = growing
    sig = EXPECT["bound"]["signature"]
    s = session_for(e, "bound")
    with e.db.tx() as db:  # the session asked for more than the transfer moved
        db.get(PaymentSession, s["id"]).amount = EXPECT["bound"]["amount"] + 1
    chain.unfinal.add(sig)
    view, _ = proofs.submit_proof(e, s["id"], sig, ["alice"])
    assert (view["status"], view["failure_code"]) == ("pending", "not_final"), view
    first = _first_complete(e)
    [f] = _of(first, "bound")
    # Information, not drift: the proof's verification decides. Named for the next run.
    assert (f["kind"], f["severity"]) == ("inflow_awaiting_proof", "info"), f
    assert f["subjects"]["proof_ids"] == [view["id"]] and f["subjects"]["session_id"] == s["id"]
    assert not reconciliation.is_drift(f) and first["summary"]["awaiting_proof"] == 1
    chain.shown = 4
    waiting = _whole(e)  # still pending: carried as it is
    [g] = _of(waiting, "bound")
    assert g["kind"] == "inflow_awaiting_proof" and g["subjects"]["carried_from"] == first["id"]
    chain.unfinal.clear()  # finalized: the proof fails
    assert proofs.verify_proof(e, view["id"]).code.value == "amount_mismatch"
    run = _whole(e)
    assert run["status"] == "complete", run["detail"]
    assert run["summary"]["not_before"] > EXPECT["bound"]["block_time"]  # not listed again
    [h] = _of(run, "bound")
    # What a fresh scan reports: bound by reference, failing its session's checks; a refund.
    assert h["kind"] == "orphan_unbound" and reconciliation.is_drift(h), h
    assert "amount_mismatch" in h["detail"] and h["subjects"]["carried_from"] == first["id"]
    assert f"reconciliation run {run['id']} finding {h['id']}" in _drift(e)
    # And it stays drift, carried as any orphan is, until a person settles it.
    again = _whole(e)
    [k] = _of(again, "bound")
    assert k["kind"] == "orphan_unbound" and k["subjects"]["carried_from"] == first["id"], k
