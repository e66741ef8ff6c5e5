"""Discovery: the worker finds the payments of open sessions no proof holds a transfer for
(their client submitted none, or only pending ones: a hash a wallet replaced, a signature it
re-sent under another, never lands), and submits them as any proof (actor `discovery`):
verified, finalized and applied through the normal path. A transfer a session's own pending
proof already names is left to the worker's re-checks, never submitted twice.

Per cycle and rail, the treasury is watched once (shared by every open session, never one
poll per session): `getSignaturesForAddress` of the treasury's token account, newest first
down to the last signature done with, then one `getTransaction` per new transfer for
RAILPROOF_DISCOVERY_CYCLE_BUDGET_S at most (a walk longer than one cycle, or its budget, goes
on in the next from where it stopped), matched to the open sessions
its references name (looked up by those keys: however many sessions are open, none is left
out). Sessions paying a recipient that is not the treasury are looked up by their reference
(one walk per such session); a transaction naming it is submitted only when the rail's own
checks would not fail it (anyone can add one that merely names the key). On EVM, where a
session binds by its payer, each recipient of the watched sessions is watched the same way
(the treasury first, then the others in turn: a treasury before an approved change, an
address a session named): `eth_getLogs` of the token's Transfers to it, each sender's logs
in one transaction summed into one payment as verification sums them (a smart wallet may pay
in several), matched to the one session naming that payer and amount. A watch that finds
nothing backs off (up to RAILPROOF_DISCOVERY_MAX_BACKOFF_S); sessions stop being watched at
expiry plus the not-found grace. A paused rail is not watched, and a watch's position moves
past a transfer only once its submission is done with: one refused for a reason that may not
hold next cycle (a pause, a busy database) is read again. A listed transaction the node does
not return (or returns unreadable: a malformed answer) is read again on later cycles, each of
which first reads what arrived since the walk started (so it hides no later payment); after
`STUCK_LIMIT` cycles in a row it is passed over with a warning naming it
(`rpc_errors_total{kind="discovery_passed_over"}`).

RAILPROOF_DISCOVERY: unset = on with RAILPROOF_CHAIN=live for rails with a treasury; 1 / 0
forces it on / off (tests and recorded chains turn it on). Which watch a rail gets is what its
adapter declares (`Adapter.inflow_scan`); a rail that declares none is not watched.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from rails.base import InflowScan, Transport, fingerprint
from rails.cassette import CountingTransport
from rails.codes import FailureCode
from rails.errors import CassetteError, TransportError
from registry.catalog import Rail, Stage
from verifier.core.engine import Engine
from verifier.core.errors import EngineError
from verifier.services import reconciliation
from verifier.storage.models import PaymentSession, ProofStatus
from verifier.storage.repo import reconciliation as repo

if TYPE_CHECKING:
    from rails.solana_inflows import SignatureEntry

log = logging.getLogger("railproof.discovery")
ACTOR = "discovery"
BASE_BACKOFF_S = 2.0
# Sessions paying another recipient than the treasury (Solana), or such recipients (EVM),
# watched one by one per cycle.
SESSIONS_PER_CYCLE = 5000
# One page of a reference's signatures per cycle: a payment and rarely more name it.
REFERENCE_PAGE = 10


def enabled(engine: Engine) -> bool:
    if engine.settings.discovery is not None:
        return engine.settings.discovery
    return engine.settings.chain == "live"


# Elapsed time for the treasury's and the references' budgets (tests count it in RPC calls).
_clock = time.monotonic


def cycle(engine: Engine, name: str = "worker", chain: Transport | None = None) -> int:
    """One discovery cycle over every rail that can be watched; the number of proofs
    submitted."""
    if not enabled(engine):
        return 0
    submitted = 0
    for rail_id, d in engine.catalog.rails.items():
        if d.stage is Stage.review_only:
            continue  # never repaired, never applied: nothing to discover for
        try:
            rail = engine.rail(rail_id)
        except EngineError:
            continue
        scan = engine.adapter(rail).inflow_scan
        if scan is None:
            continue  # the family's inflows are not listed (Adapter.inflow_scan_gap)
        watch = _WATCHES[scan]
        try:
            submitted += watch(engine, rail, chain)["submitted"]
        except Exception:  # one rail must not stop the sweep
            log.exception("discovery failed", extra={"rail_id": rail_id})
    return submitted


def _due(engine: Engine, key: str) -> tuple[bool, dict[str, Any] | None]:
    with engine.db.tx() as s:
        c = repo.get_cursor(s, key)
        if c is None:
            return True, None
        state = {
            "last_signature": c.last_signature,
            "walk_before": c.walk_before,
            "walk_newest": c.walk_newest,
            "stuck_signature": c.stuck_signature,
            "stuck_failures": c.stuck_failures,
            "last_block": c.last_block,
            "idle_polls": c.idle_polls,
            "next_poll_at": c.next_poll_at,
        }
        nxt = c.next_poll_at
    from verifier.core.timeutil import utc

    return (nxt is None or utc(nxt) <= engine.now()), state


def _backoff(engine: Engine, idle: int) -> float:
    if idle <= 0:
        return 0.0
    return min(engine.settings.discovery_max_backoff_s, BASE_BACKOFF_S * 2 ** (idle - 1))


def _transient(e: EngineError) -> bool:
    """A refusal that may not hold next cycle: the rail is paused, or the server could not
    store or answer the proof (a proof it stored is replayed by a new submission)."""
    return e.code == FailureCode.rail_paused or e.status >= 500


def _submit(engine: Engine, rail: Rail, ps: PaymentSession, ref: str) -> tuple[bool, str | None]:
    """`ref` submitted as the session's proof: (whether the transfer is done with, the
    proof's status or None when it was refused)."""
    from verifier.services.proofs import submit_proof

    try:
        view, _ = submit_proof(engine, ps.id, ref, None, actor=ACTOR)
    except EngineError as e:
        log.info(
            "discovered transfer refused: %s",
            e.code,
            extra={"session_id": ps.id, "rail_id": rail.rail_id},
        )
        # SECURITY: a watch whose position moved past a transfer never reads it again: one
        # refused for a reason that may not hold next cycle (the rail paused meanwhile) is
        # not done with, or the session would never be paid by it.
        return not _transient(e), None
    return True, str(view["status"])


