"""Staff actions on rails: kill switch, two-person approvals, readiness, contracts."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session

from rails import proof_fields
from rails.errors import ProofMalformed
from registry.catalog import Stage
from registry.contracts import proof_contracts
from registry.readiness import DeploymentConfig, StoredState, readiness
from verifier.core.engine import Engine
from verifier.core.errors import BadInput, Conflict, Forbidden, NotFound
from verifier.core.timeutil import iso, utc
from verifier.services import audit, events, release_gates
from verifier.services.views import View
from verifier.storage.models import Approval, ApprovalStatus
from verifier.storage.repo import approvals as approval_repo
from verifier.storage.repo import rail_state as rail_state_repo

log = logging.getLogger("railproof.rails_admin")


def _known(engine: Engine, rail_id: str) -> None:
    if not engine.has_rail(rail_id):
        raise NotFound("rail_not_registered", f"no rail {rail_id!r}")


def list_rails(engine: Engine) -> list[dict[str, Any]]:
    with engine.db.tx() as s:
        out = []
        for rail_id, d in engine.catalog.rails.items():
            st = engine.rail_state(s, rail_id)
            rail = engine.rail(rail_id)
            out.append(
                {
                    "rail_id": rail_id,
                    "family": d.family,
                    "stage": d.stage.value,
                    "network": rail.network,
                    "asset": rail.asset,
                    "asset_symbol": d.asset_symbol,
                    "decimals": d.decimals,
                    "proof_types": list(d.proof_types),
                    "production_enabled": engine.production_enabled(st),
                    "paused": st.paused,
                    "treasury": st.treasury or rail.treasury,
                }
            )
        return out


def rail_readiness(engine: Engine) -> list[dict[str, Any]]:
    with engine.db.tx() as s:
        states = {
            r.rail_id: StoredState(r.production_enabled, r.paused)
            for r in rail_state_repo.all_states(s)
        }
    out = readiness(engine.catalog, states, deployment(engine))
    for row in out:
        # Shown beside the blockers: production enablement waits on these (approve refuses).
        row["release_gates"] = {
            g["gate"]: g["status"]
            for g in release_gates.gate_status(engine, row["rail_id"])["gates"]
        }
    return out


def deployment(engine: Engine) -> DeploymentConfig:
    """What the deployment configures, as registry's pure readiness and contracts read it:
    one fact for both (a rail claims live verification only where readiness agrees)."""
    st = engine.settings
    networks = {rid: engine.rail(rid).network for rid in engine.catalog.rails}
    cfg = DeploymentConfig(
        chain_mode=st.chain,
        rpc_networks=frozenset(n for n in set(networks.values()) if st.rpc_urls(n)),
        apply_allowlist=frozenset(st.apply_rail_allowlist),
        receipt_creation_rails=frozenset(st.receipt_creation_rails),
        live_apply=st.live_apply,
        networks=networks,
        rpc_policies={
            n: {**st.rpc_policy(n).model_dump(), "submit_budget_s": st.submit_verify_budget_s}
            for n in set(networks.values())
        },
    )
    return cfg


def contracts(engine: Engine, rail_id: str | None = None) -> list[dict[str, Any]]:
    if rail_id:
        _known(engine, rail_id)
    return proof_contracts(
        engine.catalog, rail_id, proof_fields=proof_fields(engine.catalog), cfg=deployment(engine)
    )


def set_paused(
    engine: Engine,
    rail_id: str,
    paused: bool,
    op: audit.Operator,
    keep_paused: Callable[[Session], bool] | None = None,
) -> dict[str, Any]:
    """`keep_paused(s)`: asked under the rail's lock before a resume; true leaves the rail
    paused (the release-gate drill's resume must not lift a pause someone else asked for)."""
    _known(engine, rail_id)
    audit.require_context(op, "to pause or resume")
    with engine.db.tx() as s:
        # SECURITY: FOR UPDATE on the rail's row, first in this transaction: it waits for every
        # session, proof and apply holding the row FOR SHARE (Engine.rail_state_read) to
        # commit, and makes those that come later wait and then see the pause. So once this
        # answers, nothing of the rail commits that read it running.
        # On PostgreSQL behind the rail state's table lock, which is queued where a row lock
        # is not (storage.repo.rail_state.lock_for_pause): pauses are rare and the readers'
        # transactions short.
        rail_state_repo.lock_for_pause(s)
        st = engine.rail_state(s, rail_id, lock=True)
        if not paused and keep_paused is not None and keep_paused(s):
            # SECURITY: decided under the lock every pause takes, so no pause slips between.
            return {"rail_id": rail_id, "paused": st.paused, "changed": False}
        changed = st.paused != paused
        st.paused = paused
        st.updated_at, st.updated_by = engine.now(), op.actor
        audit.append(
            s,
            engine.now(),
            op,
            "rail.paused" if paused else "rail.resumed",
            "rail",
            rail_id,
            {"changed": changed},
        )
        if changed:
            events.emit(
                s,
                engine.now(),
                "rail.paused" if paused else "rail.resumed",
                None,
                "rail",
                rail_id,
                {"rail_id": rail_id, "paused": paused, "updated_at": iso(st.updated_at)},
            )
    return {"rail_id": rail_id, "paused": paused, "changed": changed}


def _approval_view(a: Approval) -> dict[str, Any]:
    return {
        "approval_id": a.id,
        "rail_id": a.rail_id,
        "kind": a.kind,
        "value": a.value,
        "status": a.status,
        "requested_by": a.requested_by,
        "approved_by": a.approved_by,
        "incident_id": a.incident_id,
        "reason": a.reason,
        "created_at": iso(a.created_at),
        "decided_at": iso(a.decided_at),
    }


approval_view = _approval_view  # the staff reads (services.queries) show approvals the same way


def request_change(
    engine: Engine, rail_id: str, kind: str, value: str, op: audit.Operator
) -> dict[str, Any]:
    _known(engine, rail_id)
    audit.require_context(op, "to request a change")
    stage = engine.catalog.rails[rail_id].stage
    if kind == "production" and value == "true" and stage is Stage.review_only:
        # SECURITY: review_only rails can never be production-enabled, not even by two people.
        raise Conflict(
            "review_only_rail", f"{rail_id} is review_only and can never be production-enabled"
        )
    if kind == "treasury":
        try:
            value = engine.adapter(engine.rail(rail_id)).normalize_address(value, "treasury")
        except ProofMalformed as e:
            raise BadInput("invalid_treasury", str(e), field="treasury") from e
    with engine.db.tx() as s:
        a = Approval(
            rail_id=rail_id,
            kind=kind,
            value=value,
            requested_by=op.actor,
            incident_id=op.incident_id,
            reason=op.reason,
            created_at=engine.now(),
        )
        approval_repo.add(s, a)
        audit.append(
            s,
            engine.now(),
            op,
            "approval.requested",
            "approval",
            a.id,
            {"rail_id": rail_id, "kind": kind, "value": value},
        )
        return _approval_view(a)


def approve(engine: Engine, approval_id: str, op: audit.Operator) -> dict[str, Any]:
    audit.require_context(op, "to approve a request")
    try:
        return _approve(engine, approval_id, op)
    except Forbidden as e:
        _self_decision_refused(engine, approval_id, op, "approve", e)
        raise


def _approve(engine: Engine, approval_id: str, op: audit.Operator) -> View:
    with engine.db.tx() as s:
        # SECURITY: the rail state's table lock first, then the approval's row, the rail's
        # row and the audit chain's lock, as a pause takes them (`set_paused`). Without the
        # table lock, the FOR UPDATE on the rail's row has no queue: under steady traffic
        # (sessions, proofs and applies reading it FOR SHARE) disabling production or
        # changing the treasury would wait past the statement timeout while the rail kept
        # crediting. Queued, it waits only for the transactions already reading the rail.
        rail_state_repo.lock_for_pause(s)
        a = approval_repo.get_locked(s, approval_id)
        if a is None:
            raise NotFound("approval_not_found", f"no approval {approval_id!r}")
        if a.status != ApprovalStatus.pending:
            raise Conflict("approval_decided", f"approval is already {a.status}")
        if a.requested_by == op.actor:
            # SECURITY: two-person rule: the requester cannot approve their own change.
            raise Forbidden("two_person_rule", "the requester cannot approve their own request")
        if a.requested_by not in engine.settings.staff_tokens.values():
            # SECURITY: two people on the staff list agree, at the time it takes effect: a
            # request left pending by someone since removed (left, token revoked) is not one.
            raise Conflict(
                "requester_not_staff",
                f"{a.requested_by!r} is no longer on the staff list: reject this request "
                "and ask for the change again",
            )
        age = timedelta(seconds=engine.settings.approval_max_age_seconds)
        if engine.now() - utc(a.created_at) > age:
            # SECURITY: a second person agrees to a change as it stands now. A request left
            # pending for weeks (a treasury typed then, a production switch for a rail since
            # changed) approved in passing would redirect or release money on a stale word.
            raise Conflict(
                "approval_expired",
                f"requested at {iso(a.created_at)}, more than "
                f"RAILPROOF_APPROVAL_MAX_AGE_SECONDS ({age.total_seconds():g} s) ago: reject "
                "this request and ask for the change again",
            )
        if a.kind == "production" and a.value == "true":
            release_gates.require_complete(engine, s, a.rail_id)
        a.status, a.approved_by, a.decided_at = ApprovalStatus.approved, op.actor, engine.now()
        st = engine.rail_state(s, a.rail_id, lock=True)
        if a.kind == "production":
            st.production_enabled = a.value == "true"
        else:
            st.treasury = a.value
        st.updated_at, st.updated_by = engine.now(), op.actor
        audit.append(
            s,
            engine.now(),
            op,
            "approval.approved",
            "approval",
            a.id,
            {
                "rail_id": a.rail_id,
                "kind": a.kind,
                "value": a.value,
                "requested_by": a.requested_by,
            },
        )
        return _approval_view(a)


def reject(engine: Engine, approval_id: str, op: audit.Operator) -> dict[str, Any]:
    """Refuse a pending change: nothing of it takes effect. Decided by another staff member
    (as approval is), with incident id and reason on the record."""
    audit.require_context(op, "to reject a request")
    try:
        return _reject(engine, approval_id, op)
    except Forbidden as e:
        _self_decision_refused(engine, approval_id, op, "reject", e)
        raise


def _self_decision_refused(
    engine: Engine, approval_id: str, op: audit.Operator, decision: str, e: Forbidden
) -> None:
    """The audit row of a refused attempt to decide one's own request. The decision's own
    transaction rolled back with the refusal, so this one is written in a transaction of its
    own: the attempt stays on the record."""
    # SECURITY: an attempt at passing the two-person rule is what an audit must show; the
    # refusal stands whether or not its row could be written (then the log says so).
    try:
        _append_refusal(engine, approval_id, op, decision, e)
    except Exception:
        log.exception("could not audit a refused self-decision", extra={"approval_id": approval_id})


def _append_refusal(
    engine: Engine, approval_id: str, op: audit.Operator, decision: str, e: Forbidden
) -> None:
    with engine.db.tx() as s:
        audit.append(
            s,
            engine.now(),
            op,
            "approval.self_decision_refused",
            "approval",
            approval_id,
            {"decision": decision, "code": e.code},
        )


def _reject(engine: Engine, approval_id: str, op: audit.Operator) -> View:
    with engine.db.tx() as s:
        a = approval_repo.get_locked(s, approval_id)
        if a is None:
            raise NotFound("approval_not_found", f"no approval {approval_id!r}")
        if a.status != ApprovalStatus.pending:
            raise Conflict("approval_decided", f"approval is already {a.status}")
        if a.requested_by == op.actor:
            # SECURITY: the two-person rule decides both ways (the database holds it too).
            raise Forbidden("two_person_rule", "another staff member decides on this request")
        a.status, a.approved_by, a.decided_at = ApprovalStatus.rejected, op.actor, engine.now()
        audit.append(
            s,
            engine.now(),
            op,
            "approval.rejected",
            "approval",
            a.id,
            {
                "rail_id": a.rail_id,
                "kind": a.kind,
                "value": a.value,
                "requested_by": a.requested_by,
            },
        )
        return _approval_view(a)


def list_approvals(engine: Engine) -> list[dict[str, Any]]:
    with engine.db.tx() as s:
        return [_approval_view(a) for a in approval_repo.newest_first(s)]
