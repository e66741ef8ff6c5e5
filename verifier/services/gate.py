"""The apply gate: where a verified payment becomes a receipt and an active entitlement.

`dry_run_apply` evaluates every check and reports all of them (never stopping at the first);
`apply` evaluates the same checks inside one transaction and then creates the receipt,
activates the entitlement, marks the session paid and writes the audit events — or, on any
blocker or error, does nothing at all. A blocker's code is the name of the check that failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy.orm import Session

from rails.codes import FailureCode
from registry.catalog import Stage
from verifier.core.engine import Engine
from verifier.core.errors import BadInput, Conflict, NotFound, Refused
from verifier.core.timeutil import epoch_of, utc
from verifier.services import audit, events
from verifier.services.proofs import latest_settlement, latest_verified_attempt, load_proof
from verifier.services.views import entitlement_view, receipt_view
from verifier.storage.models import (
    Entitlement,
    EntitlementStatus,
    PaymentSession,
    Proof,
    ProofStatus,
    RailState,
    Receipt,
    SessionStatus,
    SettlementEvidence,
)
from verifier.storage.repo import entitlements as entitlement_repo
from verifier.storage.repo import proofs as proof_repo
from verifier.storage.repo import receipts as receipt_repo
from verifier.storage.repo import sessions as session_repo
from verifier.storage.repo.rows import Record

# A depth-final EVM/Tron settlement can still leave the canonical chain (a deep reorg, a node
# that answered wrongly). Once a receipt depends on it, the worker re-checks it every
# REORG_RECHECK for REORG_WATCH after the receipt, so a reorg under an active entitlement is
# flagged. Commitment-final (Solana `finalized`) settlements are irreversible: not watched.
REORG_RECHECK = timedelta(minutes=10)
REORG_WATCH = timedelta(hours=6)


def watches_reorgs(engine: Engine, rail_id: str) -> bool:
    rail_def = engine.catalog.rails.get(rail_id)
    return rail_def is not None and rail_def.finality.mode == "depth"


class Via(StrEnum):
    auto = "auto"  # the service or worker, no human in the loop
    staff = "staff"  # a staff member applying (POST /v1/admin/proofs/{id}/apply)
    staff_receipt = "staff_receipt"  # staff receipt creation (POST …/receipt): gated rails' path


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class _Rows:
    """The rows the checks read, for the report and the apply that follow them."""

    settlement: SettlementEvidence | None = None
    session: PaymentSession | None = None
    entitlement: Entitlement | None = None
    receipt: Receipt | None = None


def _evaluate(
    engine: Engine, s: Session, p: Proof, via: Via, st: RailState | Record | None = None
) -> tuple[list[Check], _Rows]:
    """`st`: the rail's state when the caller has read it (apply: under its share lock)."""
    settings = engine.settings
    checks: list[Check] = []
    add = lambda name, ok, detail: checks.append(Check(name, bool(ok), detail))  # noqa: E731
    ctx = _Rows()

    add(
        "proof_verified",
        p.status == ProofStatus.verified,
        f"status {p.status}" + (f" ({p.failure_code})" if p.failure_code else ""),
    )

    ev = latest_settlement(s, p.id)
    ctx.settlement = ev
    if ev is None:
        add("settlement_final", False, "no settlement evidence")
    elif ev.reorged:
        add(
            "settlement_final",
            False,
            f"{FailureCode.reorged}: the transfer left the canonical chain",
        )
    else:
        rail_def = engine.catalog.rails.get(p.rail_id)
        want = (
            rail_def.finality.level or f"{rail_def.finality.confirmations} confirmations"
            if rail_def
            else "final"
        )
        add(
            "settlement_final",
            ev.is_final,
            f"{ev.finality}"
            if ev.is_final
            else f"{FailureCode.not_final}: {ev.finality}; {want} required",
        )

    registered = engine.has_rail(p.rail_id)
    add("rail_registered", registered, p.rail_id if registered else "not in the catalog")
    stage = engine.catalog.rails[p.rail_id].stage if registered else None
    if st is None and registered:
        st = engine.rail_state(s, p.rail_id)
    add(
        "rail_not_paused",
        st is not None and not st.paused,
        "paused (kill switch)" if st is not None and st.paused else "running",
    )
    prod = st is not None and engine.production_enabled(st)
    add(
        "rail_production_enabled",
        prod,
        "enabled" if prod else f"not production-enabled (stage {stage})",
    )
    allow = p.rail_id in settings.apply_rail_allowlist
    add(
        "rail_allowlisted",
        allow,
        "in RAILPROOF_APPLY_RAIL_ALLOWLIST" if allow else "not in RAILPROOF_APPLY_RAIL_ALLOWLIST",
    )
    if stage is Stage.live:
        add("live_apply_enabled", True, "not required for a live rail")
    else:
        add(
            "live_apply_enabled",
            settings.live_apply,
            "RAILPROOF_LIVE_APPLY=1"
            if settings.live_apply
            else f"stage {stage}: RAILPROOF_LIVE_APPLY is off",
        )
    add(*_receipt_creation(engine, p.rail_id, stage, via))
    ok, detail = _tuple_bound(engine, s, p, ctx)
    add("tuple_bound", ok, detail)
    return checks, ctx