def _awaited(engine: Engine, rail: Rail, pairs: list[tuple[str, str]]) -> set[tuple[str, str]]:
    """Those of the (session id, transfer) pairs whose session has a pending proof that is
    this transfer: it waits for it (the worker asks the chain again), and submitting it once
    more would only answer that proof. A session's pending proof of another transfer leaves
    it watched: its client's hash may never land (a wallet's replaced or re-sent one)."""
    if not pairs:
        return set()
    adapter = engine.adapter(rail)
    ptype = rail.proof_types[0]
    fps = {
        (sid, ref): fingerprint(
            rail.family, rail.network, ptype, adapter.normalize_proof(ptype, ref)
        )
        for sid, ref in pairs
    }
    with engine.db.tx() as s:
        known = repo.proofs_by_fingerprint(s, sorted(set(fps.values())))
    pending = ProofStatus.pending.value
    return {
        (sid, ref)
        for (sid, ref), fp in fps.items()
        if any(p.session_id == sid and p.status == pending for p in known.get(fp, ()))
    }


def _paused(engine: Engine, rail: Rail) -> tuple[bool, str | None]:
    """(whether the rail is paused, its treasury)."""
    with engine.db.tx() as s:
        st = engine.rail_state_read(s, rail.rail_id)
        return bool(st.paused), engine.treasury(s, rail, st)


# A walk's handler: the entries read (newest first) → (how many of the first are done with,
# how many transfers were new: the watch is not idle, whether it stopped at the next entry
# because the node did not return that transaction).
Handler = Callable[[list["SignatureEntry"]], tuple[int, int, bool]]

# Cycles in a row a walk may stop at the same listed transaction the node does not return
# (getTransaction null, a transport error) before it is passed over. A node lagging behind
# its own listing, or a provider rate limiting or failing for a while, answers again within
# seconds to minutes; the watch's next look backs off meanwhile (2 s, 4 s, 8 s, ... up to
# RAILPROOF_DISCOVERY_MAX_BACKOFF_S), so 10 tries span about five minutes with the defaults.
# One still not returned by then most likely never will be (history the node does not keep,
# an answer it cannot give); holding the walk longer would delay only the older payments
# behind it (newer ones are read first every cycle), and reconciliation still reports it.
STUCK_LIMIT = 10
# `stuck_signature` of a walk started again because the node did not know where it stopped
# (base58 never holds it), with the restarts during the walk in `stuck_failures` (cleared
# when the walk reaches its end).
_RESTARTED = "?"


