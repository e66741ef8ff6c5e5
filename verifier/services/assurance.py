"""Assurance: the invariants re-checked over stored data, as a report operators can act on.

summary {status ok|warning|critical, score 0-100, alert_count};
issues[] {category, severity, subject, repair}.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.orm import aliased

from registry.catalog import Stage
from verifier.core import timeutil
from verifier.services import audit
from verifier.core.engine import Engine
from verifier.storage.models import (
    ClaimStatus,
    Entitlement,
    EntitlementStatus,
    IdempotencyClaim,
    Proof,
    ProofStatus,
    Receipt,
    SettlementEvidence,
    VerificationAttempt,
)
from verifier.core.timeutil import iso, utc

PENALTY = {"critical": 40, "warning": 10, "info": 1}
VERIFIED_WITHOUT_RECEIPT_SLA = timedelta(hours=1)
PENDING_SLA = timedelta(hours=2)
LIMIT = 100  # findings listed per category


def _issue(category: str, severity: str, subject: str, repair: str) -> dict[str, str]:
    return {"category": category, "severity": severity, "subject": subject, "repair": repair}


def assurance_report(engine: Engine) -> dict[str, Any]:
    now = engine.now()
    issues: list[dict[str, str]] = []
    with engine.db.tx() as s:
        latest = (select(SettlementEvidence.proof_id, func.max(SettlementEvidence.id).label("mid"))
                  .group_by(SettlementEvidence.proof_id).subquery())
        cur = (select(SettlementEvidence).join(latest, SettlementEvidence.id == latest.c.mid)
               .subquery())

        # Active entitlements whose settlement is not final, or reorged (critical).
        q = (select(Entitlement.id, cur.c.finality, cur.c.reorged, cur.c.is_final)
             .join(Receipt, Receipt.id == Entitlement.receipt_id)
             .join(cur, cur.c.proof_id == Receipt.proof_id)
             .where(Entitlement.status == EntitlementStatus.active,
                    (cur.c.reorged.is_(True)) | (cur.c.is_final.is_(False))).limit(LIMIT))
        for ent_id, finality, reorged, _ in s.execute(q):
            issues.append(_issue("active_entitlement_unsettled", "critical", f"entitlement {ent_id}",
                                 "settlement is " + ("reorged" if reorged else finality) +
                                 ": investigate the transfer; revoke with incident id if it "
                                 "does not come back"))
        # Receipts whose entitlement is not active (and not deliberately revoked).
        q = (select(Receipt.id).outerjoin(Entitlement, Entitlement.receipt_id == Receipt.id)
             .where((Entitlement.id.is_(None)) | (Entitlement.status == EntitlementStatus.pending))
             .limit(LIMIT))
        for (rid,) in s.execute(q):
            issues.append(_issue("receipt_without_active_entitlement", "critical",
                                 f"receipt {rid}", "re-run apply for its proof; it is idempotent"))
        # Receipts not backed by final settlement evidence.
        q = (select(Receipt.id).join(SettlementEvidence, SettlementEvidence.id == Receipt.settlement_id)
             .where(SettlementEvidence.is_final.is_(False)).limit(LIMIT))
        for (rid,) in s.execute(q):
            issues.append(_issue("receipt_without_final_settlement", "critical", f"receipt {rid}",
                                 "investigate how apply passed; revoke the entitlement"))
        # Settlement evidence whose attempt is not a verified one.
        q = (select(SettlementEvidence.id).join(VerificationAttempt,
                                                VerificationAttempt.id == SettlementEvidence.attempt_id)
             .where(VerificationAttempt.status != ProofStatus.verified).limit(LIMIT))
        for (eid,) in s.execute(q):
            issues.append(_issue("settlement_without_verified_attempt", "critical",
                                 f"settlement_evidence {eid}", "investigate the writer"))
        # One transfer claimed twice: one on-chain reference behind more than one receipt.
        q = (select(Proof.ref, func.count(Receipt.id)).join(Receipt, Receipt.proof_id == Proof.id)
             .group_by(Proof.ref).having(func.count(Receipt.id) > 1).limit(LIMIT))
        for ref, n in s.execute(q):
            issues.append(_issue("transfer_claimed_twice", "critical", f"transfer {ref[:16]}…",
                                 f"{n} receipts: revoke all but the first, with incident id"))
        # Verified and final proofs on the live path without a receipt past the SLA. Gated
        # rails wait for staff by design, so their proofs are not findings.
        live = [r for r, d in engine.catalog.rails.items() if d.stage is Stage.live]
        q = (select(Proof.id).join(cur, cur.c.proof_id == Proof.id)
             .outerjoin(Receipt, Receipt.proof_id == Proof.id)
             .where(Proof.status == ProofStatus.verified, cur.c.is_final.is_(True),
                    Proof.rail_id.in_(live), Receipt.id.is_(None),
                    Proof.updated_at < now - VERIFIED_WITHOUT_RECEIPT_SLA)
             .limit(LIMIT))
        for (pid,) in s.execute(q):
            issues.append(_issue("verified_without_receipt", "warning", f"proof {pid}",
                                 "dry-run-rail-proof-apply to see the blockers"))
        # Pending proofs past the SLA.
        q = (select(Proof.id).where(Proof.status == ProofStatus.pending,
                                    Proof.created_at < now - PENDING_SLA).limit(LIMIT))
        for (pid,) in s.execute(q):
            issues.append(_issue("pending_past_sla", "warning", f"proof {pid}",
                                 "check RPC health and the worker; inspect-rail-proof"))
        issues += _uncredited_transfers(s)
        at = timeutil.process_now()  # leases and claim ages are process time, never pinned
        issues += _lapsed_leases(s, at)
        issues += _stuck_claims(engine, s, at)
        chain = audit.verify_chain(s)
        if not chain.ok:
            issues.append(_issue("audit_chain_broken", "critical",
                                 f"audit event {chain.first_broken_id}",
                                 chain.message + "; restore from backup and investigate"))
    score = max(0, 100 - sum(PENALTY[i["severity"]] for i in issues))
    status = ("critical" if any(i["severity"] == "critical" for i in issues)
              else "warning" if issues else "ok")
    return {"summary": {"status": status, "score": score, "alert_count": len(issues)},
            "issues": issues}


def _uncredited_transfers(s: Any) -> list[dict[str, str]]:
    """Verified transfers no receipt can credit: their session was paid by another transfer
    (the payer paid twice, or two transfers raced for one session). The money arrived; it
    must not vanish from view."""
    other = aliased(Receipt)
    credited = (select(other.id).where(other.session_id == Proof.session_id,
                                       other.proof_id != Proof.id).exists())
    q = (select(Proof.id, Proof.session_id, Proof.owner_id)
         .outerjoin(Receipt, Receipt.proof_id == Proof.id)
         .where(Proof.status == ProofStatus.verified, Receipt.id.is_(None), credited)
         .order_by(Proof.created_at).limit(LIMIT))
    return [_issue("verified_transfer_not_credited", "warning", f"proof {pid}",
                   f"a verified transfer for session {sid} (owner {owner}), which another "
                   "transfer already paid: refund the payer, or credit it by hand under an "
                   "incident id; it never creates a second receipt")
            for pid, sid, owner in s.execute(q)]


def _lapsed_leases(s: Any, at: Any) -> list[dict[str, str]]:
    """Proofs still claimed by a worker whose lease ran out: it died or stalled mid-work."""
    q = (select(Proof.id, Proof.claimed_by, Proof.claimed_until)
         .where(Proof.claimed_by.is_not(None), Proof.claimed_until < at)
         .order_by(Proof.claimed_until).limit(LIMIT))
    return [_issue("claim_lease_lapsed", "warning", f"proof {pid}",
                   f"claimed by worker {by} until {iso(until)}, never finished: a running "
                   "worker takes it again once it is due; check that workers run and what "
                   f"stopped {by} (its logs)")
            for pid, by, until in s.execute(q)]


def _stuck_claims(engine: Engine, s: Any, at: Any) -> list[dict[str, str]]:
    """Idempotency claims whose request never completed (the process died mid-request): the
    client's retries get idempotency_in_progress for good. Claims are never deleted."""
    cutoff = at - timedelta(seconds=engine.settings.stuck_claim_seconds)
    q = (select(IdempotencyClaim.principal, IdempotencyClaim.endpoint, IdempotencyClaim.key,
                IdempotencyClaim.created_at)
         .where(IdempotencyClaim.status == ClaimStatus.in_progress,
                IdempotencyClaim.created_at <= cutoff)
         .order_by(IdempotencyClaim.created_at).limit(LIMIT))
    return [_issue("idempotency_claim_stuck", "warning",
                   f"idempotency claim {principal} {endpoint} key {key[:64]}",
                   f"in progress since {iso(created)}: find whether its work was done "
                   "(audit, list-rail-proofs) and have the client retry with a new "
                   "Idempotency-Key; list-stuck-idempotency-claims lists them all")
            for principal, endpoint, key, created in s.execute(q)]


def refresh_gauges(engine: Engine) -> None:
    """Gauges computed from stored state at scrape time."""
    now = engine.now()
    with engine.db.tx() as s:
        # Only entitlements someone has paid for: an unpaid session's entitlement waits by design.
        oldest = s.scalar(select(func.min(Proof.updated_at))
                          .join(Entitlement, Entitlement.session_id == Proof.session_id)
                          .where(Entitlement.status == EntitlementStatus.pending,
                                 Proof.status == ProofStatus.verified))
        flagged = s.scalar(select(func.count()).select_from(Entitlement)
                           .where(and_(Entitlement.status == EntitlementStatus.active,
                                       Entitlement.reorg_flagged.is_(True)))) or 0
    age = (now - utc(oldest)).total_seconds() if oldest is not None else 0
    engine.metrics.set("pending_entitlement_age_seconds", max(0.0, age))
    engine.metrics.set("reorged_active_entitlements", flagged)
    from verifier.services.webhooks import refresh_webhook_gauges
    refresh_webhook_gauges(engine)
