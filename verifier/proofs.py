"""Proofs: submission (shape, fingerprint, replay rules), verification attempts, settlement
evidence and reads.

Replay rules (the fingerprint leaves the owner out on purpose):
- same fingerprint, same owner, same session → the existing proof (idempotent, no new row);
- same fingerprint, another owner → proof_owner_conflict, audited and counted;
- same fingerprint, same owner, another session → duplicate_payment (one transfer, one session).
"""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import orjson
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from rails.base import Settlement, Status, Terms, Verdict, fingerprint
from rails.codes import FailureCode
from rails.errors import ProofMalformed
from verifier import audit, events
from verifier.engine import Engine
from verifier.errors import BadInput, Conflict, NotFound, Refused
from verifier.sessions import load_session
from verifier.storage.models import (
    PaymentSession,
    Proof,
    ProofStatus,
    Receipt,
    SessionStatus,
    SettlementEvidence,
    VerificationAttempt,
)
from verifier.timeutil import utc
from verifier.views import attempt_view, evidence_view, proof_view

MAX_PROOF_BYTES = 16_384
SYSTEM = audit.Operator("system")


def submit_proof(engine: Engine, session_id: str, proof: Any, owners: list[str] | None,
                 proof_type: str | None = None, actor: str = "service",
                 verify: bool = True) -> tuple[dict[str, Any], bool]:
    """Returns (proof view, created)."""
    raw = _raw_proof(proof)
    try:
        return _submit(engine, session_id, raw, owners, proof_type, actor, verify)
    except _OwnerConflict as c:
        # Refused, but on the record: the audit row is written in a transaction of its own.
        engine.metrics.inc("owner_isolation_denials_total", reason="proof_owner_conflict")
        with engine.db.tx() as s:
            audit.append(s, engine.now(), audit.Operator(actor), "proof.owner_conflict",
                         "proof", c.proof_id, {"claimed_by_owner": c.owner_id,
                                               "session_id": c.session_id})
        raise Conflict(FailureCode.proof_owner_conflict,
                       "this proof was already submitted by another owner") from None


class _OwnerConflict(Exception):
    def __init__(self, proof_id: str, owner_id: str, session_id: str):
        self.proof_id, self.owner_id, self.session_id = proof_id, owner_id, session_id


def _submit(engine: Engine, session_id: str, raw: str, owners: list[str] | None,
            proof_type: str | None, actor: str, verify: bool) -> tuple[dict[str, Any], bool]:
    now = engine.now()
    # 1. Checks and the proof row, committed before the chain is asked: a process that dies
    #    mid-verification loses nothing (the worker finishes a pending proof).
    with engine.db.tx() as s:
        ps = load_session(engine, s, session_id, owners)
        rail = engine.rail(ps.rail_id, network=ps.network, asset=ps.asset)
        adapter = engine.adapter(rail)
        _refuse_if_paused(engine, s, rail.rail_id)
        ptype = proof_type or rail.proof_types[0]
        if ptype not in rail.proof_types:
            raise BadInput("invalid_proof_type", f"proof_type: {rail.rail_id} accepts "
                           f"{', '.join(rail.proof_types)}", field="proof_type")
        try:
            ref = adapter.normalize_proof(ptype, raw)
        except ProofMalformed as e:
            raise BadInput(FailureCode.proof_malformed, str(e), field="proof") from e
        fp = fingerprint(rail.family, rail.network, ptype, ref)
        existing = s.scalar(select(Proof).where(Proof.fingerprint == fp))
        if existing is not None:
            return _replay(engine, s, existing, ps, adapter, actor), False
        if ps.status != SessionStatus.open:
            raise Conflict(FailureCode.session_not_open,
                           f"session {ps.id} is {ps.status}; it takes no new proofs")
        p = Proof(fingerprint=fp, rail_id=rail.rail_id, proof_type=ptype, ref=ref, raw=raw,
                  owner_id=ps.owner_id, session_id=ps.id, status=ProofStatus.pending,
                  detail="submitted", next_check_at=now, created_at=now, updated_at=now)
        try:
            with s.begin_nested():  # the savepoint must exist before the insert is flushed
                s.add(p)
                s.flush()
        except IntegrityError:
            # Lost the insert race on the fingerprint: the winner's row decides.
            winner = s.scalar(select(Proof).where(Proof.fingerprint == fp))
            if winner is None:
                raise
            return _replay(engine, s, winner, ps, adapter, actor), False
        audit.append(s, now, audit.Operator(actor), "proof.submitted", "proof", p.id,
                     {"session_id": ps.id, "rail_id": rail.rail_id, "fingerprint": fp})
        if not verify:
            return _view(s, p), True
    # 2. The chain, outside any transaction (bounded by the transport's retry budget).
    checked = engine.chains.verify(adapter, raw, terms_for(engine, ps))
    # 3. The attempt, the new status, any settlement and the answer, in one transaction.
    with engine.db.tx() as s:
        p = s.get(Proof, p.id, with_for_update=engine.db.postgres)
        verdict = _record_attempt(engine, s, p, ps, checked, None)
        view = _view(s, p)
    _count(engine, rail, checked, verdict)
    return view, True