def _handled(
    engine: Engine,
    handle: Handler,
    entries: list[SignatureEntry],
    pass_over: str | None,
    rail: Rail,
    key: str,
) -> tuple[int, int, bool]:
    """`handle` over `entries`, going on past `pass_over` when the node does not return it:
    (how many are done with, how many transfers were new, whether it stopped at the next
    entry because the node did not return it)."""
    done = found = 0
    while True:
        n, f, unreadable = handle(entries[done:])
        done, found = done + n, found + f
        if not unreadable or entries[done].signature != pass_over:
            return done, found, unreadable
        # SECURITY: one transaction the node never returns must not stall the walk (and
        # every payment behind it) for good. It is not lost silently: a transfer into the
        # treasury is still in reconciliation's `chain_inflows` run, as orphan_bound /
        # orphan_unbound once a node returns it, and until then as an unreadable transaction
        # that leaves the run incomplete, naming it. One naming a session's reference (a
        # session paying another recipient) can still be submitted as its proof by its
        # client, as any payment discovery did not find.
        log.warning(
            "discovery passed over %s: the node did not return it in %d cycles",
            pass_over,
            STUCK_LIMIT,
            extra={"rail_id": rail.rail_id, "watch_key": key},
        )
        engine.metrics.inc("rpc_errors_total", network=rail.network, kind="discovery_passed_over")
        done += 1


def _walk(
    engine: Engine,
    rail: Rail,
    chain: Transport,
    address: str,
    key: str,
    state: dict[str, Any] | None,
    handle: Handler,
    *,
    not_before: int | None,
    page_limit: int,
    max_pages: int,
) -> None:
    """One stretch of the walk of `address`'s signatures (newest first, down to the cursor:
    `DiscoveryCursor`), handled, then the cursor moved past what the handler is done with.
    A walk stuck at a transaction the node does not return first reads what is newer than
    where it started, and passes it over after `STUCK_LIMIT` cycles in a row."""
    from rails.solana_inflows import list_signatures

    st = state or {}
    last, before, newest = st.get("last_signature"), st.get("walk_before"), st.get("walk_newest")
    stuck, fails = st.get("stuck_signature"), st.get("stuck_failures") or 0
    found = 0
    if (
        before is not None
        and newest is not None
        and stuck is not None
        and not stuck.startswith(_RESTARTED)
    ):
        # SECURITY: a walk that could not get past a transaction goes on from it next cycle:
        # what arrived since the walk started is read first (one page, newest first, down to
        # where the walk started), or one transaction the node does not return would hide
        # every later payment. Read to its end, it is done with, and the walk's newest
        # signature moves up to it; otherwise it is read again next cycle (a proof submitted
        # again is replayed, never stored twice).
        head = list_signatures(
            chain,
            address,
            until=newest,
            not_before=not_before,
            page_limit=page_limit,
            max_pages=1,
        )
        n, found, _ = _handled(engine, handle, head.entries, None, rail, key)
        if n == len(head.entries) and head.error is None and head.entries:
            newest = head.entries[0].signature
    scan = list_signatures(
        chain,
        address,
        until=last,
        before=before,
        not_before=not_before,
        page_limit=page_limit,
        max_pages=max_pages,
    )
    pass_over = stuck if fails + 1 >= STUCK_LIMIT else None
    done, n, unreadable = _handled(engine, handle, scan.entries, pass_over, rail, key)
    found += n
    walked = scan.entries[:done]
    if unreadable:
        # The same transaction again: one more cycle in a row (retried next cycle, up to
        # STUCK_LIMIT); another one: its first.
        at = scan.entries[done].signature
        fails = fails + 1 if at == stuck else 1
        stuck = at
    elif stuck is not None and any(e.signature == stuck for e in scan.entries[: done + 1]):
        stuck, fails = None, 0  # read (or passed over) this time
    if newest is None and walked:
        newest = walked[0].signature
    now = engine.now()
    values: dict[str, Any] = {"updated_at": now}
    going_on = False
    if done == len(scan.entries) and scan.error is None:
        # The walk reached the cursor (or the window's start, or the first signature): what
        # was newest when it started is done with, and all that is older.
        values.update(last_signature=newest or last, walk_before=None, walk_newest=None)
        stuck, fails = None, 0
    elif scan.before_unknown:
        restarts = fails + 1 if stuck is not None and stuck.startswith(_RESTARTED) else 1
        if restarts < STUCK_LIMIT:
            # SECURITY: the node does not know where the walk stopped (its block dropped, or
            # a node behind): the walk starts again from the newest signature down to the
            # cursor. What it reads again is replayed (a proof is never stored twice); going
            # on from an empty page would pass over the rest of the backlog for good.
            values.update(walk_before=None, walk_newest=None)
            stuck, fails = _RESTARTED + str(before), restarts
        else:
            # Restarted STUCK_LIMIT times during one walk (a pool whose nodes keep different
            # spans of history, say): each restart re-reads the stretch before it, so the
            # walk ends here, as it did before, said; reconciliation reads the older history.
            log.warning(
                "discovery ended a walk at %s: the node did not know it in %d cycles",
                before,
                STUCK_LIMIT,
                extra={"rail_id": rail.rail_id, "watch_key": key},
            )
            engine.metrics.inc(
                "rpc_errors_total", network=rail.network, kind="discovery_passed_over"
            )
            values.update(last_signature=newest or last, walk_before=None, walk_newest=None)
            stuck, fails = None, 0
    elif walked:
        # SECURITY: more than one stretch reads (a backlog, a node error, a refusal that may
        # not hold): the next cycle goes on from the oldest signature done with, not from the
        # newest again, or a backlog longer than one stretch (dust transfers are enough)
        # would hide every payment behind it for good.
        values.update(walk_before=walked[-1].signature, walk_newest=newest)
        going_on = True
    elif before is not None:
        values["walk_newest"] = newest  # what arrived since it started may be done with
    values.update(stuck_signature=stuck, stuck_failures=fails or None)
    idle = 0 if found or going_on else st.get("idle_polls", 0) + 1
    values["idle_polls"] = idle
    delay = _backoff(engine, idle)
    if unreadable:
        delay = max(delay, _backoff(engine, fails))  # a node that lags: give it time
    values["next_poll_at"] = now + timedelta(seconds=delay)
    with engine.db.tx() as s:
        repo.save_cursor(s, key, rail.rail_id, values)


