"""Watching a Solana treasury: pure functions over a `Transport`.

The watched address is the treasury's *token account* for the rail's mint (an SPL transfer
names the destination token account, not the owner wallet). `getSignaturesForAddress` lists
newest first: pages go backwards with `before` = the oldest signature seen (a caller may
start there too, to go on with a walk an earlier scan left unfinished), and stop at `until`
(the newest signature already processed), at a blockTime older than the window, or after
`max_pages`. A window with an end is reached through the pages after it, which have their
own budget. A node error mid-scan is returned with what was read, never swallowed: the
caller reports the scan incomplete.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rails.base import Finding, Terms, Transport, first_finding
from rails.errors import CassetteError, MalformedResponse, TransportError
from rails.solana import (
    CHECKS,
    GET_TX_OPTIONS,
    STATUS_OPTIONS,
    Context,
    memos_of,
    movements,
    parse_transaction,
    reference_candidates,
)

MAX_PAGE = 1000


@dataclass(frozen=True)
class SignatureEntry:
    signature: str
    slot: int | None
    block_time: int | None
    failed: bool


@dataclass
class SignatureScan:
    entries: list[SignatureEntry] = field(default_factory=list)  # newest first
    calls: int = 0
    error: str | None = None  # why the scan stopped before its end
    reached_end: bool = False  # the history (or `until`, or the window's start) was reached
    # Which page budget ran out when one did: "window" (`max_pages`) or "later"
    # (`max_later_pages`, the pages after the window's end).
    out_of: str | None = None
    # The node answered no page older than `before` and does not know that signature (its
    # block dropped, or another node of a pool, behind): nothing says the history ends there.
    before_unknown: bool = False


def _entry(raw: Any) -> SignatureEntry:
    if not isinstance(raw, dict) or not isinstance(raw.get("signature"), str):
        raise MalformedResponse(f"getSignaturesForAddress: bad entry {raw!r:.120}")
    slot, bt = raw.get("slot"), raw.get("blockTime")
    return SignatureEntry(
        raw["signature"],
        slot if isinstance(slot, int) else None,
        bt if isinstance(bt, int) else None,
        raw.get("err") is not None,
    )


def list_signatures(
    chain: Transport,
    address: str,
    *,
    until: str | None = None,
    before: str | None = None,
    not_before: int | None = None,
    not_after: int | None = None,
    page_limit: int = MAX_PAGE,
    max_pages: int = 20,
    max_later_pages: int = 0,
    confirm_end: bool = False,
    commitment: str = "confirmed",
) -> SignatureScan:
    """Signatures touching `address`, newest first, from just older than `before` (None: the
    newest) down to `until` (exclusive) or the first entry whose blockTime is before
    `not_before`, leaving out those whose blockTime is `not_after` or later.

    A page whose every entry is `not_after` or later holds nothing of the window: with
    `max_later_pages`, up to that many such pages are passed over without counting against
    `max_pages`, so a window behind many later transfers is still reached. With
    `confirm_end`, once `max_pages` full pages of the window are read, one more page is read
    only to find whether the window ends there (its first entry is before `not_before`, or it
    is empty): a window of exactly `max_pages` pages is then read whole."""
    scan = SignatureScan()
    limit = max(1, min(MAX_PAGE, page_limit))
    pages = later_pages = 0
    while True:
        opts: dict[str, Any] = {"limit": limit, "commitment": commitment}
        if before is not None:
            opts["before"] = before
        if until is not None:
            opts["until"] = until
        scan.calls += 1
        try:
            page = chain.call("getSignaturesForAddress", [address, opts])
            if not isinstance(page, list):
                raise MalformedResponse(
                    f"getSignaturesForAddress: expected a list, got {page!r:.120}"
                )
            entries = [_entry(x) for x in page]
            # SECURITY: a node answers an empty page older than a signature it does not know
            # (a confirmed block dropped, a node of a pool behind the one that listed it):
            # taken as the history's end, the walk would pass over every transfer behind it.
            if not entries and before is not None and not _known(chain, before, scan):
                scan.before_unknown = True
                scan.error = f"getSignaturesForAddress({address}): the node does not know {before}"
                return scan
        except (TransportError, CassetteError) as e:
            scan.error = f"getSignaturesForAddress({address}): {e}"
            return scan
        later = (
            max_later_pages > 0
            and not_after is not None
            and bool(entries)
            and all(e.block_time is not None and e.block_time >= not_after for e in entries)
        )
        if later:
            if later_pages == max_later_pages:
                return _out_of(
                    scan, "later", f"more than {max_later_pages} pages after the window", address
                )
            later_pages += 1
        elif pages == max_pages:  # the page read only to find the window's end
            first = entries[0].block_time if entries else None
            if not entries or (not_before is not None and first is not None and first < not_before):
                scan.reached_end = True
                return scan
            return _out_of(scan, "window", f"more than {max_pages} pages in the window", address)
        else:
            pages += 1
            for entry in entries:
                t = entry.block_time
                if not_before is not None and t is not None and t < not_before:
                    scan.reached_end = True
                    return scan
                if not_after is None or t is None or t < not_after:
                    scan.entries.append(entry)
        if len(entries) < limit:
            scan.reached_end = True
            return scan
        before = entries[-1].signature
        if not later and pages >= max_pages and not confirm_end:
            return _out_of(scan, "window", f"more than {max_pages} pages in the window", address)


def _known(chain: Transport, signature: str, scan: SignatureScan) -> bool:
    """Whether the node has `signature` (any commitment, its whole history searched)."""
    scan.calls += 1
    got = chain.call("getSignatureStatuses", [[signature], dict(STATUS_OPTIONS)])
    value = got.get("value") if isinstance(got, dict) else None
    if not isinstance(value, list) or len(value) != 1:
        raise MalformedResponse(f"getSignatureStatuses: expected one status, got {got!r:.120}")
    return value[0] is not None


def _out_of(scan: SignatureScan, budget: str, what: str, address: str) -> SignatureScan:
    scan.out_of = budget
    scan.error = f"getSignaturesForAddress({address}): {what}"
    return scan


@dataclass(frozen=True)
class SolanaInflow:
    """One transaction that moved the rail's mint into the treasury's token account."""

    signature: str
    slot: int | None
    block_time: int | None
    amount: int  # net base units received by the treasury owner
    sender: str | None
    account_keys: tuple[str, ...]  # those that could be a session's chosen reference
    result: Any  # the getTransaction answer, for the rail's own checks
    # Every key it carries: a reference railproof generated binds wherever it sits (a smart
    # wallet's execute, a swap's route), as verification takes it.
    keys: tuple[str, ...] = ()


def fetch_inflow(chain: Transport, signature: str, mint: str, treasury: str) -> SolanaInflow | None:
    """The transaction's effect on `treasury` (an owner wallet); None when it moved no `mint`
    into it (an outflow, a failed or unrelated transaction). Transport errors propagate, an
    answer that cannot be read among them (MalformedResponse)."""
    result = fetch_transaction(chain, signature)
    view = parse_transaction(result, signature)
    if view.err is not None:
        return None
    moves = movements(view, mint)
    received = sum(m.delta for m in moves if m.owner == treasury and m.delta != 0)
    if received <= 0:
        return None
    senders = sorted({m.owner for m in moves if m.delta < 0 and m.owner})
    return SolanaInflow(
        signature,
        view.slot,
        view.block_time,
        received,
        ",".join(senders) or None,
        reference_candidates(view),
        result,
        tuple(dict.fromkeys(view.account_keys)),
    )


def fetch_transaction(chain: Transport, signature: str) -> Any:
    """The getTransaction answer for a listed signature. Transport errors propagate; a
    signature the node listed but does not return is one too (read again later)."""
    result = chain.call("getTransaction", [signature, dict(GET_TX_OPTIONS)])
    if result is None:
        raise MalformedResponse(f"getTransaction: {signature} listed for the address but not found")
    return result


def refusal(result: Any, signature: str, terms: Terms, mint: str, decimals: int) -> Finding | None:
    """What the rail's verification would fail the transaction for against `terms`, decided
    from its getTransaction answer alone by the rail's own checks in their order; None when
    it would not fail it (it passes them, or only a person can decide). A watcher uses it to
    leave aside a transaction that merely names a session's reference (anyone can add one)
    instead of submitting a proof bound to fail."""
    view = parse_transaction(result, signature)
    ctx = Context(
        view,
        terms,
        mint,
        decimals,
        movements(view, mint),
        memos_of(view),
        reference_candidates(view),
    )
    found = first_finding(CHECKS, ctx)
    return found if found is not None and not found.review else None