def _refuse_if_paused(engine: Engine, s: Session, rail_id: str) -> None:
    if engine.rail_state(s, rail_id).paused:
        engine.metrics.inc("rail_paused_attempts_total", rail_id=rail_id)
        raise Refused(FailureCode.rail_paused, f"rail {rail_id} is paused")


def _raw_proof(proof: Any) -> str:
    if isinstance(proof, dict):
        raw = orjson.dumps(proof).decode()
    elif isinstance(proof, str):
        raw = proof.strip()
    else:
        raise BadInput(FailureCode.proof_malformed, "proof: must be a string or a JSON object",
                       field="proof")
    if not raw:
        raise BadInput(FailureCode.proof_malformed, "proof: is empty", field="proof")
    if len(raw) > MAX_PROOF_BYTES:
        raise BadInput(FailureCode.proof_malformed,
                       f"proof: longer than {MAX_PROOF_BYTES} bytes", field="proof")
    return raw


def _replay(engine: Engine, s: Session, existing: Proof, ps: PaymentSession, adapter: Any,
            actor: str) -> dict[str, Any]:
    if existing.owner_id != ps.owner_id:
        raise _OwnerConflict(existing.id, ps.owner_id, ps.id)
    if existing.session_id != ps.id:
        code = getattr(adapter, "replay_code", FailureCode.duplicate_payment)
        raise Conflict(code, f"this transfer already backs session {existing.session_id}")
    return _view(s, existing)


def terms_for(engine: Engine, ps: PaymentSession) -> Terms:
    return Terms(recipient=ps.recipient, amount=ps.amount, asset=ps.asset,
                 reference=ps.reference, memo=ps.memo, not_before=utc(ps.created_at),
                 not_after=utc(ps.expires_at), now=engine.now())


def backoff(attempts: int) -> timedelta:
    """Next re-check of a pending proof: exponential from 5 s, capped at 10 min, with jitter
    so a batch of proofs does not re-check in lockstep."""
    base = min(600.0, 5.0 * (2 ** max(0, attempts - 1)))
    return timedelta(seconds=base * random.uniform(0.8, 1.2))


def verify_proof(engine: Engine, proof_id: str, worker: str | None = None) -> Verdict:
    """One verification run: fetch through the chain transport (outside any transaction),
    then record the attempt, the proof's new status and any settlement in one transaction."""
    with engine.db.tx() as s:
        p = s.get(Proof, proof_id)
        if p is None:
            raise NotFound("proof_not_found", f"no proof {proof_id!r}")
        ps = s.get(PaymentSession, p.session_id)
    rail = engine.rail(ps.rail_id, network=ps.network, asset=ps.asset)
    adapter = engine.adapter(rail)
    checked = engine.chains.verify(adapter, p.raw, terms_for(engine, ps))
    with engine.db.tx() as s:
        p = s.get(Proof, proof_id, with_for_update=engine.db.postgres)
        if worker is not None and p.claimed_by != worker:
            # Our lease ran out during a slow chain call and another worker holds the proof
            # now: its answer will be recorded, ours is dropped (one attempt per claim).
            return checked.verdict
        verdict = _record_attempt(engine, s, p, ps, checked, worker)
    _count(engine, rail, checked, verdict)
    return verdict


def _record_attempt(engine: Engine, s: Session, p: Proof, ps: PaymentSession, checked: Any,
                    worker: str | None) -> Verdict:
    """The attempt row, the proof's new status (its latest attempt's), settlement evidence
    for a verified attempt, the next check, and an audit row when the status changes."""
    verdict = checked.verdict
    now = engine.now()
    grace = timedelta(seconds=engine.settings.tx_not_found_grace_seconds)
    if (verdict.status is Status.pending and verdict.code is FailureCode.tx_not_found
            and now > utc(ps.expires_at) + grace):
        # Give up only when the session is long over: the transfer can no longer count.
        verdict = Verdict.fail(FailureCode.tx_not_found,
                               f"{verdict.detail}; not found by session expiry plus "
                               f"{int(grace.total_seconds())} s grace")
    att = VerificationAttempt(proof_id=p.id, status=verdict.status.value,
                              failure_code=verdict.code.value if verdict.code else None,
                              detail=verdict.detail, observed=_redact(verdict.observed),
                              rpc_calls=checked.rpc_calls, latency_ms=checked.latency_ms,
                              source=checked.source, worker=worker, created_at=now)
    s.add(att)
    s.flush()
    old = p.status if p.attempts else None  # a new proof's first attempt always counts
    p.status = verdict.status.value
    p.failure_code = att.failure_code
    p.detail = verdict.detail
    p.attempts += 1
    p.updated_at = now
    p.claimed_until = None
    p.claimed_by = None
    ev = None
    if verdict.status is Status.verified and verdict.settlement is not None:
        ev = record_settlement(engine, s, p, att.id, verdict.settlement, checked.source)
    p.next_check_at = _next_check(p, verdict, now)
    if old != p.status:
        audit.append(s, now, SYSTEM, f"proof.{p.status}", "proof", p.id,
                     {"code": p.failure_code, "attempt_id": att.id})
        if p.status != ProofStatus.pending:
            events.emit(s, now, f"proof.{p.status}", p.owner_id, "proof", p.id, _view(s, p))
            if ev is not None and (ev.is_final or ev.reorged):
                events.emit(s, now, "settlement.reorged" if ev.reorged else
                            "settlement.finalized", p.owner_id, "proof", p.id, _view(s, p))
    return verdict