def _refused(engine: Engine, rail: Rail, ps: PaymentSession, sig: str, result: object) -> bool:
    """Whether the rail's own checks fail the transaction for the session: submitting it
    would only store a failed proof (verification still decides every other one)."""
    from rails.solana_inflows import refusal
    from verifier.services.proofs import terms_for

    terms = terms_for(engine, ps, engine.adapter(rail))
    try:
        found = refusal(result, sig, terms, terms.asset or rail.asset, rail.decimals)
    except (TransportError, KeyError, TypeError, AttributeError, ValueError):
        return False  # an answer the checks cannot read: verification says why
    if found is None:
        return False
    log.info(
        "discovered transaction left aside: %s",
        found.code,
        extra={"session_id": ps.id, "rail_id": rail.rail_id},
    )
    return True


def _reference_key(rail: Rail, reference: str) -> str:
    """The watch of one session's reference."""
    return f"solana:{rail.rail_id}:ref:{reference}"


def watch_solana(engine: Engine, rail: Rail, chain: Transport | None = None) -> dict[str, int]:
    """One watch of the rail's treasury, then of references of non-treasury sessions, each
    for RAILPROOF_DISCOVERY_CYCLE_BUDGET_S at most. Returns {"submitted", "rpc_calls",
    "inflows"}."""
    from rails.solana import token_account
    from verifier.core.timeutil import utc

    out = {"submitted": 0, "rpc_calls": 0, "inflows": 0}
    alive = engine.now() - timedelta(seconds=engine.settings.tx_not_found_grace_seconds)
    skew = engine.settings.chain_clock_skew_seconds  # as verification allows
    paused, treasury = _paused(engine, rail)
    if not treasury and engine.settings.discovery is None:
        return out  # on by default only where a treasury is configured
    if paused:
        # SECURITY: a paused rail takes no proof: a watch would move past the transfers it
        # reads and never submit them. It is read once the rail is resumed.
        return out
    with engine.db.tx() as s:
        oldest = repo.oldest_watched(s, rail.rail_id, alive, treasury) if treasury else None
        elsewhere = repo.sessions_by_reference_turn(
            s, rail.rail_id, alive, SESSIONS_PER_CYCLE, _reference_key(rail, ""), treasury
        )
        for ps in elsewhere:
            s.expunge(ps)
    if oldest is None and not elsewhere:
        return out  # nothing open: no polling at all
    counted = CountingTransport(chain or engine.chains.transport(rail.family, rail.network))

    if treasury and oldest is not None:  # (sessions at the treasury: there is one)
        key = f"solana:{rail.rail_id}:{rail.network}:treasury:{treasury}"
        due, state = _due(engine, key)
        if due:
            # SECURITY: anyone can fill the public treasury with dust transfers (50,000 cost
            # about a quarter of a SOL), one getTransaction each: read all in one cycle, they
            # would hold every tenant's re-checks, finality and apply for as long. The walk
            # stops at the budget and goes on from there next cycle (`walk_before`).
            until = _clock() + engine.settings.discovery_cycle_budget_s
            _walk(
                engine,
                rail,
                counted,
                token_account(treasury, rail.asset),
                key,
                state,
                _treasury_handler(engine, rail, counted, treasury, alive, out, until),
                not_before=int(utc(oldest).timestamp()) - skew,
                page_limit=engine.settings.discovery_page_limit,
                max_pages=engine.settings.reconcile_max_pages,
            )

    # The references' own budget, from here: the treasury's walk does not use it up (one
    # reference at least is looked up every cycle, so each has its turn).
    deadline = _clock() + engine.settings.discovery_cycle_budget_s
    for ps in elsewhere:
        # A recipient that is not the treasury is not watched: its session's reference is.
        if not ps.reference:
            continue
        if _clock() > deadline:
            # SECURITY: any tenant may open thousands of sessions paying an address of its
            # own; their watches must not hold every other tenant's re-checks, finality and
            # apply for minutes each sweep. The rest are first in turn next cycle.
            break
        key = _reference_key(rail, ps.reference)
        due, state = _due(engine, key)
        if not due:
            continue
        _walk(
            engine,
            rail,
            counted,
            ps.reference,
            key,
            state,
            _reference_handler(engine, rail, counted, ps, out),
            not_before=int(utc(ps.created_at).timestamp()) - skew,
            page_limit=REFERENCE_PAGE,
            max_pages=1,
        )

    out["rpc_calls"] = counted.calls
    return out


