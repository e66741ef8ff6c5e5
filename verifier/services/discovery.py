"""Discovery: the worker finds the payments of open sessions whose client never submitted a
proof, and submits them as any proof (actor `discovery`): verified, finalized and applied
through the normal path.

Per cycle and rail, the treasury is watched once (shared by every open session, never one
poll per session): one paged `getSignaturesForAddress` of the treasury's token account from
the last signature seen, then one `getTransaction` per new transfer, matched to open sessions
by their binding (the reference the transfer carries). Sessions paying a recipient that is
not the treasury are looked up by their reference (one call per such session). A watch that
finds nothing backs off (up to RAILPROOF_DISCOVERY_MAX_BACKOFF_S); sessions stop being watched
at expiry plus the not-found grace.

RAILPROOF_DISCOVERY: unset = on with RAILPROOF_CHAIN=live for rails with a treasury; 1 / 0
forces it on / off (tests and recorded chains turn it on). Which watch a rail gets is what its
adapter declares (`Adapter.inflow_scan`); a rail that declares none is not watched.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from rails.base import InflowScan, Transport
from rails.cassette import CountingTransport
from rails.errors import CassetteError, TransportError
from registry.catalog import Rail, Stage
from verifier.core.engine import Engine
from verifier.core.errors import EngineError
from verifier.services import reconciliation
from verifier.storage.models import PaymentSession, ProofStatus
from verifier.storage.repo import reconciliation as repo

log = logging.getLogger("railproof.discovery")
ACTOR = "discovery"
BASE_BACKOFF_S = 2.0
SESSIONS_PER_CYCLE = 5000


def enabled(engine: Engine) -> bool:
    if engine.settings.discovery is not None:
        return engine.settings.discovery
    return engine.settings.chain == "live"


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


def watch_solana(engine: Engine, rail: Rail, chain: Transport | None = None) -> dict[str, int]:
    """One watch of the rail's treasury (and references of non-treasury sessions). Returns
    {"submitted", "rpc_calls", "inflows"}."""
    from rails.solana import token_account
    from rails.solana_inflows import fetch_inflow, list_signatures
    from verifier.core.timeutil import utc
    from verifier.services.proofs import submit_proof

    out = {"submitted": 0, "rpc_calls": 0, "inflows": 0}
    now = engine.now()
    grace = timedelta(seconds=engine.settings.tx_not_found_grace_seconds)
    with engine.db.tx() as s:
        treasury = engine.treasury(s, rail)
        if not treasury and engine.settings.discovery is None:
            return out  # on by default only where a treasury is configured
        sessions = repo.open_sessions(s, rail.rail_id, now - grace, SESSIONS_PER_CYCLE)
        for ps in sessions:
            s.expunge(ps)
    if not sessions:
        return out  # nothing open: no polling at all
    counted = CountingTransport(chain or engine.chains.transport(rail.family, rail.network))
    by_ref = {ps.reference: ps for ps in sessions if ps.reference}
    at_treasury = [ps for ps in sessions if treasury and ps.recipient == treasury]
    elsewhere = [ps for ps in sessions if not (treasury and ps.recipient == treasury)]
    found: list[tuple[PaymentSession, str]] = []  # (session, signature)

    if treasury and at_treasury:  # (sessions at the treasury: there is one)
        key = f"solana:{rail.rail_id}:{rail.network}:treasury:{treasury}"
        due, state = _due(engine, key)
        if due:
            oldest = min(int(utc(ps.created_at).timestamp()) for ps in at_treasury)
            oldest -= engine.settings.chain_clock_skew_seconds  # as verification allows
            scan = list_signatures(
                counted,
                token_account(treasury, rail.asset),
                until=(state or {}).get("last_signature"),
                not_before=oldest,
                page_limit=engine.settings.discovery_page_limit,
                max_pages=engine.settings.reconcile_max_pages,
            )
            newest = scan.entries[0].signature if scan.entries else None
            ok = scan.error is None
            for e in scan.entries:
                if e.failed:
                    continue
                try:
                    inflow = fetch_inflow(counted, e.signature, rail.asset, treasury)
                except (TransportError, CassetteError):
                    ok = False  # read again next cycle from the old position
                    break
                if inflow is None:
                    continue
                out["inflows"] += 1
                hits = [by_ref[k] for k in inflow.account_keys if k in by_ref]
                if len(hits) == 1:  # the binding: exactly one open session's reference
                    found.append((hits[0], e.signature))
            idle = 0 if out["inflows"] else ((state or {}).get("idle_polls", 0) + 1)
            values: dict[str, Any] = {
                "idle_polls": idle,
                "updated_at": now,
                "next_poll_at": now + timedelta(seconds=_backoff(engine, idle)),
            }
            if ok and newest is not None:
                values["last_signature"] = newest
            elif state is None:
                values["last_signature"] = None
            with engine.db.tx() as s:
                repo.save_cursor(s, key, rail.rail_id, values)

    for ps in elsewhere:
        # A recipient that is not the treasury is not watched: its session's reference is.
        if not ps.reference:
            continue
        key = f"solana:{rail.rail_id}:ref:{ps.reference}"
        due, state = _due(engine, key)
        if not due:
            continue
        scan = list_signatures(counted, ps.reference, page_limit=10, max_pages=1)
        sigs = [e.signature for e in scan.entries if not e.failed]
        if len(sigs) == 1:
            found.append((ps, sigs[0]))
        idle = 0 if sigs else ((state or {}).get("idle_polls", 0) + 1)
        with engine.db.tx() as s:
            repo.save_cursor(
                s,
                key,
                rail.rail_id,
                {
                    "idle_polls": idle,
                    "updated_at": now,
                    "last_signature": sigs[0] if sigs else None,
                    "next_poll_at": now + timedelta(seconds=_backoff(engine, idle)),
                },
            )

    out["rpc_calls"] = counted.calls
    settled = reconciliation.settled_transfers(engine, rail.rail_id, [(t, None) for _, t in found])
    # SECURITY: a transfer staff refunded, or found not ours, is never credited afterwards.
    found = [(ps, t) for ps, t in found if (t, None) not in settled]
    for ps, sig in found:
        try:
            submit_proof(engine, ps.id, sig, None, actor=ACTOR)
            out["submitted"] += 1
        except EngineError as e:
            log.info(
                "discovered transfer refused: %s",
                e.code,
                extra={"session_id": ps.id, "rail_id": rail.rail_id},
            )
    return out


def watch_evm(engine: Engine, rail: Rail, chain: Transport | None = None) -> dict[str, int]:
    """One watch of an EVM treasury: the head, then the token's Transfer(to=treasury) logs
    from the last block read (bounded ranges, split when the node refuses), matched to the
    one open session naming the sender as payer with that amount and open at the transfer's
    block time (one block read per block with a candidate). A transfer whose proof fails for
    the session leaves it to the next one. Returns {"submitted", "rpc_calls", "inflows"}."""
    from rails.evm_inflows import head, transfer_logs
    from verifier.services.proofs import submit_proof

    out = {"submitted": 0, "rpc_calls": 0, "inflows": 0}
    now = engine.now()
    grace = timedelta(seconds=engine.settings.tx_not_found_grace_seconds)
    with engine.db.tx() as s:
        treasury = engine.treasury(s, rail)
        if not treasury:
            return out  # EVM sessions pay the treasury; nothing to watch without one
        sessions = [
            ps
            for ps in repo.open_sessions(s, rail.rail_id, now - grace, SESSIONS_PER_CYCLE)
            if ps.payer and ps.recipient.lower() == treasury.lower()
        ]
        for ps in sessions:
            s.expunge(ps)
    if not sessions:
        return out
    key = f"evm:{rail.rail_id}:{rail.network}:treasury:{treasury.lower()}"
    due, state = _due(engine, key)
    if not due:
        return out
    counted = CountingTransport(chain or engine.chains.transport(rail.family, rail.network))
    try:
        top = head(counted)
    except (TransportError, CassetteError):
        out["rpc_calls"] = counted.calls
        return out
    last = (state or {}).get("last_block")
    start = (
        last + 1
        if last is not None
        else max(0, top - engine.settings.discovery_evm_lookback_blocks)
    )
    scan = transfer_logs(
        counted, rail.asset, treasury, start, top, max_range=engine.settings.reconcile_evm_max_range
    )
    by_payer: dict[tuple[str, int], list[PaymentSession]] = {}
    for ps in sessions:
        by_payer.setdefault((ps.payer.lower(), ps.amount), []).append(ps)
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
    inflows = [
        i
        for i in scan.inflows
        if i.tx_hash not in known
        and i.tx_hash not in settled
        and (i.sender.lower(), i.value) in by_payer
    ]
    times = reconciliation.block_times(counted, [i.block_number for i in inflows])
    out["rpc_calls"] = counted.calls
    out["inflows"] = len(scan.inflows)
    # A block whose time the node did not give is read again next cycle, with what follows it.
    unread = min((i.block_number for i in inflows if i.block_number not in times), default=None)
    scanned_to = scan.scanned_to
    if unread is not None:
        inflows = [i for i in inflows if i.block_number < unread]
        scanned_to = unread - 1 if scanned_to is None else min(scanned_to, unread - 1)
    idle = 0 if scan.inflows else ((state or {}).get("idle_polls", 0) + 1)
    values: dict[str, Any] = {
        "idle_polls": idle,
        "updated_at": now,
        "next_poll_at": now + timedelta(seconds=_backoff(engine, idle)),
    }
    if scanned_to is not None and scanned_to >= start:
        values["last_block"] = scanned_to
    elif state is None:
        values["last_block"] = None
    with engine.db.tx() as s:
        repo.save_cursor(s, key, rail.rail_id, values)
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
        try:
            view, _ = submit_proof(engine, ps.id, i.tx_hash, None, actor=ACTOR)
        except EngineError as e:
            log.info(
                "discovered transfer refused: %s",
                e.code,
                extra={"session_id": ps.id, "rail_id": rail.rail_id},
            )
            continue
        out["submitted"] += 1
        # A transfer the chain refused for the session does not take it: a later one of the
        # same scan may still be its payment.
        if view["status"] != ProofStatus.failed.value:
            taken.add(ps.id)
    return out


# The watch each declared way of listing inflows runs (`Adapter.inflow_scan`).
_WATCHES = {InflowScan.signatures: watch_solana, InflowScan.transfer_logs: watch_evm}