def _receipt_creation(engine: Engine, rail_id: str, stage: Stage | None, via: Via):
    if stage is Stage.live:
        return "receipt_creation_allowed", True, "automatic for a live rail"
    if stage is Stage.gated:
        listed = rail_id in engine.settings.receipt_creation_rails
        if via is not Via.staff_receipt:
            return (
                "receipt_creation_allowed",
                False,
                "gated rail: receipts only through "
                "the staff receipt path (POST /v1/admin/proofs/{id}/receipt)",
            )
        return (
            "receipt_creation_allowed",
            listed,
            "staff path, rail in RAILPROOF_RECEIPT_CREATION_RAILS"
            if listed
            else "gated rail not in RAILPROOF_RECEIPT_CREATION_RAILS",
        )
    # SECURITY: review_only rails never create receipts, whatever the flags say.
    return "receipt_creation_allowed", False, f"stage {stage}: never creates receipts"


def _tuple_bound(engine: Engine, s: Session, p: Proof, ctx: _Rows) -> tuple[bool, str]:
    """proof ↔ session ↔ owner ↔ product ↔ receipt all agree, and the chain paid what the
    session asked, to whom it asked, on its rail."""
    ps = session_repo.get(s, p.session_id)
    ent = entitlement_repo.for_session(s, p.session_id)
    ctx.session, ctx.entitlement = ps, ent
    problems = []
    if ps is None:
        return False, "session missing"
    if ps.owner_id != p.owner_id:
        problems.append("proof owner differs from session owner")
    if ps.rail_id != p.rail_id:
        problems.append("proof rail differs from session rail")
    if ent is None or ent.owner_id != ps.owner_id or ent.access_product_id != ps.access_product_id:
        problems.append("entitlement does not match session owner/product")
    receipt_for_session = receipt_repo.for_session(s, ps.id)
    receipt_for_proof = receipt_repo.for_proof(s, p.id)
    ctx.receipt = receipt_for_proof
    if receipt_for_session is not None and receipt_for_session.proof_id != p.id:
        problems.append("session already paid by another proof")
    if receipt_for_proof is not None and receipt_for_proof.session_id != ps.id:
        problems.append("proof already backs another session")
    if ps.status != SessionStatus.open and not (
        ps.status == SessionStatus.paid and receipt_for_proof is not None
    ):
        problems.append(f"session is {ps.status}")
    att = latest_verified_attempt(s, p.id)
    if att is None:
        problems.append("no verified attempt")
    else:
        obs = att.observed or {}
        if str(obs.get("amount")) != str(ps.amount):
            problems.append(f"observed amount {obs.get('amount')} != session {ps.amount}")
        rcpt = str(obs.get("recipient") or "")
        if rcpt.lower() != ps.recipient.lower():
            problems.append("observed recipient differs from session recipient")
        # SECURITY: a session that names its payer binds the transfer's sender.
        if ps.payer and str(obs.get("sender") or "").lower() != ps.payer.lower():
            problems.append("observed sender differs from the session's payer")
        bt = epoch_of(obs.get("block_time"))
        if bt is not None:
            # Chain times are whole seconds: compare at that resolution, as the adapters do.
            if not int(utc(ps.created_at).timestamp()) <= bt <= utc(ps.expires_at).timestamp():
                problems.append("transfer time outside the session window")
    if problems:
        return False, "; ".join(problems)
    return True, "owner, session, product, amount, recipient and rail agree"


def _report(p: Proof, checks: list[Check], ctx: _Rows) -> dict[str, Any]:
    blockers = [{"code": c.name, "detail": c.detail} for c in checks if not c.passed]
    applied = ctx.receipt is not None
    ent = ctx.entitlement
    would = not blockers and not applied
    return {
        "proof_id": p.id,
        "rail_id": p.rail_id,
        "would_apply": would,
        "would_create_receipt": would,
        "would_activate_entitlement": would
        and ent is not None
        and ent.status == EntitlementStatus.pending,
        "already_applied": applied,
        "checks": [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in checks],
        "blockers": blockers,
    }


def dry_run_apply(
    engine: Engine, proof_id: str, op: audit.Operator | None = None, via: Via = Via.staff
) -> dict[str, Any]:
    """Every check, reported; nothing changes (staff calls are audited with their context)."""
    with engine.db.tx() as s:
        p = load_proof(engine, s, proof_id, None)
        checks, ctx = _evaluate(engine, s, p, via)
        report = _report(p, checks, ctx)
        if op is not None:
            audit.append(
                s,
                engine.now(),
                op,
                "proof.dry_run_apply",
                "proof",
                p.id,
                {
                    "would_apply": report["would_apply"],
                    "blockers": [b["code"] for b in report["blockers"]],
                },
            )
    return report