def _treasury_handler(
    engine: Engine,
    rail: Rail,
    chain: Transport,
    treasury: str,
    alive: datetime,
    out: dict[str, int],
    until: float,
) -> Handler:
    """Each new transfer into the treasury, bound to the one open session whose reference it
    carries, submitted as that session's proof; those read by `until` (on `_clock`, one at
    least), the rest left to the next cycle."""
    from rails.solana_inflows import fetch_inflow

    def handle(entries: list[SignatureEntry]) -> tuple[int, int, bool]:
        upto, unreadable = len(entries), False
        inflows = []
        for n, e in enumerate(entries):
            if n and _clock() > until:
                # Done with those before it only: the walk goes on from here next cycle, so
                # no transfer is passed over.
                upto = n
                break
            if e.failed:
                continue
            try:
                inflow = fetch_inflow(chain, e.signature, rail.asset, treasury)
            except (TransportError, CassetteError):
                upto, unreadable = n, True  # read again next cycle, with all that is older
                break
            if inflow is not None:
                inflows.append((n, inflow))
        out["inflows"] += len(inflows)
        # SECURITY: the sessions a transfer may pay are looked up by the keys it carries, not
        # picked from a bounded list of open sessions: the watch moves past every transfer it
        # reads, so a session left out of such a list (behind many older open ones) would
        # never be paid.
        with engine.db.tx() as s:
            by_ref = repo.watched_by_reference(
                s, rail.rail_id, alive, [k for _, i in inflows for k in i.keys]
            )
            for ps in by_ref.values():
                s.expunge(ps)
        found = []
        adapter = engine.adapter(rail)
        for n, i in inflows:
            hits = reconciliation.carried_sessions(engine, adapter, i, by_ref)
            if len(hits) == 1:  # the binding: exactly one open session's reference
                found.append((n, hits[0], i))
        settled = reconciliation.settled_transfers(
            engine, rail.rail_id, [(i.signature, None) for _, _, i in found]
        )
        awaited = _awaited(engine, rail, [(ps.id, i.signature) for _, ps, i in found])
        for n, ps, i in found:
            if (ps.id, i.signature) in awaited:
                continue  # the session's own pending proof: the worker asks the chain again
            # SECURITY: a transfer staff refunded, or found not ours, is never credited
            # afterwards.
            if (i.signature, None) in settled or _refused(engine, rail, ps, i.signature, i.result):
                continue
            done, status = _submit(engine, rail, ps, i.signature)
            if not done:
                return n, len(inflows), False
            out["submitted"] += int(status is not None)
        return upto, len(inflows), unreadable

    return handle


