"""A Solana `chain_inflows` run over an old window: the treasury's signatures are listed from
the newest, so the pages after the window's end are read on the way to it. They have a budget
of their own (ten times RAILPROOF_RECONCILE_MAX_PAGES), so later transfers (anyone's dust to
the shared treasury) never put a window out of reach, and the RPC calls stay bounded. Over the
recorded treasury history (fixtures/solana/generated/inflows/) and a synthetic listing."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from rails.solana_inflows import list_signatures
from tests.helpers import cassette_engine
from tests.test_reconciliation import DOC, EXPECT, by_kind, req, session_for
from verifier.services import reconciliation


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
