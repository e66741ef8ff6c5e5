"""The worker: re-verifies due pending proofs (with backoff), refreshes settlement finality in
batches, flags reorgs, and applies verified final proofs when RAILPROOF_AUTO_APPLY=1.

Work is claimed before it is done: a claim sets `claimed_by`/`claimed_until` on the proof
row in a short transaction (FOR UPDATE SKIP LOCKED on PostgreSQL, so several workers share
the queue and never take the same proof; SQLite serializes writers anyway). A worker that
dies leaves a claim that expires after the lease, and the proof is taken again. Leases run on
process time (timeutil.process_now), not on the business clock, which may be pinned.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import defaultdict
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from rails.base import Settlement
from rails.codes import FailureCode
from registry.catalog import Stage
from verifier.core import timeutil
from verifier.core.engine import Engine
from verifier.core.errors import EngineError
from verifier.core.timeutil import utc
from verifier.services import audit, discovery, events, gate, webhooks
from verifier.services.proofs import (
    backoff,
    latest_settlement,
    latest_verified_attempt,
    record_settlement,
    verify_proof,
)
from verifier.services.views import proof_view
from verifier.storage.models import (
    EntitlementStatus,
    Proof,
    ProofStatus,
    VerificationAttempt,
)
from verifier.storage.repo import attempts as attempt_repo
from verifier.storage.repo import entitlements as entitlement_repo
from verifier.storage.repo import proofs as proof_repo
from verifier.storage.repo import receipts as receipt_repo
from verifier.storage.repo import sessions as session_repo

log = logging.getLogger("railproof.worker")
SYSTEM = audit.Operator("worker")


def claim(engine: Engine, status: ProofStatus, name: str, batch: int) -> list[str]:
    now = engine.now()  # when a proof is due: the payment's clock (backoff, session windows)
    # The lease is process time: on a clock pinned to replay recorded chains, a lease would
    # never lapse and the proofs of a worker that died would stay claimed for good.
    held = timeutil.process_now()
    lease = timedelta(seconds=engine.settings.claim_lease_seconds)
    with engine.db.tx() as s:
        rows = proof_repo.claim_due(s, status, now, held, batch)
        for p in rows:
            p.claimed_by, p.claimed_until = name, held + lease
        return [p.id for p in rows]


def reverify_pending(engine: Engine, name: str, batch: int) -> int:
    ids = claim(engine, ProofStatus.pending, name, batch)
    for pid in ids:
        try:
            verify_proof(engine, pid, worker=name)
        except Exception:  # one bad proof must not stop the sweep
            log.exception("re-verification failed", extra={"proof_id": pid})
    return len(ids)


def refresh_finality(engine: Engine, name: str, batch: int) -> int:
    """Verified proofs whose settlement is not final yet: one batched finality call per
    (rail, network) per sweep — per node with RAILPROOF_RPC_QUORUM > 1, where a settlement
    changes only as a quorum of nodes agree (Chains.finality); otherwise it is asked again."""
    ids = claim(engine, ProofStatus.verified, name, batch)
    if not ids:
        return 0
    groups: dict[tuple[str, str, str], list[Proof]] = defaultdict(list)
    expected: dict[str, tuple[str, int]] = {}
    with engine.db.tx() as s:
        for pid in ids:
            p = proof_repo.get(s, pid)
            ps = session_repo.get(s, p.session_id) if p is not None else None
            if p is None or ps is None:  # pragma: no cover - proofs and sessions stay
                continue
            groups[(p.rail_id, ps.network, ps.asset)].append(p)
            # SECURITY: where the money had to go, for rails whose ref does not pin the
            # transfer itself (an x402 nonce can be settled by another authorization).
            expected[p.ref] = (ps.recipient, ps.amount)
    for (rail_id, network, asset), plist in groups.items():
        rail = engine.rail(rail_id, network=network, asset=asset)
        adapter = engine.adapter(rail)
        try:
            settlements, source = engine.chains.finality(adapter, [p.ref for p in plist], expected)
        except Exception as e:
            engine.metrics.inc("rpc_errors_total", network=network, kind="finality")
            log.warning("finality refresh failed: %s", type(e).__name__, extra={"rail_id": rail_id})
            _release(engine, plist)
            continue
        by_ref = {st.ref: st for st in settlements}
        for p in plist:
            try:
                _record_finality(engine, p.id, by_ref.get(p.ref), source)
            except Exception:  # e.g. a lock timeout: one proof must not stop the sweep
                log.exception("recording finality failed", extra={"proof_id": p.id})
    return len(ids)


def _release(engine: Engine, plist: list[Proof]) -> None:
    with engine.db.tx() as s:
        for p in plist:
            row = proof_repo.get(s, p.id)
            if row is None:  # pragma: no cover - a proof row is never deleted
                continue
            row.claimed_by = row.claimed_until = None
            row.next_check_at = engine.now() + backoff(2)


def _record_finality(engine: Engine, proof_id: str, st: Settlement | None, source: str) -> None:
    now = engine.now()
    with engine.db.tx() as s:
        p = proof_repo.get(s, proof_id, lock=True)
        if p is None:  # pragma: no cover - a proof row is never deleted
            return
        p.claimed_by = p.claimed_until = None
        att = latest_verified_attempt(s, p.id)
        if st is None or att is None:
            p.next_check_at = now + backoff(2)
            return
        prev = latest_settlement(s, p.id)
        changed = prev is None or (prev.finality, prev.is_final, prev.reorged) != (
            st.finality,
            st.is_final and not st.reorged,
            st.reorged,
        )
        # A transfer mined again in another block after a reorg can look final again; the
        # block it was verified in is gone, so it must be verified afresh.
        moved = (
            prev is not None
            and prev.block_hash
            and st.block_hash
            and prev.block_hash.lower() != st.block_hash.lower()
        )
        if changed or moved:
            record_settlement(engine, s, p, att.id, st, source)
        if st.reorged or moved:
            engine.metrics.inc("reorgs_total", rail_id=p.rail_id)
            _flag_reorg(engine, s, p)
            _reopen_after_reorg(engine, s, p, st, source, now)
        elif st.is_final:
            p.next_check_at = _reorg_watch(engine, s, p, now)
        else:
            p.next_check_at = now + backoff(min(p.attempts + 1, 6))
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
                proof_view(p, latest_settlement(s, p.id), receipt_repo.id_for_proof(s, p.id)),
            )


def _reorg_watch(engine: Engine, s: Session, p: Proof, now: datetime) -> datetime | None:
    """Next re-check of a final settlement: only while a receipt depends on it, on a rail whose
    finality is depth-based, within the watch window (see gate.REORG_WATCH)."""
    if not gate.watches_reorgs(engine, p.rail_id):
        return None
    created = receipt_repo.created_at_for_proof(s, p.id)
    if created is None or now >= utc(created) + gate.REORG_WATCH:
        return None
    return now + gate.REORG_RECHECK


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


def _flag_reorg(engine: Engine, s: Session, p: Proof) -> None:
    # A reorg under an active entitlement is a critical finding, never a silent revoke.
    r = receipt_repo.for_proof(s, p.id)
    if r is None:
        return
    ent = entitlement_repo.for_receipt(s, r.id)
    if ent is not None and ent.status == EntitlementStatus.active and not ent.reorg_flagged:
        ent.reorg_flagged = True
        audit.append(
            s,
            engine.now(),
            SYSTEM,
            "entitlement.reorg_flagged",
            "entitlement",
            ent.id,
            {"proof_id": p.id},
        )


def auto_apply(engine: Engine, batch: int) -> int:
    """Apply verified, final proofs whose gate passes on the automatic path."""
    # Only proofs whose latest settlement is final: a reorged or unfinished one would only be
    # blocked again on every sweep (and inflate apply_gate_blocks_total).
    # Only live rails: the automatic path can never pass a gated or review-only rail's
    # receipt_creation_allowed check, so trying them would only count blocks every sweep.
    live = [r for r, d in engine.catalog.rails.items() if d.stage is Stage.live]
    with engine.db.tx() as s:
        ids = proof_repo.final_unapplied(s, live, batch)
    applied = 0
    for pid in ids:
        try:
            gate.apply(engine, pid, SYSTEM, gate.Via.auto)
            applied += 1
        except EngineError:
            pass  # blockers are counted by the gate; staff see them in dry-run
    return applied


def sweep(engine: Engine, name: str, batch: int = 100) -> dict[str, int]:
    discovered = discovery.cycle(engine, name)  # 0 unless RAILPROOF_DISCOVERY (or live chain)
    out = {
        "reverified": reverify_pending(engine, name, batch),
        "finality_refreshed": refresh_finality(engine, name, batch),
    }
    if engine.settings.auto_apply:
        out["applied"] = auto_apply(engine, batch)
    if discovered:
        out["discovered"] = discovered
    delivered = webhooks.deliver_due(engine, name, batch)["delivered"]
    if delivered:
        out["webhooks_delivered"] = delivered
    return out


def run_worker(
    engine: Engine,
    once: bool = False,
    interval: float = 2.0,
    batch: int = 100,
    name: str | None = None,
) -> None:
    name = name or f"{socket.gethostname()}:{os.getpid()}"
    while True:
        done = sweep(engine, name, batch)
        log.info("sweep %s", done, extra={"worker": name})
        if once:
            return
        if not any(done.values()):
            time.sleep(interval)