def _reference_handler(
    engine: Engine, rail: Rail, chain: Transport, ps: PaymentSession, out: dict[str, int]
) -> Handler:
    """Each transaction naming the session's reference that the rail's checks do not fail
    for it, submitted as its proof."""
    from rails.solana_inflows import fetch_transaction

    def handle(entries: list[SignatureEntry]) -> tuple[int, int, bool]:
        live = 0
        awaited = _awaited(engine, rail, [(ps.id, e.signature) for e in entries if not e.failed])
        for n, e in enumerate(entries):
            if e.failed:
                continue
            live += 1
            if (ps.id, e.signature) in awaited:
                continue  # the session's own pending proof: the worker asks the chain again
            try:
                result = fetch_transaction(chain, e.signature)
            except (TransportError, CassetteError):
                return n, live, True  # read again next cycle
            # SECURITY: anyone can send a transaction that merely names the reference (it is
            # public in the payment request): every one is considered, and one the checks
            # fail is left aside without a proof, never in the way of the payment.
            if _refused(engine, rail, ps, e.signature, result):
                continue
            done, status = _submit(engine, rail, ps, e.signature)
            if not done:
                return n, live, False
            out["submitted"] += int(status is not None)
        return len(entries), live, False

    return handle


def _evm_key(rail: Rail, recipient: str) -> str:
    """The watch of one recipient's inflows (the treasury's, or one a session pays)."""
    return f"evm:{rail.rail_id}:{rail.network}:treasury:{recipient.lower()}"


def watch_evm(engine: Engine, rail: Rail, chain: Transport | None = None) -> dict[str, int]:
    """One watch of each recipient of the rail's watched sessions: the treasury first, then
    the others (a treasury before an approved change, an address a session named) in turn,
    for RAILPROOF_DISCOVERY_CYCLE_BUDGET_S at most. Each is `_watch_evm_recipient`. Returns
    {"submitted", "rpc_calls", "inflows"}."""
    out = {"submitted": 0, "rpc_calls": 0, "inflows": 0}
    alive = engine.now() - timedelta(seconds=engine.settings.tx_not_found_grace_seconds)
    paused, treasury = _paused(engine, rail)
    if not treasury:
        return out  # on only for rails with a treasury (see the module's docstring)
    if paused:
        # SECURITY: a paused rail takes no proof: a watch would move past the transfers it
        # reads and never submit them. It is read once the rail is resumed.
        return out
    # SECURITY: a session's recipient is fixed when it opens. After an approved treasury
    # change, the sessions opened before it still ask their payers to pay the old treasury:
    # watching only the current one would never discover those payments.
    with engine.db.tx() as s:
        at_treasury = repo.oldest_watched(
            s, rail.rail_id, alive, treasury, any_case=True, payer_named=True
        )
        elsewhere = repo.payer_recipients_by_turn(
            s, rail.rail_id, alive, SESSIONS_PER_CYCLE, _evm_key(rail, ""), treasury
        )
    if at_treasury is None and not elsewhere:
        return out  # nothing open: no polling at all
    counted = CountingTransport(chain or engine.chains.transport(rail.family, rail.network))
    if at_treasury is not None:
        _watch_evm_recipient(engine, rail, counted, treasury.lower(), alive, out)
    # The other recipients' own budget, from here (one at least is watched every cycle, so
    # each has its turn).
    deadline = _clock() + engine.settings.discovery_cycle_budget_s
    for n, recipient in enumerate(elsewhere):
        if n and _clock() > deadline:
            # SECURITY: any tenant may open sessions paying many addresses of its own; their
            # watches must not hold the worker's other work for minutes each sweep. The rest
            # are first in turn next cycle.
            break
        _watch_evm_recipient(engine, rail, counted, recipient, alive, out)
    out["rpc_calls"] = counted.calls
    return out