def _count(engine: Engine, rail: Any, checked: Any, verdict: Verdict) -> None:
    engine.metrics.inc("verification_attempts_total", rail_id=rail.rail_id,
                       status=verdict.status.value, code=verdict.code.value if verdict.code else "")
    engine.metrics.observe("verification_latency_seconds", checked.latency_ms / 1000,
                           rail_id=rail.rail_id)
    if verdict.code is FailureCode.rpc_unavailable:
        engine.metrics.inc("rpc_errors_total", network=rail.network, kind="verify")


def _next_check(p: Proof, verdict: Verdict, now: Any) -> Any:
    if verdict.status is Status.pending:
        return now + backoff(p.attempts)
    if verdict.status is Status.verified:
        st = verdict.settlement
        if st is None or not st.is_final:
            return now + backoff(1)  # finality refresh
        return None
    return None


def _redact(observed: dict[str, Any]) -> dict[str, Any]:
    # SECURITY: evidence keeps what the chain said, never signatures or payload blobs.
    banned = {"signature", "payload", "raw", "authorization", "secret", "token"}
    return {k: v for k, v in observed.items() if k.lower() not in banned}


def record_settlement(engine: Engine, s: Session, p: Proof, attempt_id: int, st: Settlement,
                      source: str) -> SettlementEvidence:
    ev = SettlementEvidence(proof_id=p.id, attempt_id=attempt_id, finality=st.finality,
                            is_final=st.is_final and not st.reorged, reorged=st.reorged,
                            slot=st.slot, block_number=st.block_number,
                            block_hash=st.block_hash, confirmations=st.confirmations,
                            detail=st.detail, source=source, observed_at=engine.now())
    s.add(ev)
    s.flush()
    return ev


def latest_settlement(s: Session, proof_id: str) -> SettlementEvidence | None:
    return s.scalar(select(SettlementEvidence).where(SettlementEvidence.proof_id == proof_id)
                    .order_by(SettlementEvidence.id.desc()).limit(1))


def latest_verified_attempt(s: Session, proof_id: str) -> VerificationAttempt | None:
    return s.scalar(select(VerificationAttempt)
                    .where(VerificationAttempt.proof_id == proof_id,
                           VerificationAttempt.status == ProofStatus.verified)
                    .order_by(VerificationAttempt.id.desc()).limit(1))


def _view(s: Session, p: Proof) -> dict[str, Any]:
    rid = s.scalar(select(Receipt.id).where(Receipt.proof_id == p.id))
    return proof_view(p, latest_settlement(s, p.id), rid)


def load_proof(engine: Engine, s: Session, proof_id: str, owners: list[str] | None) -> Proof:
    p = s.get(Proof, proof_id)
    if p is not None and owners is not None and p.owner_id not in owners:
        engine.metrics.inc("owner_isolation_denials_total", reason="proof")
        p = None
    if p is None:
        raise NotFound("proof_not_found", f"no proof {proof_id!r}")
    return p


def get_proof(engine: Engine, proof_id: str, owners: list[str] | None) -> dict[str, Any]:
    with engine.db.tx() as s:
        return _view(s, load_proof(engine, s, proof_id, owners))


def list_proofs(engine: Engine, rail_id: str | None = None, status: str | None = None,
                limit: int = 50) -> list[dict[str, Any]]:
    with engine.db.tx() as s:
        q = select(Proof).order_by(Proof.created_at.desc(), Proof.id).limit(limit)
        if rail_id:
            q = q.where(Proof.rail_id == rail_id)
        if status:
            q = q.where(Proof.status == status)
        return [_view(s, p) for p in s.scalars(q).all()]


def list_attempts(engine: Engine, proof_id: str) -> list[dict[str, Any]]:
    with engine.db.tx() as s:
        load_proof(engine, s, proof_id, None)
        rows = s.scalars(select(VerificationAttempt).where(VerificationAttempt.proof_id == proof_id)
                         .order_by(VerificationAttempt.id)).all()
        return [attempt_view(a) for a in rows]


def list_evidence(engine: Engine, proof_id: str) -> list[dict[str, Any]]:
    with engine.db.tx() as s:
        load_proof(engine, s, proof_id, None)
        rows = s.scalars(select(SettlementEvidence).where(SettlementEvidence.proof_id == proof_id)
                         .order_by(SettlementEvidence.id)).all()
        return [evidence_view(e) for e in rows]


def count_proofs(engine: Engine) -> int:
    with engine.db.tx() as s:
        return s.scalar(select(func.count()).select_from(Proof)) or 0
