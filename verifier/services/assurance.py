"""Assurance: the invariants re-checked over stored data, as a report operators can act on.

summary {status ok|warning|critical, score 0-100, alert_count};
issues[] {category, severity, subject, repair}.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from registry.catalog import Stage
from verifier.core import timeutil
from verifier.core.engine import Engine
from verifier.core.timeutil import iso, utc
from verifier.services import audit, reconciliation
from verifier.storage.repo import entitlements as entitlement_repo
from verifier.storage.repo import findings
from verifier.storage.repo import idempotency as claim_repo

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
        # Active entitlements whose settlement is not final, or reorged (critical).
        for ent_id, finality, reorged in findings.unsettled_active_entitlements(s, LIMIT):
            issues.append(
                _issue(
                    "active_entitlement_unsettled",
                    "critical",
                    f"entitlement {ent_id}",
                    "settlement is "
                    + ("reorged" if reorged else finality)
                    + ": investigate the transfer; revoke with incident id if it "
                    "does not come back",
                )
            )
        # Receipts whose entitlement is not active (and not deliberately revoked).
        for rid in findings.receipts_without_active_entitlement(s, LIMIT):
            issues.append(
                _issue(
                    "receipt_without_active_entitlement",
                    "critical",
                    f"receipt {rid}",
                    "re-run apply for its proof; it is idempotent",
                )
            )
        # Receipts not backed by final settlement evidence.
        for rid in findings.receipts_without_final_settlement(s, LIMIT):
            issues.append(
                _issue(
                    "receipt_without_final_settlement",
                    "critical",
                    f"receipt {rid}",
                    "investigate how apply passed; revoke the entitlement",
                )
            )
        # Settlement evidence whose attempt is not a verified one.
        for eid in findings.settlements_without_verified_attempt(s, LIMIT):
            issues.append(
                _issue(
                    "settlement_without_verified_attempt",
                    "critical",
                    f"settlement_evidence {eid}",
                    "investigate the writer",
                )
            )
        # One transfer claimed twice: one on-chain reference behind more than one receipt.
        for ref, n in findings.transfers_with_several_receipts(s, LIMIT):
            issues.append(
                _issue(
                    "transfer_claimed_twice",
                    "critical",
                    f"transfer {ref[:16]}…",
                    f"{n} receipts: revoke all but the first, with incident id",
                )
            )
        # Verified and final proofs on the live path without a receipt past the SLA. Gated
        # rails wait for staff by design, so their proofs are not findings.
        live = [r for r, d in engine.catalog.rails.items() if d.stage is Stage.live]
        for pid in findings.final_without_receipt(
            s, live, now - VERIFIED_WITHOUT_RECEIPT_SLA, LIMIT
        ):
            issues.append(
                _issue(
                    "verified_without_receipt",
                    "warning",
                    f"proof {pid}",
                    "dry-run-rail-proof-apply to see the blockers",
                )
            )
        # Pending proofs past the SLA.
        for pid in findings.pending_created_before(s, now - PENDING_SLA, LIMIT):
            issues.append(
                _issue(
                    "pending_past_sla",
                    "warning",
                    f"proof {pid}",
                    "check RPC health and the worker; inspect-rail-proof",
                )
            )
        issues += _uncredited_transfers(s)
        at = timeutil.process_now()  # leases and claim ages are process time, never pinned
        issues += _lapsed_leases(s, at)
        issues += _stuck_claims(engine, s, at)
        chain = audit.verify_chain(s)
        if not chain.ok:
            issues.append(
                _issue(
                    "audit_chain_broken",
                    "critical",
                    f"audit event {chain.first_broken_id}",
                    chain.message + "; restore from backup and investigate",
                )
            )
    # The latest reconciliation run's unresolved findings, and a run that could not finish.
    issues += reconciliation.assurance_issues(engine)
    score = max(0, 100 - sum(PENALTY[i["severity"]] for i in issues))
    status = (
        "critical"
        if any(i["severity"] == "critical" for i in issues)
        else "warning"
        if issues
        else "ok"
    )
    return {
        "summary": {"status": status, "score": score, "alert_count": len(issues)},
        "issues": issues,
    }


def _uncredited_transfers(s: Session) -> list[dict[str, str]]:
    """Verified transfers no receipt can credit: their session was paid by another transfer
    (the payer paid twice, or two transfers raced for one session). The money arrived; it
    must not vanish from view."""
    return [
        _issue(
            "verified_transfer_not_credited",
            "warning",
            f"proof {pid}",
            f"a verified transfer for session {sid} (owner {owner}), which another "
            "transfer already paid: refund the payer, or credit it by hand under an "
            "incident id; it never creates a second receipt",
        )
        for pid, sid, owner in findings.verified_on_paid_sessions(s, LIMIT)
    ]


def _lapsed_leases(s: Session, at: datetime) -> list[dict[str, str]]:
    """Proofs still claimed by a worker whose lease ran out: it died or stalled mid-work."""
    return [
        _issue(
            "claim_lease_lapsed",
            "warning",
            f"proof {pid}",
            f"claimed by worker {by} until {iso(until)}, never finished: a running "
            "worker takes it again once it is due; check that workers run and what "
            f"stopped {by} (its logs)",
        )
        for pid, by, until in findings.lapsed_leases(s, at, LIMIT)
    ]


def _stuck_claims(engine: Engine, s: Session, at: datetime) -> list[dict[str, str]]:
    """Idempotency claims whose request never completed (the process died mid-request): the
    client's retries get idempotency_in_progress for good. Claims are never deleted."""
    cutoff = at - timedelta(seconds=engine.settings.stuck_claim_seconds)
    return [
        _issue(
            "idempotency_claim_stuck",
            "warning",
            f"idempotency claim {c.principal} {c.endpoint} key {c.key[:64]}",
            f"in progress since {iso(c.created_at)}: find whether its work was done "
            "(audit, list-rail-proofs) and have the client retry with a new "
            "Idempotency-Key; list-stuck-idempotency-claims lists them all",
        )
        for c in claim_repo.in_progress_since(s, cutoff, LIMIT)
    ]


def refresh_gauges(engine: Engine) -> None:
    """Gauges computed from stored state at scrape time."""
    now = engine.now()
    with engine.db.tx() as s:
        # Only entitlements someone has paid for: an unpaid session's entitlement waits by design.
        oldest = entitlement_repo.oldest_paid_pending_since(s)
        flagged = entitlement_repo.count_reorg_flagged_active(s)
    age = (now - utc(oldest)).total_seconds() if oldest is not None else 0
    engine.metrics.set("pending_entitlement_age_seconds", max(0.0, age))
    engine.metrics.set("reorged_active_entitlements", flagged)
    from verifier.services.webhooks import refresh_webhook_gauges

    refresh_webhook_gauges(engine)
    reconciliation.refresh_drift_gauge(engine)
