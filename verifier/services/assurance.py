"""Assurance: the invariants re-checked over stored data, as a report operators can act on,
and the safe repairs of the kinds that have one.

summary {status ok|warning|error|critical, score 0-100, alert_count, period_days, since,
truncated[] {category, listed, total}};
issues[] {id, category, severity critical|error|warning|info, subject, repair, repairable}.

A category lists at most `LIMIT` issues, in a fixed order: each owner's oldest first, round by
round over the owners (storage.repo.findings says why), so one tenant's flood of findings
never hides another's. A category with more gets one more issue, `<category>:more`, saying how
many it has in all, and a `truncated` entry: a cut list never reads as the whole report, and
`alert_count` counts every finding, listed or not.

Each check is one function of a `Scope` (the report's transaction, both clocks and the
window) returning `Issue`s; `CHECKS` lists them in the order the report shows them, so a new
invariant is one function appended there. An issue's `id` is a function of what it is about
(its category and subject), so it stays the same while the issue stands and a repair can
name it.

A repair (`repair`) re-runs the check of the issue's category over all its findings (not
only the `LIMIT` a report lists: an issue listed in a narrow window is found too), finds the
issue by id (an issue that no longer stands is not found), and runs the staff action that
fixes it — the apply gate for a missing receipt, the worker's own release for a lapsed lease,
the idempotency service's release for a stuck claim — never a direct table edit. Each repair
needs confirmation, an incident id and a reason, and is audited (`assurance.repaired`) with
all three and the staff member, in the transaction that acts: no repair commits unaudited,
and one that finds the issue resolved meanwhile changes nothing and writes no row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar

from sqlalchemy.orm import Session

from registry.catalog import Stage
from registry.readiness import live_verifier_configured
from verifier.core import timeutil
from verifier.core.engine import Engine
from verifier.core.errors import BadInput, Conflict, NotFound
from verifier.core.timeutil import iso, utc
from verifier.services import audit, gate, rails_admin, reconciliation, release_gates
from verifier.storage.models import ClaimStatus, ProofStatus
from verifier.storage.repo import entitlements as entitlement_repo
from verifier.storage.repo import findings
from verifier.storage.repo import idempotency as claim_repo
from verifier.storage.repo import proofs as proof_repo
from verifier.storage.repo import rail_state as rail_state_repo
from verifier.storage.repo.findings import Capped

Severity = Literal["critical", "error", "warning", "info"]
SEVERITIES: tuple[Severity, ...] = ("critical", "error", "warning", "info")  # worst first
PENALTY: dict[str, int] = {"critical": 40, "error": 20, "warning": 10, "info": 1}
VERIFIED_WITHOUT_RECEIPT_SLA = timedelta(hours=1)
PENDING_SLA = timedelta(hours=2)
LIMIT = 100  # findings listed per category
MAX_PERIOD_DAYS = 3650


@dataclass(frozen=True)
class Issue:
    category: str
    severity: Severity
    subject: str
    repair: str
    key: str  # what the issue is about, unique within its category (its id's second half)
    # What a repair acts on (a proof id, a claim's primary key); None: no automatic repair.
    target: str | tuple[str, str, str] | None = field(default=None, compare=False)
    # A category's `more` issue: how many findings it has in all (its list was cut); else 0.
    total: int = field(default=0, compare=False)

    @property
    def id(self) -> str:
        return f"{self.category}:{self.key}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "category": self.category,
            "severity": self.severity,
            "subject": self.subject,
            "repair": self.repair,
            "repairable": self.target is not None and self.category in REPAIRS,
        }


@dataclass(frozen=True)
class Scope:
    engine: Engine
    s: Session
    now: datetime  # the business clock: when payments happened
    at: datetime  # process time: leases and idempotency claims age by it, never pinned
    since: datetime | None  # the window's start on the business clock (None: everything)
    since_process: datetime | None  # the same window on process time
    limit: int | None  # findings listed per category (None: all, for a repair's look-up)


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


T = TypeVar("T")
Row = TypeVar("Row", bound=tuple[object, ...])


def _listed(found: Capped[T], issue: Callable[[T], Issue]) -> list[Issue]:
    """One issue per row found; and where the query found more than it listed, one issue
    more that says so (the category's, at its severity), so a cut list is never taken for
    all there is."""
    out = [issue(row) for row in found.rows]
    if not found.cut or not out:
        return out
    first = out[0]
    out.append(
        Issue(
            first.category,
            first.severity,
            f"more than {len(out)} {first.category} findings: {found.total} in all, "
            f"{found.total - len(out)} not listed",
            "the list holds each owner's oldest first, round by round over the owners; act "
            "on these, or narrow the window (--period-days, newest rows) to list others",
            "more",
            total=found.total,
        )
    )
    return out


def _listed_rows(found: Capped[Row], issue: Callable[..., Issue]) -> list[Issue]:
    """`_listed` for rows of several columns, each passed to `issue` as its own argument."""
    return _listed(found, lambda row: issue(*row))


# -- the checks ------------------------------------------------------------------------------


def unsettled_active_entitlements(sc: Scope) -> list[Issue]:
    """Active entitlements whose settlement is not final, or reorged."""
    return _listed_rows(
        findings.unsettled_active_entitlements(sc.s, sc.limit, since=sc.since),
        lambda ent_id, finality, reorged: Issue(
            "active_entitlement_unsettled",
            "critical",
            f"entitlement {ent_id}",
            "settlement is "
            + ("reorged" if reorged else finality)
            + ": investigate the transfer; revoke with incident id if it does not come back",
            ent_id,
        ),
    )


def flagged_active_entitlements(sc: Scope) -> list[Issue]:
    """Active entitlements the worker flagged whose proof is no longer verified though its
    settlement still reads final (the chain shows the payment can no longer be this one)."""
    return _listed_rows(
        findings.flagged_active_entitlements_with_failed_proof(sc.s, sc.limit, since=sc.since),
        lambda ent_id, status, code: Issue(
            "active_entitlement_payment_gone",
            "critical",
            f"entitlement {ent_id}",
            f"its proof is {status}"
            + (f" ({code})" if code else "")
            + ": inspect-entitlement, then revoke with incident id if the payment is gone",
            ent_id,
        ),
    )


def receipts_without_active_entitlement(sc: Scope) -> list[Issue]:
    """Receipts whose entitlement is not active (and not deliberately revoked)."""
    return _listed(
        findings.receipts_without_active_entitlement(sc.s, sc.limit, since=sc.since),
        lambda rid: Issue(
            "receipt_without_active_entitlement",
            "critical",
            f"receipt {rid}",
            "re-run apply for its proof; it is idempotent",
            rid,
        ),
    )


def receipts_without_final_settlement(sc: Scope) -> list[Issue]:
    return _listed(
        findings.receipts_without_final_settlement(sc.s, sc.limit, since=sc.since),
        lambda rid: Issue(
            "receipt_without_final_settlement",
            "critical",
            f"receipt {rid}",
            "investigate how apply passed; revoke the entitlement",
            rid,
        ),
    )


def entitlements_on_another_receipt(sc: Scope) -> list[Issue]:
    """Active entitlements standing on a receipt that is not their session's own."""
    return _listed(
        findings.entitlements_on_another_receipt(sc.s, sc.limit, since=sc.since),
        lambda ent_id: Issue(
            "entitlement_on_another_receipt",
            "critical",
            f"entitlement {ent_id}",
            "its receipt is another session's, owner's or product's, or backs another "
            "entitlement too: investigate the writer; revoke with incident id",
            ent_id,
        ),
    )


def receipts_on_another_proof(sc: Scope) -> list[Issue]:
    """Receipts whose settlement or proof does not back them."""
    return _listed(
        findings.receipts_on_another_proof(sc.s, sc.limit, since=sc.since),
        lambda rid: Issue(
            "receipt_without_verified_proof",
            "critical",
            f"receipt {rid}",
            "its settlement is another proof's, or its proof is not verified while the "
            "entitlement stands: investigate how apply passed; revoke the entitlement",
            rid,
        ),
    )


def settlements_without_verified_attempt(sc: Scope) -> list[Issue]:
    return _listed(
        findings.settlements_without_verified_attempt(sc.s, sc.limit, since=sc.since),
        lambda eid: Issue(
            "settlement_without_verified_attempt",
            "critical",
            f"settlement_evidence {eid}",
            "investigate the writer",
            str(eid),
        ),
    )


def transfers_claimed_twice(sc: Scope) -> list[Issue]:
    """One on-chain reference behind more than one receipt."""
    return _listed_rows(
        findings.transfers_with_several_receipts(sc.s, sc.limit, since=sc.since),
        lambda ref, n: Issue(
            "transfer_claimed_twice",
            "critical",
            f"transfer {ref[:16]}…",
            f"{n} receipts: revoke all but the first, with incident id",
            _digest(ref),
        ),
    )


def verified_without_receipt(sc: Scope) -> list[Issue]:
    """Verified and final proofs on the live path without a receipt past the SLA. Gated rails
    wait for staff by design, so their proofs are not findings. Repair: the apply gate."""
    live = [r for r, d in sc.engine.catalog.rails.items() if d.stage is Stage.live]
    return _listed(
        findings.final_without_receipt(
            sc.s, live, sc.now - VERIFIED_WITHOUT_RECEIPT_SLA, sc.limit, since=sc.since
        ),
        lambda pid: Issue(
            "verified_without_receipt",
            "warning",
            f"proof {pid}",
            "dry-run-rail-proof-apply to see the blockers; the repair applies it through "
            "the apply gate (every check holds, or nothing changes)",
            pid,
            target=pid,
        ),
    )


def pending_past_sla(sc: Scope) -> list[Issue]:
    return _listed(
        findings.pending_created_before(sc.s, sc.now - PENDING_SLA, sc.limit, since=sc.since),
        lambda pid: Issue(
            "pending_past_sla",
            "warning",
            f"proof {pid}",
            "check RPC health and the worker; inspect-rail-proof",
            pid,
        ),
    )


def uncredited_transfers(sc: Scope) -> list[Issue]:
    """Verified transfers no receipt can credit: their session was paid by another transfer
    (the payer paid twice, or two transfers raced for one session). The money arrived; it
    must not vanish from view."""
    return _listed_rows(
        findings.verified_on_paid_sessions(sc.s, sc.limit, since=sc.since),
        lambda pid, sid, owner: Issue(
            "verified_transfer_not_credited",
            "error",  # money arrived and nothing credits it: someone must act
            f"proof {pid}",
            f"a verified transfer for session {sid} (owner {owner}), which another "
            "transfer already paid: refund the payer, or credit it by hand under an "
            "incident id; it never creates a second receipt",
            pid,
        ),
    )


def lapsed_leases(sc: Scope) -> list[Issue]:
    """Proofs still claimed by a worker whose lease ran out: it died or stalled mid-work. A
    current state, so outside any window. Repair: release the lease, due now."""
    return _listed_rows(
        findings.lapsed_leases(sc.s, sc.at, sc.limit),
        lambda pid, by, until: Issue(
            "claim_lease_lapsed",
            "warning",
            f"proof {pid}",
            f"claimed by worker {by} until {iso(until)}, never finished: a running "
            "worker takes it again once it is due; check that workers run and what "
            f"stopped {by} (its logs); the repair re-queues it for the next sweep",
            pid,
            target=pid,
        ),
    )


def stuck_claims(sc: Scope) -> list[Issue]:
    """Idempotency claims whose request never completed (the process died mid-request): the
    client's retries get idempotency_in_progress for good. Repair: release the claim, as a
    refused request does, so the client's retry runs again."""
    cutoff = sc.at - timedelta(seconds=sc.engine.settings.stuck_claim_seconds)
    return _listed_rows(
        findings.stuck_claims(sc.s, cutoff, sc.limit, since=sc.since_process),
        lambda principal, endpoint, key, made_at: Issue(
            "idempotency_claim_stuck",
            "warning",
            f"idempotency claim {principal} {endpoint} key {key[:64]}",
            f"in progress since {iso(made_at)}: find whether its work was done "
            "(audit, list-rail-proofs) and have the client retry with a new "
            "Idempotency-Key; list-stuck-idempotency-claims lists them all; the repair "
            "releases it, so a retry with the same key runs the request again",
            _digest(principal, endpoint, key),
            target=(principal, endpoint, key),
        ),
    )


def production_rails_not_live(sc: Scope) -> list[Issue]:
    """Production-enabled rails without a live verifier on a live chain: the network has no
    RPC URL (readiness' `live_verifier_configured`, the same fact), so nothing that rail
    applies was checked against the chain. A cassette deployment replays recordings and
    verifies nothing live at all, which readiness reports per rail; only the live chain's gap
    is a finding here. (Whether a gated rail may be in production at all is its release
    gates' question.)"""
    cfg = rails_admin.deployment(sc.engine)
    if cfg.chain_mode != "live":
        return []
    out: list[Issue] = []
    for st in rail_state_repo.all_states(sc.s):
        d = sc.engine.catalog.rails.get(st.rail_id)
        if d is None or not sc.engine.production_enabled(st):
            continue
        network = cfg.networks.get(st.rail_id, d.network)
        if live_verifier_configured(cfg, network):
            continue
        var = "RAILPROOF_RPC_" + network.upper().replace("-", "_")
        out.append(
            Issue(
                "production_rail_not_live_verified",
                "critical",
                f"rail {st.rail_id}",
                f"production-enabled but no live verifier for {network}: set {var}, or "
                f"pause-rail {st.rail_id} and request-rail-production {st.rail_id} --disable",
                st.rail_id,
            )
        )
    return out


def production_rails_without_release_evidence(sc: Scope) -> list[Issue]:
    """A rail whose stage is not `live` but which is production-enabled while a release gate
    lacks passing evidence (never recorded, failed, or expired since): enabled without what
    approval requires, or kept enabled past its evidence. Rails enabled by the catalog's
    `live` stage were released with the code and are not held to the gates here."""
    from registry.catalog import Stage

    out: list[Issue] = []
    for st in rail_state_repo.all_states(sc.s):
        d = sc.engine.catalog.rails.get(st.rail_id)
        if d is None or d.stage is Stage.live or not sc.engine.production_enabled(st):
            continue
        missing = release_gates.incomplete_gates(sc.engine, st.rail_id, sc.s)
        if not missing:
            continue
        listed = ", ".join(f"{g} ({v})" for g, v in missing.items())
        out.append(
            Issue(
                "production_rail_without_release_evidence",
                "critical",
                f"rail {st.rail_id}",
                f"production-enabled without passing release-gate evidence: {listed}; record "
                f"it (railproof record-release-gate-evidence --rail-id {st.rail_id} …) or "
                f"pause-rail {st.rail_id} and request-rail-production {st.rail_id} --disable",
                st.rail_id,
            )
        )
    return out


def audit_chain(sc: Scope) -> list[Issue]:
    chain = audit.verify_chain(sc.s)
    if chain.ok:
        return []
    return [
        Issue(
            "audit_chain_broken",
            "critical",
            f"audit event {chain.first_broken_id}",
            chain.message + "; restore from backup and investigate",
            str(chain.first_broken_id),
        )
    ]


Check = Callable[[Scope], list[Issue]]

# The report, in order. A new invariant is one function appended here.
CHECKS: list[Check] = [
    unsettled_active_entitlements,
    flagged_active_entitlements,
    receipts_without_active_entitlement,
    receipts_without_final_settlement,
    receipts_on_another_proof,
    entitlements_on_another_receipt,
    settlements_without_verified_attempt,
    transfers_claimed_twice,
    verified_without_receipt,
    pending_past_sla,
    uncredited_transfers,
    lapsed_leases,
    stuck_claims,
    production_rails_not_live,
    production_rails_without_release_evidence,
    audit_chain,
]


def _reconciliation(engine: Engine) -> list[Issue]:
    """The unresolved findings of the current reconciliation runs (of each (scope, rail): the
    latest complete whole-history run, and the latest finished run after it), and each such
    run that could not finish (its own transaction: read after the checks')."""
    return [
        Issue(
            i["category"],
            i["severity"] if i["severity"] in SEVERITIES else "warning",
            i["subject"],
            i["repair"],
            _digest(i["subject"]),
        )
        for i in reconciliation.assurance_issues(engine)
    ]


def _checked(
    engine: Engine, checks: Sequence[Check], period_days: int | None, limit: int | None
) -> list[Issue]:
    now, at = engine.now(), timeutil.process_now()
    window = timedelta(days=period_days) if period_days is not None else None
    issues: list[Issue] = []
    with engine.db.read() as s:  # a long walk (the audit chain): no writer waits for it
        sc = Scope(
            engine,
            s,
            now,
            at,
            now - window if window is not None else None,
            at - window if window is not None else None,
            limit,
        )
        for check in checks:
            issues += check(sc)
    return issues


def _issues(engine: Engine, period_days: int | None) -> list[Issue]:
    if period_days is not None and not 1 <= period_days <= MAX_PERIOD_DAYS:
        raise BadInput(
            "invalid_request",
            f"period_days: from 1 to {MAX_PERIOD_DAYS}",
            field="period_days",
        )
    return _checked(engine, CHECKS, period_days, LIMIT) + _reconciliation(engine)


def assurance_report(engine: Engine, period_days: int | None = None) -> dict[str, Any]:
    """The report; `period_days`: only rows made in that many days back (a lapsed lease, the
    audit chain, rail state and the latest reconciliation run are current state: always)."""
    issues = _issues(engine, period_days)
    score = max(0, 100 - sum(PENALTY[i.severity] for i in issues))
    worst = next((sev for sev in SEVERITIES if any(i.severity == sev for i in issues)), None)
    cut = {
        i.category: (sum(1 for j in issues if j.category == i.category and not j.total), i.total)
        for i in issues
        if i.total
    }
    return {
        "summary": {
            "status": worst if worst in ("critical", "error", "warning") else "ok",
            "score": score,
            # Every finding, listed or not (a `more` issue stands for the ones not listed).
            "alert_count": sum(1 for i in issues if not i.total)
            + sum(total - listed for listed, total in cut.values()),
            "period_days": period_days,
            "since": iso(engine.now() - timedelta(days=period_days)) if period_days else None,
            "truncated": [
                {"category": c, "listed": listed, "total": total}
                for c, (listed, total) in cut.items()
            ],
        },
        "issues": [i.as_dict() for i in issues],
    }


# -- repairs ---------------------------------------------------------------------------------


def _apply_through_gate(engine: Engine, issue: Issue, op: audit.Operator) -> dict[str, Any]:
    # The staff apply itself: every check of the gate, in one transaction, or nothing (a
    # standing blocker answers 409 apply_blocked with the report). The repair's audit row is
    # written in that transaction, and only when this apply credits.
    result = gate.apply(
        engine,
        str(issue.target),
        op,
        gate.Via.staff,
        on_credit=lambda s, done: _audit_repair(engine, s, issue, op, APPLIED, done),
    )
    if result["already_applied"]:
        # Credited after the issue was read (the worker's sweep, another staff member):
        # someone else's receipt, not this repair's, and nothing changed.
        raise Conflict("issue_resolved", f"proof {issue.target}: already applied")
    return result


def _requeue_lapsed(engine: Engine, issue: Issue, op: audit.Operator) -> dict[str, Any]:
    # What the worker does when it gives work back (worker.loop._release): the lease is
    # cleared and the proof is due at once, so the next sweep takes it.
    pid = str(issue.target)
    with engine.db.tx() as s:
        p = proof_repo.get(s, pid, lock=True)
        at = timeutil.process_now()
        if (
            p is None
            or p.claimed_by is None
            or p.claimed_until is None
            or utc(p.claimed_until) >= at
        ):
            raise Conflict("issue_resolved", f"proof {pid}: its lease is no longer lapsed")
        was = {"claimed_by": p.claimed_by, "claimed_until": iso(p.claimed_until)}
        p.claimed_by = p.claimed_until = None
        if p.status in (ProofStatus.pending, ProofStatus.verified):
            p.next_check_at = engine.now()
        _audit_repair(engine, s, issue, op, "requeued", was)
    return {"proof_id": pid, "released": was, "due": iso(engine.now())}


def _release_claim(engine: Engine, issue: Issue, op: audit.Operator) -> dict[str, Any]:
    # What the idempotency service does when a request is refused: the in-progress claim goes,
    # so the client's retry with the same key runs. The claim's record stays in the audit log.
    assert isinstance(issue.target, tuple)  # a stuck claim's issue names its primary key
    principal, endpoint, key = issue.target
    with engine.db.tx() as s:
        c = claim_repo.get(s, principal, endpoint, key)
        if c is None or c.status != ClaimStatus.in_progress:
            raise Conflict("issue_resolved", "the idempotency claim is no longer in progress")
        cutoff = timeutil.process_now() - timedelta(seconds=engine.settings.stuck_claim_seconds)
        if utc(c.created_at) >= cutoff:
            # SECURITY: the claim under this key is not the stuck one the issue named (it was
            # released and the client's retry claimed the key again): releasing it would let
            # the request run twice.
            raise Conflict("issue_resolved", "the idempotency claim is no longer stuck")
        claim = {
            "principal": principal,
            "endpoint": endpoint,
            "key": key,
            "request_hash": c.request_hash,
            "created_at": iso(c.created_at),
        }
        claim_repo.release_in_progress(s, principal, endpoint, key)
        _audit_repair(engine, s, issue, op, "released", claim)
    return {"released": claim}


def _audit_repair(
    engine: Engine,
    s: Session,
    issue: Issue,
    op: audit.Operator,
    action: str,
    data: Mapping[str, object],
) -> None:
    audit.append(
        s,
        engine.now(),
        op,
        "assurance.repaired",
        "assurance_issue",
        issue.id[:128],
        {"category": issue.category, "subject": issue.subject, "action": action, "data": data},
    )


APPLIED = "applied through the apply gate"


@dataclass(frozen=True)
class Repair:
    action: str  # what it does, as the answer says
    # Acts, and appends assurance.repaired in the transaction that acts.
    run: Callable[[Engine, Issue, audit.Operator], dict[str, Any]]
    check: Check  # the check that finds the category's issues


REPAIRS: dict[str, Repair] = {
    "verified_without_receipt": Repair(APPLIED, _apply_through_gate, verified_without_receipt),
    "claim_lease_lapsed": Repair("lease released, proof due now", _requeue_lapsed, lapsed_leases),
    "idempotency_claim_stuck": Repair("claim released", _release_claim, stuck_claims),
}


def _standing(engine: Engine, issue_id: str) -> Issue | None:
    """The standing issue `issue_id`, if any. A repairable category's check reads all its
    findings, since the issue may be one a report listed only in a narrow window (past the
    whole history's first `LIMIT`); an issue of another category is looked for in the report,
    to say it has no repair (as is a category's `more` issue, which a full read never has)."""
    category, _, key = issue_id.partition(":")
    how = REPAIRS.get(category) if key != "more" else None
    found = _checked(engine, [how.check], None, None) if how else _issues(engine, None)
    return next((i for i in found if i.id == issue_id), None)


def repair(engine: Engine, issue_id: str, confirm: bool, op: audit.Operator) -> dict[str, Any]:
    """Repair one standing issue by id with the staff action that fixes it."""
    if not confirm:
        raise BadInput(
            "confirmation_required", "confirm: must be true for this action", field="confirm"
        )
    audit.require_context(op, "for a repair")
    issue = _standing(engine, issue_id)
    if issue is None:
        raise NotFound(
            "assurance_issue_not_found",
            f"issue_id: no standing assurance issue {issue_id!r} (GET /v1/admin/assurance "
            "lists them)",
            field="issue_id",
        )
    how = REPAIRS.get(issue.category)
    if how is None or issue.target is None:
        raise Conflict(
            "issue_not_repairable",
            f"issue_id: {issue.category} has no automatic repair: {issue.repair}",
            field="issue_id",
        )
    result = how.run(engine, issue, op)
    return {
        "issue_id": issue.id,
        "category": issue.category,
        "subject": issue.subject,
        "action": how.action,
        "result": result,
    }


def refresh_gauges(engine: Engine) -> None:
    """Gauges computed from stored state at scrape time."""
    now = engine.now()
    with engine.db.tx() as s:
        # Only entitlements someone has paid for: an unpaid session's entitlement waits by design.
        oldest = entitlement_repo.oldest_paid_pending_since(s)
        flagged = findings.count_flagged_active_entitlements(s)
    age = (now - utc(oldest)).total_seconds() if oldest is not None else 0
    engine.metrics.set("pending_entitlement_age_seconds", max(0.0, age))
    engine.metrics.set("reorged_active_entitlements", flagged)
    from verifier.services.webhooks import refresh_webhook_gauges

    refresh_webhook_gauges(engine)
    reconciliation.refresh_drift_gauge(engine)
