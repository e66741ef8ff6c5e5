"""The worker: re-verifies due pending proofs (with backoff), refreshes settlement finality in
batches, flags reorgs, and applies verified final proofs when RAILPROOF_AUTO_APPLY=1.

Work is claimed before it is done: a claim sets `claimed_by`/`claimed_until` on the proof
row in a short transaction (FOR UPDATE SKIP LOCKED on PostgreSQL, so several workers share
the queue and never take the same proof; SQLite serializes writers anyway). A worker that
dies leaves a claim that expires after the lease, and the proof is taken again. Leases run on
process time (timeutil.process_now), not on the business clock, which may be pinned.

Each sweep first reads the schema's revision: a database another version migrated past this
code (or back) is one whose invariants this code does not keep, so the sweep writes nothing
and the worker stops (SchemaMoved; `railproof worker` exits 2).
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import cache

from sqlalchemy.orm import Session

from rails.base import Settlement
from rails.codes import FailureCode
from registry.catalog import Stage
from verifier.core import timeutil
from verifier.core.engine import Engine
from verifier.core.errors import BadInput
from verifier.services import audit, discovery, events, gate, sessions, webhooks
from verifier.services.proofs import (
    backoff,
    recheck_unsettled,
    record_settlement,
    reorg_watch,
    unsettled_backoff,
    verify_proof,
)
from verifier.services.views import entitlement_view, proof_view
from verifier.storage.db import head_revision
from verifier.storage.models import (
    WORKER_NAME_MAX,
    EntitlementStatus,
    Proof,
    ProofStatus,
    SettlementEvidence,
    VerificationAttempt,
)
from verifier.storage.repo import attempts as attempt_repo
from verifier.storage.repo import entitlements as entitlement_repo
from verifier.storage.repo import proofs as proof_repo
from verifier.storage.repo import receipts as receipt_repo
from verifier.storage.repo import schema as schema_repo
from verifier.storage.repo import settlements as settlement_repo
from verifier.storage.repo.rows import Record

log = logging.getLogger("railproof.worker")
SYSTEM = audit.Operator("worker")
# Elapsed time of the re-verifications of a sweep (tests count it in calls instead).
_clock = time.monotonic
# When proofs whose rail, network or token this deployment can no longer resolve are asked
# again: seldom (each time is a warning), yet soon after a mistyped override is fixed.
UNRESOLVED_RECHECK = timedelta(minutes=10)


class SchemaMoved(RuntimeError):
    """The database is no longer at the revision this code migrates to: another version's
    `db upgrade` moved it on (a deploy migrates while the previous version's workers still
    run). A revision this code does not know has rules it does not keep (0005's transfer
    holds were written by no earlier worker), so this worker writes nothing more."""


@cache
def _code_head(url: str) -> str:
    # A fact of the installed package's migrations: read once, not at every sweep.
    return head_revision(url)


def check_schema(engine: Engine) -> None:
    """Raise SchemaMoved unless the database is at this code's head revision: one read of
    the version table."""
    head = _code_head(engine.db.url)
    with engine.db.read() as s:
        found = schema_repo.revisions(s)
    if found != [head]:
        at = ", ".join(found) or "none (never migrated)"
        raise SchemaMoved(
            f"the database's schema is at revision {at}, this worker's code at {head}: "
            "it was migrated away from this version, which writes nothing more; run the "
            "workers of the version that migrated it"
        )


def claim(engine: Engine, status: ProofStatus, name: str, batch: int) -> list[str]:
    now = engine.now()  # when a proof is due: the payment's clock (backoff, session windows)
    # The lease is process time: on a clock pinned to replay recorded chains, a lease would
    # never lapse and the proofs of a worker that died would stay claimed for good.
    held = timeutil.process_now()
    lease = timedelta(seconds=engine.settings.claim_lease_seconds)
    with engine.db.tx() as s:
        return proof_repo.claim_due(s, status, now, held, batch, name, held + lease)


def reverify_pending(
    engine: Engine, name: str, batch: int, stop: threading.Event | None = None
) -> int:
    """Re-verify the due pending proofs claimed, one by one. Once a network's proofs have
    spent the RPC policy's total (RAILPROOF_RPC_TOTAL_S) in this sweep on answers that the
    node could not be asked (rpc_unavailable), its other proofs are given back unasked,
    still due, for the next sweep: those of owners none of whose proofs on the network was
    asked in this sweep go first in it.

    SECURITY: each call to a node that is down costs the RPC policy's whole total. Any
    tenant can keep a batch of proofs pending on a network, and asked one after the other
    they would hold every other network's finality refresh and apply behind them for the
    whole sweep, on every worker. The time counts, not the verdict alone: a node that is up
    answers some proofs' own requests with an error at once (a tenant's x402 authorization
    whose nonce logs a provider will not list), and one tenant's such proofs, first of the
    sweep, must not send every other tenant's proof on the network to the next one. Nor
    sweep after sweep: a node that hangs on one tenant's requests only (a heavy log query
    timing out) would otherwise see that tenant's next older proof first every time.

    Once `stop` is set (the worker is stopping), the proofs not asked yet are given back
    the same way, for another worker to take at once rather than after the lease."""
    ids = claim(engine, ProofStatus.pending, name, batch)
    if not ids:
        return 0
    with engine.db.tx() as s:
        targets = proof_repo.sweep_targets(s, ids)
    unresolved = _give_back_unresolved(engine, name, targets)
    spent: dict[str, float] = defaultdict(float)
    asked: dict[str, set[str]] = defaultdict(set)  # owners asked on each network
    down: set[str] = set()
    skipped: list[str] = []
    for pid in ids:
        if pid in unresolved:
            continue
        target = targets.get(pid)
        network, owner = (target.network, target.owner) if target else (None, None)
        if network in down or _stopping(stop):
            skipped.append(pid)
            continue
        if network is not None and owner is not None:
            asked[network].add(owner)
        started = _clock()
        try:
            verdict = verify_proof(engine, pid, worker=name)
        except Exception:  # one bad proof must not stop the sweep
            log.exception("re-verification failed", extra={"proof_id": pid})
            continue
        if verdict.code is FailureCode.rpc_unavailable and network is not None:
            spent[network] += _clock() - started
            if spent[network] >= engine.settings.rpc_total_s:
                down.add(network)
    if skipped:
        log.warning(
            "re-verification: %d proofs left for the next sweep: %s",
            len(skipped),
            f"nodes of {', '.join(sorted(down))} unavailable" if down else "the worker stops",
            extra={"worker": name},
        )
        with engine.db.tx() as s:
            proof_repo.release_claims(s, skipped, name, _first_next(targets, skipped, asked))
    return len(ids) - len(skipped) - len(unresolved)


def _give_back_unresolved(
    engine: Engine, name: str, targets: dict[str, proof_repo.SweepTarget]
) -> set[str]:
    """The claimed pending proofs whose rail, network or token this deployment can no longer
    resolve (retired from the catalog, a testnet at a mainnet launch): given back for
    UNRESOLVED_RECHECK (a deployment may restore it), with one warning per rail, network and
    token, as the finality refresh does. Returns them: nothing can verify them now, and
    asking would raise at every lease, leaving them claimed."""
    groups: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for pid, t in targets.items():
        groups[(t.rail_id, t.network, t.asset)].append(pid)
    unresolved: set[str] = set()
    for (rail_id, network, asset), pids in groups.items():
        try:
            engine.adapter(engine.rail(rail_id, network=network, asset=asset))
        except (BadInput, ValueError) as e:
            log.warning(
                "re-verification: %d proofs on %s (%s, %s) left unasked: %s",
                len(pids),
                rail_id,
                network,
                asset,
                e,
                extra={"rail_id": rail_id, "worker": name},
            )
            _release(engine, pids, name, UNRESOLVED_RECHECK)
            unresolved.update(pids)
    return unresolved


def _first_next(
    targets: dict[str, proof_repo.SweepTarget],
    skipped: list[str],
    asked: dict[str, set[str]],
) -> dict[str, datetime]:
    """New due times for the skipped proofs of owners not asked on their network this
    sweep: just before every other proof the sweep claimed, a millisecond apart in their
    order, so the next sweep's turns (owner by owner, earliest due first) start with them.
    Each sweep of an outage moves them by at most a millisecond a proof: placing them by the
    spread of the claimed due times, which holds the last sweep's moves, doubled the distance
    every sweep until the date overflowed and every sweep failed."""
    dues = {pid: t.due for pid, t in targets.items() if t.due is not None}
    first = sorted(
        (
            (dues[pid], pid)
            for pid in skipped
            if pid in dues and targets[pid].owner not in asked[targets[pid].network]
        ),
    )
    others = [due for pid, due in dues.items() if pid not in {p for _, p in first}]
    if not first or not others:
        return {}  # nobody else claimed: they are first already
    base = min(others)
    n = len(first)
    return {pid: base - timedelta(milliseconds=n - rank) for rank, (_, pid) in enumerate(first)}


def _stopping(stop: threading.Event | None) -> bool:
    return stop is not None and stop.is_set()


def refresh_finality(
    engine: Engine, name: str, batch: int, stop: threading.Event | None = None
) -> int:
    """Verified proofs whose settlement is not final yet: one batched finality call per
    (rail, network) per sweep — per node with RAILPROOF_RPC_QUORUM > 1, where a settlement
    changes only as a quorum of nodes agree (Chains.finality); otherwise it is asked again.
    Once `stop` is set, the groups not asked yet are given back, still due."""
    ids = claim(engine, ProofStatus.verified, name, batch)
    if not ids:
        return 0
    groups: dict[tuple[str, str, str], list[Record]] = defaultdict(list)
    expected: dict[str, tuple[str, int]] = {}
    with engine.db.tx() as s:
        # The claimed proofs with their sessions' terms, in one query.
        for p in proof_repo.finality_targets(s, ids):
            groups[(p.rail_id, p.network, p.asset)].append(p)
            # SECURITY: where the money had to go, for rails whose ref does not pin the
            # transfer itself (an x402 nonce can be settled by another authorization).
            expected[p.ref] = (p.recipient, p.amount)
    for (rail_id, network, asset), plist in groups.items():
        if _stopping(stop):
            with engine.db.tx() as s:
                proof_repo.release_claims(s, [p.id for p in plist], name)
            continue
        try:
            adapter = engine.adapter(engine.rail(rail_id, network=network, asset=asset))
        except (BadInput, ValueError) as e:
            # The sessions' network or token was retired from the catalog (a testnet at a
            # mainnet launch), or their rail was: nothing can ask their finality. Given back
            # for a long while (a deployment may restore it), never raised: the sweep's other
            # groups, discovery and every tenant's apply must not stop on them.
            log.warning(
                "finality refresh: %d proofs on %s (%s, %s) left unasked: %s",
                len(plist),
                rail_id,
                network,
                asset,
                e,
                extra={"rail_id": rail_id, "worker": name},
            )
            _release(engine, [p.id for p in plist], name, UNRESOLVED_RECHECK)
            continue
        try:
            settlements, source = engine.chains.finality(adapter, [p.ref for p in plist], expected)
        except Exception as e:
            engine.metrics.inc("rpc_errors_total", network=network, kind="finality")
            log.warning("finality refresh failed: %s", type(e).__name__, extra={"rail_id": rail_id})
            _release(engine, [p.id for p in plist], name)
            continue
        by_ref = {st.ref: st for st in settlements}
        failed = _recheck_unsettled(engine, name, plist, by_ref)
        answers = [(p.id, by_ref.get(p.ref)) for p in plist if p.id not in failed]
        try:
            # The whole batch in one transaction (one commit, not one per proof) ...
            _record_finality_batch(engine, answers, source, name)
        except Exception:
            # ... and, should any proof of it fail (e.g. a lock timeout), each proof on its
            # own, so one proof cannot stop the sweep.
            log.warning("recording a finality batch failed; recording proof by proof")
            for pid, st in answers:
                try:
                    _record_finality(engine, pid, st, source, name)
                except Exception:
                    log.exception("recording finality failed", extra={"proof_id": pid})
    return len(ids)


def _recheck_unsettled(
    engine: Engine, name: str, plist: list[Record], by_ref: dict[str, Settlement]
) -> set[str]:
    """Proofs verified before their settlement whose chain shows none (an x402 authorization
    not settled yet) are asked again by their rail's checks (proofs.recheck_unsettled): a
    payment that can no longer arrive (the nonce spent on another transfer, the validity over)
    must not stay `verified`, re-polled for good. Returns the proofs now failed, whose
    settlement answer is not recorded.

    SECURITY: a proof with a receipt is never failed by the worker: as for a reorg under it,
    its active entitlement is flagged (never revoked) and a person decides. A proof the chain
    has shown settled (since its last reorg) is failed, or flagged, only on the chain showing
    the nonce spent on another transfer: a node that now shows nothing may be behind, and its
    "unused" must not fail (or raise an alarm over) a payment seen made."""
    unsettled = [
        p for p in plist if (st := by_ref.get(p.ref)) is not None and st.finality == "not_found"
    ]
    if not unsettled:
        return set()
    with engine.db.tx() as s:
        ids = [p.id for p in unsettled]
        seen = settlement_repo.settled_since_reorg(s, ids)
        credited = receipt_repo.ids_for_proofs(s, ids)
    failed: set[str] = set()
    for p in unsettled:
        try:
            verdict = recheck_unsettled(
                engine, p.id, name, only=FailureCode.nonce_reused if p.id in seen else None
            )
        except Exception:  # one proof must not stop the sweep; its settlement is still recorded
            log.exception("re-checking an unsettled proof failed", extra={"proof_id": p.id})
            continue
        if verdict is None:
            continue
        if p.id in credited:
            with engine.db.tx() as s:
                _flag_reorg(engine, s, p.id, verdict.detail)
        else:
            failed.add(p.id)
    return failed


def _release(
    engine: Engine, proof_ids: Sequence[str], worker: str, after: timedelta | None = None
) -> None:
    """Give the claimed proofs back, due again `after` (by default a transient's backoff)."""
    with engine.db.tx() as s:
        for pid in proof_ids:
            row = proof_repo.get(s, pid, lock=True)
            # A lease that ran out while the node hung may be another worker's claim now.
            if row is None or row.claimed_by != worker:
                continue
            row.claimed_by = row.claimed_until = None
            row.next_check_at = engine.now() + (backoff(2) if after is None else _jittered(after))


def _jittered(after: timedelta) -> timedelta:
    # Proofs given back together do not all fall due in the same sweep again.
    return after * random.uniform(0.9, 1.1)


def _record_finality(
    engine: Engine, proof_id: str, st: Settlement | None, source: str, worker: str
) -> None:
    _record_finality_batch(engine, [(proof_id, st)], source, worker)


def _record_finality_batch(
    engine: Engine, answers: list[tuple[str, Settlement | None]], source: str, worker: str
) -> None:
    """What the chain said about each proof's settlement, recorded in one transaction. The
    proofs are locked first, all together and in id order, before anything is appended to
    the audit chain: a batch never holds the chain's lock while it waits for a proof's."""
    now = engine.now()
    ids = [pid for pid, _ in answers]
    alone: list[tuple[str, Settlement | None]] = []
    with engine.db.tx() as s:
        # SECURITY: an answer is recorded only under the lease it was asked under. A worker
        # whose lease ran out during a slow finality call holds an answer from before the
        # other worker's (a reorg it saw, a proof sent back to pending): writing it would put
        # "final" back on a transfer that is gone.
        locked = {
            p.id: p
            for p in proof_repo.lock_many(s, ids)
            if p.claimed_by == worker and p.status == ProofStatus.verified
        }
        answers = [a for a in answers if a[0] in locked]
        ids = list(locked)
        attempts = attempt_repo.latest_verified_ids(s, ids)
        latest = settlement_repo.latest_many(s, ids)
        receipts = receipt_repo.ids_for_proofs(s, ids)
        if len(answers) > 1:
            # A reorg touches the proof's entitlement before the chain's lock, as every other
            # writer of an entitlement does: such proofs are recorded on their own, after the
            # batch, never while the batch holds the chain's lock.
            alone = [(pid, st) for pid, st in answers if _reorged(latest.get(pid), st)]
            if alone:
                answers = [a for a in answers if a not in alone]
        if len(answers) > 1:
            # Every proof's event sequence in one query (under the chain's lock, taken now,
            # after the proofs' locks), not one query per event.
            events.prime_sequences(s, "proof", list(locked))
        updates: list[tuple[Proof, dict[str, object]]] = []
        for pid, st in answers:
            p = locked.get(pid)
            if p is None:  # pragma: no cover - a proof row is never deleted
                continue
            _finality_of(
                engine,
                s,
                p,
                st,
                source,
                now,
                attempts.get(pid),
                latest.get(pid),
                receipts,
                updates,
            )
        # The proofs' new lease and next check, as one executemany.
        proof_repo.update_many(s, updates)
    for pid, st in alone:
        try:
            _record_finality(engine, pid, st, source, worker)
        except Exception:  # the batch is committed: only this proof is left for next time
            log.exception("recording finality failed", extra={"proof_id": pid})


def _reorged(prev: SettlementEvidence | Record | None, st: Settlement | None) -> bool:
    """The answer takes the reorg path of `_finality_of`: reorged, or final in another block."""
    if st is None:
        return False
    return st.reorged or _moved(prev, st)


def _moved(prev: SettlementEvidence | Record | None, st: Settlement) -> bool:
    # A transfer mined again in another block after a reorg can look final again; the
    # block it was verified in is gone, so it must be verified afresh (what it moved there
    # may differ). EVM names the block by its hash; a Solana status only its slot, a Tron
    # answer only its number.
    # SECURITY: crediting on evidence from an abandoned fork pays what the chain never moved.
    if prev is None:
        return False
    if prev.block_hash and st.block_hash:
        return bool(prev.block_hash.lower() != st.block_hash.lower())
    if prev.slot is not None and st.slot is not None:
        return bool(prev.slot != st.slot)
    return (
        prev.block_number is not None
        and st.block_number is not None
        and prev.block_number != st.block_number
    )


def _untimed(engine: Engine, p: Proof, ev: SettlementEvidence | Record | None) -> bool:
    """A payment verified before it settled (x402) whose settlement's time is not known yet:
    the apply gate refuses it until it is (gate `_outside_window`), so its finality is asked
    again, never left final for good without it."""
    if ev is None or ev.block_time is not None or not engine.has_rail(p.rail_id):
        return False
    return engine.adapter(engine.rail(p.rail_id)).paid_at_submission


def _unsettled(engine: Engine, p: Proof, st: Settlement) -> bool:
    """A payment verified before it settled (x402) that the chain shows no settlement of yet:
    its finality is asked at growing intervals (`unsettled_backoff`), from when it was
    verified (the proof's `updated_at`: a finality answer does not move it). Another rail's
    transfer was on chain when verified: its "not found" may be a reorg, asked again soon."""
    if st.finality != "not_found" or not engine.has_rail(p.rail_id):
        return False
    return engine.adapter(engine.rail(p.rail_id)).paid_at_submission


def _finality_of(
    engine: Engine,
    s: Session,
    p: Proof,
    st: Settlement | None,
    source: str,
    now: datetime,
    att_id: int | None,
    prev: SettlementEvidence | Record | None,
    receipts: dict[str, str],
    updates: list[tuple[Proof, dict[str, object]]],
) -> None:
    """One proof's finality answer (`p` locked; `att_id`, `prev`: its latest verified attempt
    and settlement evidence, read in this transaction; `receipts`: receipt id per proof). The
    proof's own new values are added to `updates`, written by the caller."""
    if st is None or att_id is None:
        updates.append(
            (p, {"claimed_by": None, "claimed_until": None, "next_check_at": now + backoff(2)})
        )
        return
    moved = _moved(prev, st)
    if (
        prev is not None
        and prev.is_final
        and not prev.reorged
        and not (st.is_final or st.reorged or moved)
    ):
        # SECURITY: final is for good in the same block; only a reorg (or the transfer in
        # another block) takes it back. A node answering "not final" for that block is behind
        # (a lagging node of a quorum, another node of a pool): its answer would raise an
        # alarm over a paid, final transfer and finalize it a second time once it caught up.
        updates.append(
            (
                p,
                {
                    "claimed_by": None,
                    "claimed_until": None,
                    "next_check_at": now + backoff(min(p.attempts + 1, 6))
                    if _untimed(engine, p, prev)
                    else reorg_watch(engine, s, p.id, p.rail_id, now),
                },
            )
        )
        return
    changed = prev is None or (prev.finality, prev.is_final, prev.reorged) != (
        st.finality,
        st.is_final and not st.reorged,
        st.reorged,
    )
    # Evidence recorded before it kept the settlement's time gets it (the gate needs it): a
    # new evidence row, but nothing happened on chain, so no audit row or event of its own.
    timed = prev is not None and st.block_time is not None and prev.block_time is None
    ev: SettlementEvidence | Record | None = prev
    if changed or moved or timed:
        ev = record_settlement(engine, s, p, att_id, st, source)
    if st.reorged or moved:
        p.claimed_by = p.claimed_until = None
        engine.metrics.inc("reorgs_total", rail_id=p.rail_id)
        _flag_reorg(engine, s, p.id)
        _reopen_after_reorg(engine, s, p, st, source, now)
    else:
        # Written by the caller as Core UPDATEs that keep `p` in step: nothing is left for a
        # flush to write, so the batch's appends and events below run without one per proof.
        updates.append(
            (
                p,
                {
                    "claimed_by": None,
                    "claimed_until": None,
                    "next_check_at": reorg_watch(engine, s, p.id, p.rail_id, now)
                    if st.is_final and not _untimed(engine, p, ev)
                    else now + unsettled_backoff(p.updated_at, now)
                    if _unsettled(engine, p, st)
                    else now + backoff(min(p.attempts + 1, 6)),
                },
            )
        )
    if changed:
        audit.append(
            s,
            now,
            SYSTEM,
            "settlement."
            + ("reorged" if st.reorged else "finalized" if st.is_final else "observed"),
            "proof",
            p.id,
            {"finality": st.finality},
        )
    kind = "reorged" if st.reorged or moved else "finalized" if st.is_final else None
    if kind and (changed or moved):
        events.emit(
            s,
            now,
            f"settlement.{kind}",
            p.owner_id,
            "proof",
            p.id,
            proof_view(p, ev, receipts.get(p.id)),
        )


def _reopen_after_reorg(
    engine: Engine, s: Session, p: Proof, st: Settlement, source: str, now: datetime
) -> None:
    """The verified transfer left the canonical chain: the proof goes back to pending
    (`reorged`) through an attempt of its own, and is verified again at once — re-included
    transfers verify again, vanished ones end tx_not_found once the session is over."""
    attempt_repo.add(
        s,
        VerificationAttempt(
            proof_id=p.id,
            status=ProofStatus.pending,
            failure_code=FailureCode.reorged.value,
            detail=f"settlement reorged: {st.detail or st.finality}",
            observed={
                "block_number": st.block_number,
                "block_hash": st.block_hash,
                "finality": st.finality,
            },
            rpc_calls=0,
            latency_ms=0,
            source=source,
            created_at=now,
        ),
    )
    p.status, p.failure_code = ProofStatus.pending, FailureCode.reorged.value
    p.detail = "settlement reorged; re-verifying"
    p.updated_at, p.next_check_at = now, now


def _flag_reorg(engine: Engine, s: Session, proof_id: str, why: str | None = None) -> None:
    """Flag the active entitlement credited by this proof: its settlement no longer stands
    (reorged; or, `why`, the chain shows the payment can no longer be this one)."""
    # A reorg under an active entitlement is a critical finding, never a silent revoke.
    r = receipt_repo.for_proof(s, proof_id)
    if r is None:
        return
    ent = entitlement_repo.for_receipt(s, r.id)
    if ent is not None and ent.status == EntitlementStatus.active and not ent.reorg_flagged:
        ent.reorg_flagged, ent.updated_at = True, engine.now()
        audit.append(
            s,
            engine.now(),
            SYSTEM,
            "entitlement.reorg_flagged",
            "entitlement",
            ent.id,
            {"proof_id": proof_id, **({"detail": why} if why else {})},
        )
        # SECURITY: a backend that grants access by events (or by updated_at) must learn that
        # the payment under it no longer stands, not only the proof's settlement.reorged.
        events.emit(
            s,
            engine.now(),
            "entitlement.reorg_flagged",
            ent.owner_id,
            "entitlement",
            ent.id,
            entitlement_view(ent),
        )


def auto_apply(engine: Engine, batch: int) -> int:
    """Apply verified, final proofs whose gate passes on the automatic path."""
    # Only proofs whose latest settlement is final: a reorged or unfinished one would only be
    # blocked again on every sweep (and inflate apply_gate_blocks_total).
    # Only live rails: the automatic path can never pass a gated or review-only rail's
    # receipt_creation_allowed check, so trying them would only count blocks every sweep.
    # Likewise a rail outside the apply allowlist, paused or not production-enabled: its
    # proofs would be blocked, and being older they would fill every batch ahead of other
    # rails' proofs. (The gate checks all of it again under the rail state's lock.)
    allow = set(engine.settings.apply_rail_allowlist)
    live = [r for r, d in engine.catalog.rails.items() if d.stage is Stage.live and r in allow]
    with engine.db.tx() as s:
        states = [engine.rail_state(s, r) for r in live]
        ready = [st.rail_id for st in states if not st.paused and engine.production_enabled(st)]
    # Each rail's network and token now: proofs of sessions opened on another (a test
    # network's backlog after the switch to mainnet, a network retired from the catalog)
    # never apply (rail_network_current), and are left out of the batches as the paid ones
    # are. A rail this deployment cannot resolve applies nothing.
    networks = gate.current_networks(engine, ready)
    if not networks:
        return 0
    # Money staff sent back is blocked by the gate every time: left out, not counted as a
    # block on every sweep (`railproof assurance` still lists the proof). Left out by the
    # query, before its limit, and read again until a batch holds none: being older, a
    # batch's worth of them would otherwise take every batch and stop the apply for everyone.
    # Staff make these resolutions one at a time: few proofs, few reads.
    back: set[str] = set()
    while True:
        with engine.db.tx() as s:
            ids = proof_repo.final_unapplied(
                s, list(networks), batch, leave_out=back, networks=networks
            )
        found = gate.sent_back_of(engine, ids) if ids else set()
        if not found:
            break
        back |= found
    if not ids:
        return 0
    try:
        # The whole batch in one transaction ...
        return gate.apply_many(engine, ids, SYSTEM, gate.Via.auto)
    except Exception:
        # ... and, should anything in it fail, each proof on its own (apply is idempotent:
        # a proof the batch did apply is answered as already applied).
        log.warning("applying a batch failed; applying proof by proof")
    return gate.apply_each(engine, ids, SYSTEM, gate.Via.auto)


def sweep(
    engine: Engine,
    name: str,
    batch: int = 100,
    deliveries: bool = True,
    stop: threading.Event | None = None,
) -> dict[str, int]:
    """One pass of every job; `deliveries=False` leaves webhooks to a thread of their own.
    Once `stop` is set the sweep ends after the call to a node under way (each bounded by the
    RPC policy, RAILPROOF_RPC_TOTAL_S), giving back what it claimed and did not work on.
    Proofs already submitted are asked first, and those final applied: discovery, whose
    watches any tenant can multiply by opening sessions (anyone can lengthen the treasury's
    with dust), comes after them, within its budget, and before the apply again, which takes
    what it found in the same sweep.

    SECURITY: the schema is checked first, before any claim: a worker of an older version
    credits nothing on a database migrated past its code (SchemaMoved)."""
    check_schema(engine)
    out = {
        "reverified": reverify_pending(engine, name, batch, stop),
        "finality_refreshed": refresh_finality(engine, name, batch, stop),
    }
    placed = sessions.number_unplaced(engine)
    if placed:
        log.warning(
            "%d entitlements written without their list place (a release before migration "
            "0020 still serving?) placed now",
            placed,
            extra={"worker": name},
        )
        out["entitlements_placed"] = placed
    if _stopping(stop):
        return out
    if engine.settings.auto_apply:
        # What is final is applied before discovery too: a watch anyone can lengthen (dust
        # transfers to the treasury) never holds a tenant's submitted payment's receipt.
        out["applied"] = auto_apply(engine, batch)
        if _stopping(stop):
            return out
    discovered = discovery.cycle(engine, name)  # 0 unless RAILPROOF_DISCOVERY (or live chain)
    if engine.settings.auto_apply and not _stopping(stop):
        out["applied"] = out.get("applied", 0) + auto_apply(engine, batch)
    if discovered:
        out["discovered"] = discovered
    if deliveries and not _stopping(stop):
        # A SIGTERM during the deliveries (`--once`) claims nothing more: the POSTs under way
        # end (each bounded by its timeout) and are recorded; the rest stay due.
        delivered = webhooks.deliver_due(engine, name, batch, stop=stop)["delivered"]
        if delivered:
            out["webhooks_delivered"] = delivered
    return out


def default_name() -> str:
    """`<hostname>:<pid>`, the hostname cut to fit WORKER_NAME_MAX (a Kubernetes pod's may
    be 63 characters): the pid keeps two workers on one host apart."""
    pid = f":{os.getpid()}"
    return socket.gethostname()[: WORKER_NAME_MAX - len(pid)] + pid


def run_worker(
    engine: Engine,
    once: bool = False,
    interval: float = 2.0,
    batch: int = 100,
    name: str | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Sweep until `stop` is set (or the process ends); `once`: one sweep, deliveries too.
    Set mid-sweep, the sweep ends after the node call under way and gives its other claims
    back (`sweep`). Raises SchemaMoved (logged) once the database's schema is not this
    code's."""
    name = name or default_name()
    if len(name) > WORKER_NAME_MAX:
        # `railproof worker --name` refuses it first (exit 2); stored, it would fail every claim.
        raise ValueError(f"worker name longer than {WORKER_NAME_MAX} characters: {name[:80]!r}")
    stop = stop or threading.Event()
    if once:
        done = _sweep_or_stop(engine, name, batch, True, stop)
        log.info("sweep %s", done, extra={"worker": name})
        return
    # SECURITY: webhooks go out from a thread of their own. Receivers are the tenants': a slow
    # one may delay other webhooks (each POST is bounded by the timeout), never another
    # tenant's re-verification, finality or apply.
    deliveries = threading.Thread(
        target=deliver_forever,
        args=(engine, name, batch, interval, stop),
        name="webhooks",
        daemon=True,
    )
    deliveries.start()
    try:
        while not stop.is_set():
            try:
                done = _sweep_or_stop(engine, name, batch, False, stop)
            except SchemaMoved:
                raise  # the finally below stops the deliveries too
            except Exception:
                # A connection dropped (a database restart, a failover, a proxy's idle cut),
                # a lock timeout: logged, and the next sweep tries again. Ending here would
                # stop every re-check, finality refresh and apply until someone noticed.
                log.exception("sweep failed", extra={"worker": name})
                stop.wait(interval)
                continue
            log.info("sweep %s", done, extra={"worker": name})
            if not any(done.values()):
                stop.wait(interval)
    finally:
        stop.set()
        deliveries.join(timeout=interval)


def _sweep_or_stop(
    engine: Engine, name: str, batch: int, deliveries: bool, stop: threading.Event
) -> dict[str, int]:
    try:
        return sweep(engine, name, batch, deliveries=deliveries, stop=stop)
    except SchemaMoved as e:
        log.error("worker stopped: %s", e, extra={"worker": name})
        raise


def deliver_forever(
    engine: Engine,
    name: str,
    batch: int,
    interval: float,
    stop: threading.Event | None = None,
) -> None:
    """The worker's webhook deliveries, until `stop` is set (or the process ends): sent as
    they fall due (`webhooks.deliver_until`), looking again every `interval` when nothing is.
    `batch` bounds the sweeps of `--once`, not this loop."""
    stop = stop or threading.Event()
    while not stop.is_set():
        try:
            webhooks.deliver_until(engine, name, stop, interval)
        except Exception:  # a failure is logged and the loop starts again, never the thread's end
            log.exception("webhook deliveries failed", extra={"worker": name})
            stop.wait(interval)
