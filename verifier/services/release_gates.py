"""Release gates: the evidence a rail must show before production enablement takes effect.

Five gates, each with its own kind of evidence:

- `kill_switch_drill` (drill): railproof runs it — pause the rail, show that a new session and
  a proof submission are refused with `rail_paused`, resume (unless the rail was paused before
  the drill, or someone asked for a pause during it: then it stays paused and the drill
  fails), and record what happened.
- `e2e_rehearsal` (rehearsal): the evidence file `railproof rehearse` writes, sent whole with
  its sha256; railproof recomputes the hash, checks the file shows every step the rehearsal
  runs passed, and keeps the hash, so the archived file can be matched to the record later.
- `alert_rule_integrity` (check): the rules file deployed to Prometheus, with its sha256;
  it must hold exactly the rules generated from the metric spec, and every generated rule
  must name a metric the spec exports.
- `rate_limit_review`, `provider_alerting_review` (attestation): a named staff member attests,
  with incident id and reason.

Evidence is append-only; a gate stands on its newest record, which counts for
`RAILPROOF_RELEASE_GATE_MAX_AGE_DAYS` (default 30; 0: no expiry).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy.orm import Session

from verifier.core.engine import Engine
from verifier.core.errors import BadInput, Conflict, EngineError, NotFound
from verifier.core.metrics import SPEC, alert_rules
from verifier.core.timeutil import iso, process_now, utc
from verifier.services import audit
from verifier.storage.release_gate_models import GateOutcome, ReleaseGateEvidence
from verifier.storage.repo import release_gates as repo

MAX_EVIDENCE_CHARS = 60_000  # under the API's 64 KiB body limit, with the envelope


@dataclass(frozen=True)
class Gate:
    name: str
    kind: str  # drill | rehearsal | check | attestation
    description: str


GATES: tuple[Gate, ...] = (
    Gate(
        "kill_switch_drill",
        "drill",
        "pause refuses new sessions and proofs; resume restores the rail",
    ),
    Gate(
        "e2e_rehearsal",
        "rehearsal",
        "a passing `railproof rehearse` evidence file, recorded by its sha256",
    ),
    Gate(
        "alert_rule_integrity",
        "check",
        "the deployed alert rules are the ones generated from the metric spec",
    ),
    Gate("rate_limit_review", "attestation", "rate-limit posture reviewed by a staff member"),
    Gate(
        "provider_alerting_review",
        "attestation",
        "RPC provider and facilitator alerting reviewed by a staff member",
    ),
)
BY_NAME = {g.name: g for g in GATES}


@dataclass(frozen=True)
class EvidenceIn:
    evidence: str | None = None  # the file's text (rehearsal, alert rules)
    evidence_sha256: str | None = None
    note: str | None = None


# -- standing ------------------------------------------------------------------------------


def _record_view(ev: ReleaseGateEvidence) -> dict[str, Any]:
    return {
        "evidence_id": ev.id,
        "rail_id": ev.rail_id,
        "gate": ev.gate,
        "outcome": ev.outcome,
        "evidence_sha256": ev.evidence_sha256,
        "detail": ev.detail,
        "recorded_by": ev.recorded_by,
        "incident_id": ev.incident_id,
        "operator_reason": ev.reason,
        "recorded_at": iso(ev.recorded_at),
    }


def _standing(engine: Engine, ev: ReleaseGateEvidence | None) -> str:
    if ev is None:
        return "missing"
    if ev.outcome != GateOutcome.passed:
        return "failed"
    max_age = engine.settings.release_gate_max_age_days
    if max_age and utc(engine.now()) - utc(ev.recorded_at) > timedelta(days=max_age):
        return "expired"
    return "passed"


def _known(engine: Engine, rail_id: str) -> None:
    if not engine.has_rail(rail_id):
        raise NotFound("rail_not_registered", f"no rail {rail_id!r}")


def gate_status(engine: Engine, rail_id: str, s: Session | None = None) -> dict[str, Any]:
    """Each gate of a rail with its standing (passed | failed | missing | expired) and the
    record it stands on; `complete` when every gate has passed. `s`: inside the caller's
    transaction."""
    _known(engine, rail_id)
    if s is None:
        with engine.db.tx() as own:
            newest = repo.newest_per_gate(own, rail_id)
    else:
        newest = repo.newest_per_gate(s, rail_id)
    gates = []
    for g in GATES:
        ev = newest.get(g.name)
        gates.append(
            {
                "gate": g.name,
                "kind": g.kind,
                "description": g.description,
                "status": _standing(engine, ev),
                "evidence": _record_view(ev) if ev else None,
            }
        )
    return {
        "rail_id": rail_id,
        "complete": all(g["status"] == "passed" for g in gates),
        "gates": gates,
    }


def incomplete_gates(engine: Engine, rail_id: str, s: Session | None = None) -> dict[str, str]:
    """The gates of a rail that do not stand passed, with their standing."""
    gates = gate_status(engine, rail_id, s)["gates"]
    return {g["gate"]: g["status"] for g in gates if g["status"] != "passed"}


def require_complete(engine: Engine, s: Session, rail_id: str) -> None:
    """In the approving transaction: refuse unless every gate stands passed."""
    # SECURITY: production enablement takes effect only on recorded, passing evidence.
    missing = incomplete_gates(engine, rail_id, s)
    if missing:
        listed = ", ".join(f"{k} ({v})" for k, v in missing.items())
        raise Conflict(
            "release_gates_incomplete",
            f"{rail_id}: release gates without passing evidence: {listed}",
            extra={"gates": missing},
        )


# -- recording -----------------------------------------------------------------------------


def record(
    engine: Engine,
    rail_id: str,
    gate: str,
    op: audit.Operator,
    given: EvidenceIn,
    confirm: bool = False,
) -> dict[str, Any]:
    _known(engine, rail_id)
    g = BY_NAME.get(gate)
    if g is None:
        raise NotFound(
            "release_gate_unknown", f"gate: no release gate {gate!r} ({', '.join(BY_NAME)})"
        )
    audit.require_context(op, "for release-gate evidence")
    sha: str | None = None
    if g.kind == "drill":
        if not confirm:
            raise BadInput(
                "confirmation_required",
                "confirm: must be true (the drill pauses the rail for its duration)",
                field="confirm",
            )
        passed, detail = _kill_switch_drill(engine, rail_id, op)
    elif g.kind == "rehearsal":
        text, sha = _hashed(given)
        passed, detail = _check_rehearsal(text, engine.settings.release_gate_max_age_days)
    elif g.kind == "check":
        text, sha = _hashed(given)
        passed, detail = _check_alert_rules(text)
    else:
        passed, detail = True, {"attested_by": op.actor, "note": given.note}
    with engine.db.tx() as s:
        ev = repo.add(
            s,
            ReleaseGateEvidence(
                rail_id=rail_id,
                gate=gate,
                outcome=GateOutcome.passed if passed else GateOutcome.failed,
                evidence_sha256=sha,
                detail=detail,
                recorded_by=op.actor,
                incident_id=op.incident_id,
                reason=op.reason,
                recorded_at=engine.now(),
            ),
        )
        audit.append(
            s,
            engine.now(),
            op,
            "release_gate.recorded",
            "rail",
            rail_id,
            {"gate": gate, "outcome": ev.outcome, "evidence_sha256": sha},
        )
        return _record_view(ev)


def history(engine: Engine, rail_id: str, limit: int = 50) -> list[dict[str, Any]]:
    _known(engine, rail_id)
    with engine.db.tx() as s:
        return [_record_view(ev) for ev in repo.history(s, rail_id, limit)]


def _hashed(given: EvidenceIn) -> tuple[str, str]:
    if not given.evidence:
        raise BadInput("evidence_required", "evidence: the evidence file's text", field="evidence")
    if len(given.evidence) > MAX_EVIDENCE_CHARS:
        raise BadInput(
            "evidence_too_large",
            f"evidence: at most {MAX_EVIDENCE_CHARS} characters",
            field="evidence",
        )
    sha = hashlib.sha256(given.evidence.encode()).hexdigest()
    if not given.evidence_sha256 or given.evidence_sha256.lower() != sha:
        # The operator names the hash of the file they archive; a mismatch means the text
        # that arrived is not that file.
        raise BadInput(
            "evidence_hash_mismatch",
            "evidence_sha256: does not match the sha256 of the evidence sent",
            field="evidence_sha256",
        )
    return given.evidence, sha


def _parse(text: str) -> object:
    # orjson stops at 1,024 levels. json.loads recurses in C down to the recursion limit, which
    # the EVM libraries raise to 100,000 once loaded: deep enough to overflow a thread's stack
    # and end the process, where the default limit gave a RecursionError.
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as e:
        raise BadInput("evidence_malformed", f"evidence: not JSON ({e})", field="evidence") from e


def _finished(doc: dict[str, Any]) -> datetime | None:
    try:
        return utc(datetime.fromisoformat(str(doc.get("finished_at"))))
    except ValueError:
        return None


# The steps `railproof rehearse` runs (verifier.tools.rehearse), in order; evidence must show
# each one passed. A file is not signed: the gate's second person, who approves the rail
# change, is what stands between one staff member and a hand-written file.
REHEARSAL_STEPS = (
    "alert_rules",
    "operator_commands",
    "migration_preflight",
    "migrate",
    "session",
    "proof",
    "verify",
    "finality",
    "dry_run",
    "apply",
    "entitlement_active",
    "apply_idempotent",
    "revoke",
    "rollback_session",
    "rollback_proof",
    "forced_rollback",
    "apply_after_rollback",
    "audit_chain",
    "assurance",
    "no_unhandled_errors",
)


def _check_rehearsal(text: str, max_age_days: int = 0) -> tuple[bool, dict[str, Any]]:
    """A rehearsal counts when every step it runs is there and passed, and it finished
    within the evidence's validity (process time: the file's timestamps are the wall clock's,
    whatever clock the deployment's business time runs on)."""
    doc = _parse(text)
    # Formats 1 and 2 (2 adds the operator context and the injected-fault outcome).
    if not isinstance(doc, dict) or doc.get("railproof_rehearsal") not in (1, 2):
        raise BadInput(
            "evidence_malformed",
            "evidence: not a `railproof rehearse` evidence file",
            field="evidence",
        )
    raw_steps = doc.get("steps")
    steps: list[object] = raw_steps if isinstance(raw_steps, list) else []
    # A step that is not an object is not a step that passed.
    failed = [
        s.get("name") if isinstance(s, dict) else None
        for s in steps
        if not isinstance(s, dict) or s.get("ok") is not True
    ]
    # SECURITY: `{"ok": true, "steps": [{"name": "anything", "ok": true}]}` rehearsed nothing.
    ran = {
        s["name"]
        for s in steps
        if isinstance(s, dict) and s.get("ok") is True and isinstance(s.get("name"), str)
    }
    missing = [name for name in REHEARSAL_STEPS if name not in ran]
    finished = _finished(doc)
    # SECURITY: an old rehearsal file recorded again must not stand for another period.
    too_old = finished is None or (
        max_age_days > 0 and process_now() - finished > timedelta(days=max_age_days)
    )
    passed = doc.get("ok") is True and not missing and not failed and not too_old
    return passed, {
        "too_old_or_undated": too_old,
        "rehearsal_ok": doc.get("ok") is True,
        "steps": len(steps),
        "failed_steps": failed,
        "missing_steps": missing,
        "started_at": doc.get("started_at"),
        "finished_at": doc.get("finished_at"),
        "rehearsal_operator": doc.get("operator")
        if isinstance(doc.get("operator"), dict)
        else None,
    }