def apply(
    engine: Engine, proof_id: str, op: audit.Operator, via: Via = Via.staff
) -> dict[str, Any]:
    """Apply inside one transaction. Idempotent: an applied proof returns its receipt again."""
    with engine.db.tx() as s:
        # SECURITY: the rail's state first, under its share lock (Engine.rail_state_read), so
        # a pause either waits for this apply to commit or is seen by it: no receipt commits
        # after the pause has answered. First, before the proof's and the session's row locks
        # and the audit chain's lock, as on every path that takes it: a pause takes the rail
        # state's table lock, the rail's row, then the audit lock, and only waits on
        # transactions that already hold their rail-state lock, so no wait closes a cycle.
        rail_id = proof_repo.rail_id_of(s, proof_id)
        if rail_id is None:
            raise NotFound("proof_not_found", f"no proof {proof_id!r}")
        st = engine.rail_state_read(s, rail_id) if engine.has_rail(rail_id) else None
        # Then the proof's row and its session's, locked in that order (PostgreSQL).
        p = proof_repo.get(s, proof_id, lock=True)
        assert p is not None  # a proof row is never deleted
        ps = session_repo.get(s, p.session_id, lock=True)
        assert ps is not None  # nor its session (foreign key)
        checks, ctx = _evaluate(engine, s, p, via, st)
        report = _report(p, checks, ctx)
        if ctx.receipt is not None:
            r = ctx.receipt
            ent = ctx.entitlement
            return {
                "applied": True,
                "already_applied": True,
                "receipt_id": r.id,
                "entitlement_id": ent.id if ent else None,
            }
        if report["blockers"]:
            blocked = report
        else:
            blocked = None
            now = engine.now()
            ev = ctx.settlement
            assert ev is not None  # settlement_final passed
            r = Receipt(
                proof_id=p.id,
                session_id=ps.id,
                settlement_id=ev.id,
                owner_id=ps.owner_id,
                access_product_id=ps.access_product_id,
                rail_id=ps.rail_id,
                amount=ps.amount,
                created_by=op.actor,
                created_at=now,
            )
            receipt_repo.add(s, r)
            if engine.fail_after_receipt_insert:
                raise RuntimeError("injected failure after receipt insert")
            ent = ctx.entitlement
            assert ent is not None  # tuple_bound passed
            ent.status = EntitlementStatus.active
            ent.receipt_id = r.id
            ent.updated_at = now
            ps.status = SessionStatus.paid
            ps.paid_at = now
            if watches_reorgs(engine, p.rail_id):
                p.next_check_at = now + REORG_RECHECK
            audit.append(
                s,
                now,
                op,
                "receipt.created",
                "receipt",
                r.id,
                {"proof_id": p.id, "session_id": ps.id, "amount": str(ps.amount)},
            )
            audit.append(
                s,
                now,
                op,
                "entitlement.activated",
                "entitlement",
                ent.id,
                {"receipt_id": r.id, "owner_id": ent.owner_id, "product": ent.access_product_id},
            )
            audit.append(
                s, now, op, "proof.applied", "proof", p.id, {"receipt_id": r.id, "via": via.value}
            )
            events.emit(s, now, "receipt.created", r.owner_id, "receipt", r.id, receipt_view(r))
            events.emit(
                s,
                now,
                "entitlement.activated",
                ent.owner_id,
                "entitlement",
                ent.id,
                entitlement_view(ent),
            )
            result = {
                "applied": True,
                "already_applied": False,
                "receipt_id": r.id,
                "entitlement_id": ent.id,
            }
    if blocked is not None:
        for b in blocked["blockers"]:
            engine.metrics.inc("apply_gate_blocks_total", rail_id=p.rail_id, blocker=b["code"])
        raise Refused(
            "apply_blocked",
            "apply gate blocked: " + ", ".join(b["code"] for b in blocked["blockers"]),
            extra={"report": blocked},
        )
    engine.metrics.inc("receipts_total", rail_id=p.rail_id)
    return result


def revoke(engine: Engine, entitlement_id: str, op: audit.Operator) -> dict[str, Any]:
    if not op.incident_id or not op.reason:
        raise BadInput(
            "operator_context_required",
            "incident_id and operator_reason: required to revoke",
            field="incident_id",
        )
    with engine.db.tx() as s:
        ent = entitlement_repo.get_locked(s, entitlement_id)
        if ent is None:
            raise NotFound("entitlement_not_found", f"no entitlement {entitlement_id!r}")
        if ent.status != EntitlementStatus.active:
            raise Conflict(
                "entitlement_not_active",
                f"entitlement is {ent.status}; only an active entitlement can be revoked",
            )
        ent.status = EntitlementStatus.revoked
        ent.updated_at = engine.now()
        audit.append(
            s,
            engine.now(),
            op,
            "entitlement.revoked",
            "entitlement",
            ent.id,
            {"receipt_id": ent.receipt_id},
        )
        events.emit(
            s,
            engine.now(),
            "entitlement.revoked",
            ent.owner_id,
            "entitlement",
            ent.id,
            entitlement_view(ent),
        )
        return {"id": ent.id, "status": ent.status, "receipt_id": ent.receipt_id}