def _watch_evm_recipient(
    engine: Engine,
    rail: Rail,
    counted: CountingTransport,
    recipient: str,
    alive: datetime,
    out: dict[str, int],
) -> None:
    """One watch of `recipient` (lower case), when it is due: the head, then the token's
    Transfer(to=recipient) logs from the last block read (bounded ranges, split when the
    node refuses), each sender's in one transaction summed as verification sums them
    (`payments`), matched to the one watched session paying `recipient` that names the
    sender as payer with that amount and was open at the transfer's block time (one block
    read per block with a candidate). A transfer whose proof fails for the session leaves it
    to the next one. Adds to `out` {"submitted", "inflows"}."""
    from rails.evm_inflows import head, payments, transfer_logs

    now = engine.now()
    key = _evm_key(rail, recipient)
    due, state = _due(engine, key)
    if not due:
        return
    with engine.db.tx() as s:
        payers = repo.watched_payers(s, rail.rail_id, alive, recipient)
    try:
        top = head(counted)
    except (TransportError, CassetteError):
        return
    last = (state or {}).get("last_block")
    # SECURITY: a block near the head is not final: its rival after a reorg may hold a
    # payment the block first read did not. The blocks read that the rail does not take as
    # final yet are read again each cycle; what was submitted from them is held, or answered
    # with its stored proof.
    again = rail.finality.confirmations or 1
    start = (
        max(0, last + 1 - again)
        if last is not None
        else max(0, top - engine.settings.discovery_evm_lookback_blocks)
    )
    # SECURITY: only the watched payers' transfers can bind here, so a block the node refuses
    # whole (anyone's flood of transfers to a shared treasury) is asked payer by payer,
    # never left in the way of every later payment. A payer's own refused too (its own
    # flood, or a node's passing trouble) stops the watch before the block, read again each
    # cycle, and passed over for that payer after STUCK_LIMIT cycles in a row.
    st = state or {}
    stuck, passed = _evm_stuck(st.get("stuck_signature"))
    fails = st.get("stuck_failures") or 0

    def pass_over(block: int) -> bool:
        # Passed over before (and met again, the blocks near the head being read again each
        # cycle): so again at once; the block stopped before: once it has lasted.
        return (passed is not None and block <= passed) or (
            block == stuck and fails + 1 >= STUCK_LIMIT
        )

    scan = transfer_logs(
        counted,
        rail.asset,
        recipient,
        start,
        top,
        max_range=engine.settings.reconcile_evm_max_range,
        senders=payers,
        pass_over=pass_over,
    )
    newly = sorted({b for b, _ in scan.passed_over if passed is None or b > passed})
    if scan.passed_over:
        passed = max([b for b, _ in scan.passed_over] + ([] if passed is None else [passed]))
    if passed is not None and passed < start:
        passed = None  # no longer read again
    if scan.stuck_block is not None:
        fails = fails + 1 if scan.stuck_block == stuck else 1
        stuck = scan.stuck_block
    elif stuck is not None and (
        (passed is not None and stuck <= passed)
        or (scan.scanned_to is not None and scan.scanned_to >= stuck)
    ):
        stuck, fails = None, 0
    for block, payer in scan.passed_over:
        if block not in newly:
            continue
        log.warning(
            "discovery passed over block %s for payer %s: the node refused to list its "
            "transfers in %d cycles",
            block,
            payer,
            STUCK_LIMIT,
            extra={"rail_id": rail.rail_id, "watch_key": key},
        )
        engine.metrics.inc("rpc_errors_total", network=rail.network, kind="discovery_passed_over")
    new = [i for i in scan.inflows if last is None or i.block_number > last]  # first read
    # A transfer a proof already holds (the payer's earlier payment, submitted by its tenant)
    # is no candidate: matched first, it used a later session's turn and hid the payment
    # that session was waiting for. A pending proof holds nothing: another tenant's claim of
    # the transfer (submitted from the mempool) must not hide it from its own session.
    known = reconciliation.backed_transfers(engine, rail, [i.tx_hash for i in scan.inflows])
    # SECURITY: nor is a transaction staff settled any log of (refunded, not ours, attached by
    # hand): its proof would count every log of it, and money sent back is never credited.
    settled = {
        tx
        for tx, _ in reconciliation.settled_transfers(
            engine, rail.rail_id, [(i.tx_hash, i.log_index) for i in scan.inflows]
        )
    }
    # SECURITY: a payer's logs in one transaction are one payment, summed as verification
    # credits them (`payments`): matched log by log, a smart wallet's payment split over two
    # logs (2 + 3 for a session of 5) would bind to no session and never be discovered.
    fresh = payments(i for i in scan.inflows if i.tx_hash not in known and i.tx_hash not in settled)
    # SECURITY: the sessions a transfer may pay are looked up by its sender, not picked from
    # a bounded list of open sessions: the watch moves past every block it reads, so a
    # session left out of such a list (behind many older open ones) would never be paid.
    with engine.db.tx() as s:
        sessions = repo.watched_by_payer(
            s, rail.rail_id, alive, recipient, [i.sender for i in fresh]
        )
        for ps in sessions:
            s.expunge(ps)
    by_payer: dict[tuple[str, int], list[PaymentSession]] = {}
    for ps in sessions:
        by_payer.setdefault((ps.payer.lower(), ps.amount), []).append(ps)
    inflows = [i for i in fresh if (i.sender.lower(), i.value) in by_payer]
    times = reconciliation.block_times(counted, [i.block_number for i in inflows])
    out["inflows"] += len(new)
    # A block whose time the node did not give is read again next cycle, with what follows it.
    unread = min((i.block_number for i in inflows if i.block_number not in times), default=None)
    scanned_to = scan.scanned_to
    if unread is not None:
        inflows = [i for i in inflows if i.block_number < unread]
        scanned_to = unread - 1 if scanned_to is None else min(scanned_to, unread - 1)
    awaited = _awaited(
        engine,
        rail,
        [(ps.id, i.tx_hash) for i in inflows for ps in by_payer[(i.sender.lower(), i.value)]],
    )
    taken: set[str] = set()
    for i in inflows:  # oldest first
        # SECURITY: a payer and an amount can be read off the chain; only a transfer made
        # while the session was open can be its payment (verification refuses any other:
        # `session_not_open`), so an older one of the same payer never takes its turn.
        when = times[i.block_number]
        hits = [
            ps
            for ps in by_payer[(i.sender.lower(), i.value)]
            if ps.id not in taken and reconciliation.in_window(ps, when)
        ]
        if len(hits) != 1:  # the binding: exactly one open session names this payer and amount
            continue
        ps = hits[0]
        if (ps.id, i.tx_hash) in awaited:
            # The session's own pending proof is this transfer (its client submitted it
            # before it was mined): the worker asks the chain again, and a later transfer
            # of the payer's in this scan is not submitted as a second payment.
            taken.add(ps.id)
            continue
        done, status = _submit(engine, rail, ps, i.tx_hash)
        if not done:
            # Its block and what follows are read again next cycle (transfers of it already
            # submitted are then held, or their session's pending proof: no candidate twice).
            scanned_to = (
                i.block_number - 1 if scanned_to is None else min(scanned_to, i.block_number - 1)
            )
            break
        if status is None:
            continue
        out["submitted"] += 1
        # A transfer the chain refused for the session does not take it: a later one of the
        # same scan may still be its payment.
        if status != ProofStatus.failed.value:
            taken.add(ps.id)
    idle = 0 if new else ((state or {}).get("idle_polls", 0) + 1)
    values: dict[str, Any] = {
        "idle_polls": idle,
        "updated_at": now,
        "next_poll_at": now + timedelta(seconds=_backoff(engine, idle)),
        "stuck_signature": _evm_stuck_text(stuck, passed),
        "stuck_failures": fails if stuck is not None else None,
    }
    if scanned_to is not None and scanned_to >= start:
        values["last_block"] = scanned_to
    elif state is None:
        values["last_block"] = None
    with engine.db.tx() as s:
        repo.save_cursor(s, key, rail.rail_id, values)


def _evm_stuck(text: object) -> tuple[int | None, int | None]:
    """An EVM watch's cursor `stuck_signature`: the block it stopped before (`block:N`) and
    the highest block passed over that it still reads again (`passed:M`)."""
    stuck = passed = None
    for part in text.split() if isinstance(text, str) else ():
        name, _, value = part.partition(":")
        if value.isdigit():
            if name == "block":
                stuck = int(value)
            elif name == "passed":
                passed = int(value)
    return stuck, passed


def _evm_stuck_text(stuck: int | None, passed: int | None) -> str | None:
    parts = [f"block:{stuck}"] if stuck is not None else []
    parts += [f"passed:{passed}"] if passed is not None else []
    return " ".join(parts) or None


# The watch each declared way of listing inflows runs (`Adapter.inflow_scan`).
_WATCHES = {InflowScan.signatures: watch_solana, InflowScan.transfer_logs: watch_evm}