_METRIC = re.compile(r"\brailproof_[a-z0-9_]+")
_SUFFIXES = ("_bucket", "_sum", "_count")


def _base_metric(name: str, exported: set[str]) -> str:
    """A histogram's series (`_bucket`, `_sum`, `_count`) belong to the metric they extend."""
    for suffix in _SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in exported:
            return name[: -len(suffix)]
    return name


def spec_metric_problems(rules: dict[str, Any]) -> list[str]:
    """Rules whose expression names no metric of the spec, or one it does not export."""
    exported = {s.full_name for s in SPEC}
    problems = []
    for group in rules.get("groups", []):
        for rule in group.get("rules", []):
            names = set(_METRIC.findall(str(rule.get("expr", ""))))
            bases = {_base_metric(n, exported) for n in names}
            if not bases:
                problems.append(f"{rule.get('alert')}: names no railproof metric")
            for b in sorted(bases - exported):
                problems.append(f"{rule.get('alert')}: {b} is not in the metric spec")
    return problems


def _rule_key(rule: dict[str, Any]) -> tuple[str, str, str, str]:
    labels = rule.get("labels")
    labels = labels if isinstance(labels, dict) else {}  # any JSON may arrive here
    return (
        str(rule.get("alert")),
        " ".join(str(rule.get("expr", "")).split()),
        str(rule.get("for", "")),
        str(labels.get("severity", "")),
    )


def _check_alert_rules(text: str) -> tuple[bool, dict[str, Any]]:
    deployed = _parse(text)
    if not isinstance(deployed, dict) or not isinstance(deployed.get("groups"), list):
        raise BadInput(
            "evidence_malformed",
            "evidence: not a Prometheus rules document (`railproof alerts generate`)",
            field="evidence",
        )
    expected = alert_rules()

    def keys(doc: dict[str, Any]) -> set[tuple[str, str, str, str]]:
        return {
            _rule_key(r)
            for g in doc.get("groups", [])
            if isinstance(g, dict) and isinstance(g.get("rules"), list)
            for r in g["rules"]
            if isinstance(r, dict)
        }

    want, have = keys(expected), keys(deployed)
    missing = sorted(k[0] for k in want - have)
    unexpected = sorted(k[0] for k in have - want)
    problems = spec_metric_problems(expected)
    return not (missing or unexpected or problems), {
        "rules_expected": len(want),
        "rules_deployed": len(have),
        "missing_or_changed": missing,
        "not_generated": unexpected,
        "spec_problems": problems,
    }


def _kill_switch_drill(
    engine: Engine, rail_id: str, op: audit.Operator
) -> tuple[bool, dict[str, Any]]:
    """Pause, try what the kill switch must refuse, resume; what happened is the evidence."""
    from verifier.services import proofs, rails_admin, sessions

    # Cut to the longest reason an action takes: the operator's own may be that long already.
    reason = f"release-gate drill: {op.reason}"[: audit.MAX_OPERATOR_REASON]
    drill_op = audit.Operator(op.actor, op.incident_id, reason)
    with engine.db.tx() as s:
        # The mark first: a pause committed after it is either seen here or counted later.
        mark = repo.newest_audit_id(s)
        was_paused = engine.rail_state_read(s, rail_id).paused
        session_id = repo.newest_session_id(s, rail_id)

    def outcome(fn: Callable[[], object]) -> str:
        try:
            fn()
        except EngineError as e:
            return e.code
        return "accepted"

    if not was_paused:
        rails_admin.set_paused(engine, rail_id, True, drill_op)
    try:
        session_refusal = outcome(
            lambda: sessions.open_session(
                engine,
                sessions.NewSession(
                    owner_id="release-gate-drill",
                    rail_id=rail_id,
                    access_product_id="release-gate-drill",
                    amount=1,
                ),
                op.actor,
            )
        )
        proof_refusal = (
            outcome(
                lambda: proofs.submit_proof(
                    engine, session_id, "release-gate-drill", None, actor=op.actor
                )
            )
            if session_id
            else None
        )
    finally:
        if not was_paused:
            # SECURITY: a pause asked for during the drill (an incident, another drill) stands:
            # only the drill's own pause is lifted. The drill then fails (paused_after).
            rails_admin.set_paused(
                engine,
                rail_id,
                False,
                drill_op,
                keep_paused=lambda s: repo.pauses_after(s, rail_id, mark) > 1,
            )
    with engine.db.tx() as s:
        paused_after = engine.rail_state_read(s, rail_id).paused
    passed = (
        session_refusal == "rail_paused"
        and proof_refusal in ("rail_paused", None)
        and paused_after == was_paused
    )
    return passed, {
        "was_paused": was_paused,
        "session_refusal": session_refusal,
        # None: the rail has no session yet to submit a proof to; the same kill-switch check
        # guards both paths, and the session path was exercised.
        "proof_refusal": proof_refusal,
        "proof_session_id": session_id,
        "paused_after": paused_after,
    }
