"""Proofs: submission (shape, fingerprint, replay rules), verification attempts, settlement
evidence and reads.

Replay rules (the fingerprint leaves the owner out on purpose). A proof *holds* its transfer
while it is verified or requires_review for its session (storage.repo.holds: its fingerprint and
every identity the rail gives the transfer, across proof types):
- same fingerprint, same session → the existing proof (idempotent, no new row);
- a transfer held for another owner's session → proof_owner_conflict, audited and counted;
- a transfer held for another session of the same owner → duplicate_payment (nonce_reused
  for x402), audited and counted;
- a pending or failed proof holds nothing: submitting someone else's transfer first (and
  failing against one's own session's binding) never blocks the session it was made for.
The refusal is decided before the chain is asked when the fingerprint is already held, and
otherwise when the verdict would make the proof hold (the hold's insert decides any race).
A transfer without a reference that could back more than one open session is never
`verified`: it is requires_review (ambiguous_transfer) naming every candidate session.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from rails.base import (
    FAILS_ONCE_FINAL_KEY,
    Adapter,
    Settlement,
    Status,
    Terms,
    Verdict,
    fingerprint,
)
from rails.codes import FailureCode
from rails.errors import ProofMalformed
from registry.catalog import Rail
from verifier.core.checking import Checked
from verifier.core.engine import Engine
from verifier.core.errors import BadInput, Conflict, EngineError, NotFound, Refused
from verifier.core.known_sessions import SessionKey
from verifier.core.timeutil import epoch_of, utc
from verifier.services import audit, events, queries
from verifier.services.sessions import load_session, reference_generated
from verifier.services.views import View, attempt_view, evidence_view, proof_view
from verifier.storage.models import (
    HOLDING,
    PaymentSession,
    Proof,
    ProofStatus,
    RailState,
    SessionStatus,
    SettlementEvidence,
    VerificationAttempt,
    new_id,
)
from verifier.storage.repo import attempts as attempt_repo
from verifier.storage.repo import holds
from verifier.storage.repo import proofs as proof_repo
from verifier.storage.repo import rail_state as rail_state_repo
from verifier.storage.repo import receipts as receipt_repo
from verifier.storage.repo import sessions as session_repo
from verifier.storage.repo import settlements as settlement_repo
from verifier.storage.repo.rows import Record

MAX_PROOF_BYTES = 16_384
# Sessions a new proof is stored and verified for. A paid one too: a second transfer the
# payer made for it is money that arrived, recorded for refund whenever it is handed over
# (before or after the first was credited); the apply gate never credits it (tuple_bound:
# the session is already paid by another proof).
TAKES_PROOFS = (SessionStatus.open, SessionStatus.paid)
SYSTEM = audit.Operator("system")
# A pending proof that failed a check and waits only for its block to be final: its code,
# and the observed key naming the failure it becomes (`Verdict.fails_once_final`).
_FAILING = (FailureCode.not_final.value, FAILS_ONCE_FINAL_KEY)
# A submission's answer: (the proof's view, whether this request stored it).
Submitted = tuple[dict[str, Any], bool]


def submit_proof(
    engine: Engine,
    session_id: str,
    proof: object,
    owners: list[str] | None,
    proof_type: str | None = None,
    actor: str = "service",
    verify: bool = True,
    operator: audit.Operator | None = None,
) -> Submitted:
    """Returns (proof view, created). `operator`: a staff member's submission, audited with
    the incident and reason it is made under (a reconciliation repair); its actor is `actor`."""
    raw = _raw_proof(proof)
    op = operator or audit.Operator(actor)
    try:
        return _submit(engine, _Asked(session_id, raw, owners, proof_type, op.actor, verify, op))
    except _Held as h:
        # Refused before any proof row: on the record in a transaction of its own.
        with engine.db.tx() as s:
            _audit_refusal(engine, s, h, op)
        _count_refusal(engine, h)
        raise h.conflict() from None
    except _Replay as replay:
        # The transaction that found it held the chain's lock (taken with its insert): the
        # stored proof is read in one of its own, without it.
        with engine.db.tx() as s:
            winner = proof_repo.by_fingerprint(s, replay.fingerprint, replay.session_id)
            if winner is None:
                raise replay.error from None
            stored = _view(s, winner), False
            other_payload = winner.status == ProofStatus.failed and winner.raw != raw
        if other_payload:
            return _another_payload(engine, winner.id, raw, actor) or stored
        return stored


def _another_payload(engine: Engine, proof_id: str, raw: str, actor: str) -> Submitted | None:
    """A failed proof whose transfer is named again by another payload (an x402 authorization:
    its fingerprint is the payer's nonce, not the payload). A tampered copy submitted first,
    failed on its signature or terms, must not answer for the payer's genuine one: the new
    payload is verified, and recorded on the proof only if it verifies or needs a person (None:
    the stored answer stands). Only on rails whose proof is the payment itself (no chain read:
    elsewhere another spelling names the same transaction)."""
    with engine.db.tx() as s:
        p = proof_repo.get(s, proof_id)
        if p is None:  # pragma: no cover - a proof row is never deleted
            return None
        ps = session_repo.get(s, p.session_id)
        assert ps is not None  # a proof's session is never deleted (foreign key)
        was = p.raw
    rail = engine.rail(ps.rail_id, network=ps.network, asset=ps.asset)
    adapter = engine.adapter(rail)
    if adapter.reads_chain:
        # Another spelling of the same transaction id: the chain's answer cannot differ.
        return None
    checked = engine.chains.verify(
        adapter,
        raw,
        terms_for(engine, ps, adapter),
        budget_s=engine.settings.submit_verify_budget_s,
    )
    if checked.verdict.status not in (Status.verified, Status.requires_review):
        # SECURITY: `failed` is definitive: only a payload that verifies (or needs a person)
        # replaces it, never a transient answer (a node down) that would reopen it.
        _count(engine, rail, checked, checked.verdict)
        return None
    with engine.db.tx() as s:
        locked = _get_proof(s, proof_id)
        if locked.status != ProofStatus.failed or locked.raw != was:
            return None  # another submission changed it meanwhile: it answers
        # The session's row under a share lock before the chain's: the order an attempt takes
        # them in (proof, session, chain), so a credit of the session (session, then chain)
        # and this replacement never wait on each other crosswise.
        session_repo.status_behind(s, ps.id)()
        proof_repo.update(s, locked, {"raw": raw})
        audit.append(
            s,
            engine.now(),
            audit.Operator(actor),
            "proof.payload_replaced",
            "proof",
            proof_id,
            {"session_id": ps.id, "rail_id": rail.rail_id},
        )
        verdict, view, refused = _record_attempt(
            engine,
            s,
            locked,
            ps,
            checked,
            None,
            want_view=True,
            actor=actor,
            payload_claims=not adapter.reads_chain,
        )
    return _answered(engine, rail, checked, verdict, view, refused), False


class _Held(Exception):
    """The transfer already backs another session: the refusal, and who holds it."""

    def __init__(
        self,
        code: str,
        holder: holds.Holder,
        rail_id: str,
        owner_id: str,
        session_id: str,
        proof_id: str | None = None,
    ):
        self.code, self.holder, self.rail_id = code, holder, rail_id
        self.owner_id, self.session_id, self.proof_id = owner_id, session_id, proof_id

    @classmethod
    def of(
        cls,
        adapter: Adapter,
        holder: holds.Holder,
        ps: PaymentSession | Record,
        proof_id: str | None = None,
    ) -> _Held:
        code = (
            FailureCode.proof_owner_conflict
            if holder.owner_id != ps.owner_id
            else adapter.replay_code
        )
        return cls(code.value, holder, ps.rail_id, ps.owner_id, ps.id, proof_id)

    @property
    def message(self) -> str:
        if self.code == FailureCode.proof_owner_conflict:
            # Another owner's session id is theirs: not named to this caller.
            return "this transfer already backs another owner's payment session"
        return f"this transfer already backs session {self.holder.session_id}"

    def conflict(self) -> Conflict:
        extra = {"proof_id": self.proof_id} if self.proof_id else None
        # Raised once the refusal is audited and counted: a retry under the same
        # Idempotency-Key replays it rather than auditing it again.
        return Conflict(self.code, self.message, extra=extra, executed=True)


def _audit_refusal(engine: Engine, s: Session, h: _Held, actor: str | audit.Operator) -> None:
    action = (
        "proof.owner_conflict" if h.code == FailureCode.proof_owner_conflict else f"proof.{h.code}"
    )
    audit.append(
        s,
        engine.now(),
        actor if isinstance(actor, audit.Operator) else audit.Operator(actor),
        action,
        "proof",
        h.holder.proof_id,
        {
            "code": h.code,
            "held_by_session_id": h.holder.session_id,
            "held_by_owner_id": h.holder.owner_id,
            "claimed_by_owner": h.owner_id,
            "session_id": h.session_id,
            "refused_proof_id": h.proof_id,
        },
    )


def _count_refusal(engine: Engine, h: _Held) -> None:
    engine.metrics.inc("replay_refusals_total", rail_id=h.rail_id, code=h.code)
    if h.code == FailureCode.proof_owner_conflict:
        engine.metrics.inc("owner_isolation_denials_total", reason="proof_owner_conflict")


class _Superseded(Exception):
    """A submission's own attempt came after another's on its new proof (a worker took it,
    due at once, while the submission asked the chain): the one recorded first stands."""


class _Replay(Exception):
    """The proof's insert found this transfer already submitted to this session."""

    def __init__(self, error: IntegrityError, fingerprint: str, session_id: str):
        super().__init__(str(error))
        self.error, self.fingerprint, self.session_id = error, fingerprint, session_id


class _Guessed(Exception):
    """The session as read is not the one its statements were sent for (storage row
    changed, or no longer open): the transaction rolls back and the submission is made again
    the usual way."""


class _Sent:
    """A submission's statements, sent for one session: the proof's fingerprint and row, its
    hold read and insert, and when sent ahead of the session's read, the rail's state."""

    def __init__(
        self,
        engine: Engine,
        s: Session,
        key: SessionKey,
        takes_proofs: bool,
        raw: str,
        proof_type: str | None,
        now: datetime,
        ahead: bool,
    ):
        self.key = key
        self.rail = rail = engine.rail(key.rail_id, network=key.network, asset=key.asset)
        self.adapter = adapter = engine.adapter(rail)
        self.ptype = ptype = proof_type or rail.proof_types[0]
        ref: str | None = None
        self.malformed: ProofMalformed | None = None
        if ptype in rail.proof_types:
            try:
                ref = adapter.normalize_proof(ptype, raw)
            except ProofMalformed as e:
                self.malformed = e
        # SECURITY: ahead of the session's read the rail's share lock is still the first lock
        # this transaction takes (any Idempotency-Key claim aside, as always): it goes first
        # behind that read, before the hold read, the insert and the chain's lock.
        self.state = rail_state_repo.read_shared_behind(s, rail.rail_id) if ahead else None
        self.fp: str | None = None
        self.held_by: Callable[[], holds.Holder | None] | None = None
        self.write: Callable[[], Record] | None = None
        if ref is None:
            return
        self.fp = fp = fingerprint(rail.family, rail.network, ptype, ref)
        row = {
            "id": new_id(),
            "fingerprint": fp,
            "rail_id": rail.rail_id,
            "proof_type": ptype,
            "ref": ref,
            "raw": raw,
            "owner_id": key.owner_id,
            "session_id": key.id,
            "status": ProofStatus.pending.value,
            "failure_code": None,
            "detail": "submitted",
            "attempts": 0,
            "next_check_at": now,
            "claimed_until": None,
            "claimed_by": None,
            "created_at": now,
            "updated_at": now,
        }
        # The hold read and the insert run right behind the rail's state (or the session's
        # read, with the state ahead of them), in its round trip on PostgreSQL, exactly
        # where they ran after it one by one: the pause and the hold are still checked
        # before either answer is used, and a refusal rolls the transaction (and the insert)
        # back.
        self.held_by = holds.holder_behind(s, holds.fingerprint_key(fp), key.id)
        if takes_proofs:
            # Insert first: the fingerprint's unique index answers "seen before?" and the
            # usual new proof costs no lookup.
            self.write = proof_repo.insert_proof_behind(s, row)
            # And the chain's lock last, for the append below: after the insert, so a
            # concurrent insert of this fingerprint is waited for before the lock is held
            # (as when the lock had a round trip of its own). A refusal or a replay then
            # holds it until its rollback, which follows at once.
            audit.lock_with_next_statement(s)


@dataclass(frozen=True)
class _Asked:
    """A submission as asked for."""

    session_id: str
    raw: str
    owners: list[str] | None
    proof_type: str | None
    actor: str
    verify: bool
    op: audit.Operator  # who, and for a staff member under which incident and why


def _submit(engine: Engine, asked: _Asked) -> Submitted:
    now = engine.now()
    # A session seen here before (opened or read by this process) is known by its owner and
    # rail, which never change: the proof's statements go ahead of the session's read, in its
    # round trip, and are used only if the session read is that one, still open. Never for a
    # caller the session does not belong to: that one is answered as always.
    known = engine.known_sessions.get(asked.session_id)
    if known is not None and asked.owners is not None and known.owner_id not in asked.owners:
        known = None
    try:
        return _submit_as(engine, asked, now, known)
    except _Guessed:
        engine.known_sessions.forget(asked.session_id)
        return _submit_as(engine, asked, now, None)


def _submit_as(engine: Engine, asked: _Asked, now: datetime, known: SessionKey | None) -> Submitted:
    raw, proof_type, actor = asked.raw, asked.proof_type, asked.actor
    # 1. Checks and the proof row, committed before the chain is asked: a process that dies
    #    mid-verification loses nothing (the worker finishes a pending proof).
    with engine.db.tx() as s:
        sent = None
        if known is not None:
            try:
                sent = _Sent(engine, s, known, True, raw, proof_type, now, True)
            except EngineError:
                # A rail this process cannot resolve: the guess decides nothing.
                raise _Guessed from None
        try:
            # Read only: the session is not changed by a submission.
            ps = load_session(
                engine, s, asked.session_id, asked.owners, read_only=True, field="session_id"
            )
        except IntegrityError:
            if sent is None:
                raise
            # What was sent ahead failed with the read (the proof's insert names a session
            # that is not stored): the usual way answers, from the session's row alone.
            raise _Guessed from None
        if sent is not None:
            st = sent.state() if sent.state is not None else None
            if st is None or ps.status not in TAKES_PROOFS or not sent.key.fits(ps):
                raise _Guessed  # rolls back whatever was sent for it
        else:
            if ps.status == SessionStatus.open:
                engine.known_sessions.remember(ps)
            sent = _Sent(
                engine,
                s,
                SessionKey.of(ps),
                ps.status in TAKES_PROOFS,
                raw,
                proof_type,
                now,
                False,
            )
            st = engine.rail_state_read(s, sent.rail.rail_id)
        rail, adapter, ptype, fp = sent.rail, sent.adapter, sent.ptype, sent.fp
        _refuse_if_paused(engine, st, rail.rail_id)
        if ptype not in rail.proof_types:
            raise BadInput(
                "invalid_proof_type",
                f"proof_type: {rail.rail_id} accepts {', '.join(rail.proof_types)}",
                field="proof_type",
            )
        if sent.malformed is not None or fp is None or sent.held_by is None:
            raise BadInput(FailureCode.proof_malformed, str(sent.malformed), field="proof") from (
                sent.malformed
            )
        # SECURITY: a transfer another session holds is refused before the chain is asked.
        # (Only a hold refuses: someone else's failed or pending claim reserves nothing.)
        held = sent.held_by()
        if held is not None:
            raise _Held.of(adapter, held, ps)
        if sent.write is None:
            # A closed (cancelled) session takes no new proof, but a resubmission of one it
            # took is still answered as a replay.
            existing = proof_repo.by_fingerprint(s, fp, ps.id)
            if existing is not None:
                return _view(s, existing), False
            raise Conflict(
                FailureCode.session_not_open,
                f"session {ps.id} is {ps.status}; it takes no new proofs",
            )
        try:
            # `p` is the row as written; only read below (its id, the view).
            p = sent.write()
        except IntegrityError as e:
            # Submitted to this session before (or lost the insert race): that row answers.
            raise _Replay(e, fp, ps.id) from e
        audit.append(
            s,
            now,
            asked.op,
            "proof.submitted",
            "proof",
            p.id,
            {"session_id": ps.id, "rail_id": rail.rail_id, "fingerprint": fp},
        )
        if not asked.verify:
            # Not committed yet, so nothing can refer to it: no settlement, no receipt.
            return proof_view(p, None, None), True
    # 2. The chain, outside any transaction, within the submission budget: what it cannot
    #    decide by then is answered pending and finished by the worker.
    checked = engine.chains.verify(
        adapter,
        raw,
        # Handed over when stored (the row's created_at), as the apply gate judges it: the
        # insert's time must not make a payment stored by the expiry late.
        terms_for(engine, ps, adapter, now),
        budget_s=engine.settings.submit_verify_budget_s,
    )
    # 3. The attempt, the new status, any settlement and the answer, in one transaction.
    try:
        with engine.db.tx() as s:
            # `p` is the row as step 1 wrote it, unless a worker verified it meanwhile (a new
            # proof is due at once): `_record_attempt` checks that as it writes the attempt,
            # and then records nothing (`_Superseded`).
            # The answer commits with the attempt (an Idempotency-Key's completion).
            verdict, view, refused = _record_attempt(
                engine,
                s,
                p,
                ps,
                checked,
                None,
                want_view=True,
                as_written=True,
                actor=actor,
                answer=lambda v: engine.db.finish(s, (v, True)),
                payload_claims=not adapter.reads_chain,
            )
    except _Superseded:
        # SECURITY: a worker verified (and may have credited) the proof meanwhile: an answer
        # asked no later than its own does not overwrite it (a node behind would send a
        # credited proof back to pending, and its events out again). Rolled back, holds
        # included; kept as evidence only, and the answer is the proof as stored.
        try:
            _record_superseded(engine, p.id, checked)
        except (queries.DatabaseError, queries.PoolTimeout) as e:
            if not queries.database_busy(e):
                raise
        return _stored_pending(engine, p.id), True
    except (queries.DatabaseError, queries.PoolTimeout) as e:
        if not queries.database_busy(e):
            raise
        # A lock or statement timeout rolled this attempt back, but step 1 committed: the
        # proof is stored pending and due, so the worker verifies it. The answer is the proof
        # as stored, as for any pending proof (never "nothing was changed").
        return _stored_pending(engine, p.id), True
    return _answered(engine, rail, checked, verdict, view, refused), True


def _answered(
    engine: Engine,
    rail: Rail,
    checked: Checked,
    verdict: Verdict,
    view: View | None,
    refused: _Held | None,
) -> View:
    """A submission's recorded attempt, counted: its proof's view, or its refusal raised."""
    _count(engine, rail, checked, verdict)
    if refused is not None:
        _count_refusal(engine, refused)
        raise refused.conflict()
    if view is None:  # want_view=True: _record_attempt always builds the view
        raise RuntimeError("the attempt was recorded without the proof's view")
    return view


class StoredPending(EngineError):
    """503 database_busy for a submission whose proof is stored: the database gave up on
    recording its first attempt and on reading it back. The worker verifies it."""

    status = 503

    def __init__(self, proof_id: str):
        super().__init__(
            "database_busy",
            f"the database is busy; proof {proof_id} is stored pending and will be verified "
            f"shortly: read it with GET /v1/proofs/{proof_id}, or retry this request",
            extra={"proof_id": proof_id, "proof_status": ProofStatus.pending.value},
        )
        self.headers = {"Retry-After": "2"}


def _record_superseded(engine: Engine, proof_id: str, checked: Checked) -> None:
    """A submission's attempt that came second (`_Superseded`): its row, as every attempt
    has one, changing nothing the first decided (status, holds, settlement, next check)."""
    verdict = checked.verdict
    with engine.db.tx() as s:
        p = _get_proof(s, proof_id)
        proof_repo.update(s, p, {"attempts": p.attempts + 1, "updated_at": engine.now()})
        attempt_repo.insert_attempt(
            s,
            {
                "proof_id": p.id,
                "status": verdict.status.value,
                "failure_code": verdict.code.value if verdict.code else None,
                "detail": verdict.detail,
                "observed": {**_redact(verdict.observed), "superseded": True},
                "rpc_calls": checked.rpc_calls,
                "latency_ms": checked.latency_ms,
                "source": checked.source,
                "worker": None,
                "created_at": engine.now(),
            },
        )


def _stored_pending(engine: Engine, proof_id: str) -> dict[str, Any]:
    """The view of a submitted proof whose first attempt was not recorded (read without a
    lock, so a client holding the proof's row does not block it)."""
    try:
        with engine.db.tx() as s:
            return _view(s, load_proof(engine, s, proof_id, None))
    except (queries.DatabaseError, queries.PoolTimeout) as e:
        if not queries.database_busy(e):
            raise
        raise StoredPending(proof_id) from None


def _get_proof(s: Session, proof_id: str) -> Proof | Record:
    """The proof row to record an attempt on, under its row lock (storage.repo.proofs
    .for_attempt): written back with `proof_repo.update`, never through the unit of work."""
    p = proof_repo.for_attempt(s, proof_id)
    if p is None:  # pragma: no cover - a proof row is never deleted
        raise NotFound("proof_not_found", f"no proof {proof_id!r}")
    return p


def _refuse_if_paused(engine: Engine, st: RailState | Record, rail_id: str) -> None:
    if st.paused:
        engine.metrics.inc("rail_paused_attempts_total", rail_id=rail_id)
        raise Refused(FailureCode.rail_paused, f"rail {rail_id} is paused")


def _raw_proof(proof: object) -> str:
    if isinstance(proof, dict):
        raw = orjson.dumps(proof).decode()
    elif isinstance(proof, str):
        raw = proof.strip()
    else:
        raise BadInput(
            FailureCode.proof_malformed, "proof: must be a string or a JSON object", field="proof"
        )
    if not raw:
        raise BadInput(FailureCode.proof_malformed, "proof: is empty", field="proof")
    if len(raw) > MAX_PROOF_BYTES:
        raise BadInput(
            FailureCode.proof_malformed,
            f"proof: longer than {MAX_PROOF_BYTES} bytes",
            field="proof",
        )
    return raw


def terms_for(
    engine: Engine,
    ps: PaymentSession | Record,
    adapter: Adapter,
    submitted_at: datetime | None = None,
) -> Terms:
    """The session as the rail checks it; `submitted_at`: when the proof was stored (None:
    being submitted now)."""
    generated = reference_generated(engine, adapter, ps)
    # SECURITY: the chain's clock is not railproof's, but only a reference railproof generated
    # proves a transfer was made for this session whatever its chain time: nobody can carry it
    # before the session exists. A payer-bound or chosen-reference session allows no skew, or
    # whoever saw a transfer on chain could open a session for it and take it.
    skew = opening_skew(engine) if generated else timedelta(0)
    return Terms(
        recipient=ps.recipient,
        amount=ps.amount,
        asset=ps.asset,
        reference=ps.reference,
        memo=ps.memo,
        not_before=utc(ps.created_at) - skew,
        not_after=utc(ps.expires_at),
        now=engine.now(),
        submitted_at=utc(submitted_at) if submitted_at is not None else None,
        sender=ps.payer,
        reference_generated=generated,
    )


def opening_skew(engine: Engine) -> timedelta:
    """How much earlier than the creation of a session with a generated reference its
    transfer's chain time may be."""
    return timedelta(seconds=engine.settings.chain_clock_skew_seconds)


_BACKOFF_CAP_S = 600.0
_JITTER = 0.2
# The longest a pending proof waits for its next re-check.
LONGEST_RECHECK = timedelta(seconds=_BACKOFF_CAP_S * (1 + _JITTER))
# The longest an unbroken run of "not found" answers is given before it may fail a proof,
# however its silences restarted the grace (services.proofs._not_found_since).
NOT_FOUND_PATIENCE = timedelta(hours=6)


def backoff(attempts: int) -> timedelta:
    """Next re-check of a pending proof: exponential from 5 s, capped at 10 min, with jitter
    so a batch of proofs does not re-check in lockstep."""
    base = min(_BACKOFF_CAP_S, 5.0 * (2 ** max(0, attempts - 1)))
    return timedelta(seconds=base * random.uniform(1 - _JITTER, 1 + _JITTER))


def unsettled_backoff(verified_at: datetime, now: datetime) -> timedelta:
    """Next finality check of a payment verified before it settled (x402) whose settlement the
    chain does not show: as long again as it has waited since it was verified, from 10 s,
    capped at 10 min, with `backoff`'s jitter. The checks come at doubling intervals, as a
    pending proof's re-checks do.

    SECURITY: a tenant can sign authorizations that never settle (a key with no funds), valid
    for as long as it writes; each one's settlement asked every 10 s until then would load the
    node every tenant of the network shares without bound."""
    waited = (now - utc(verified_at)).total_seconds()
    base = min(_BACKOFF_CAP_S, max(10.0, waited))
    return timedelta(seconds=base * random.uniform(1 - _JITTER, 1 + _JITTER))


def verify_proof(engine: Engine, proof_id: str, worker: str | None = None) -> Verdict:
    """One verification run: fetch through the chain transport (outside any transaction),
    then record the attempt, the proof's new status and any settlement in one transaction."""
    return _verify(engine, proof_id, worker)[0]


def recheck_unsettled(
    engine: Engine, proof_id: str, worker: str, only: FailureCode | None = None
) -> Verdict | None:
    """A verified proof whose settlement the chain does not show (an x402 authorization not
    settled yet) asked again by its rail's own checks, which alone can tell that the payment
    can no longer arrive (its nonce spent on another transfer: `nonce_reused`; its validity
    over unsettled). Only such a failure is recorded, as any verification's is (attempt,
    holds released, audit, event): every other answer leaves the proof verified, and its
    settlement is asked again. Returns the failure, else None.

    A proof with a receipt is never failed here (the failure is returned, not recorded): it
    was credited on a settlement that was final, and the caller reports it as a reorg.
    `only`: the one failure that counts (any other is neither recorded nor returned)."""
    verdict, _ = _verify(engine, proof_id, worker, only_failure=True, only=only)
    failed = verdict.status is Status.failed and (only is None or verdict.code is only)
    return verdict if failed else None


def _verify(
    engine: Engine,
    proof_id: str,
    worker: str | None,
    only_failure: bool = False,
    only: FailureCode | None = None,
) -> tuple[Verdict, bool]:
    """verify_proof; `only_failure`: record the attempt only on a verified proof without a
    receipt that the checks now fail. Returns the verdict and whether it was recorded."""
    with engine.db.tx() as s:
        p = proof_repo.get(s, proof_id)
        if p is None:
            raise NotFound("proof_not_found", f"no proof {proof_id!r}")
        ps = session_repo.get(s, p.session_id)
        assert ps is not None  # a proof's session is never deleted (foreign key)
    rail = engine.rail(ps.rail_id, network=ps.network, asset=ps.asset)
    adapter = engine.adapter(rail)
    checked = engine.chains.verify(adapter, p.raw, terms_for(engine, ps, adapter, p.created_at))
    with engine.db.tx() as s:
        locked = _get_proof(s, proof_id)
        if worker is not None and locked.claimed_by != worker:
            # Our lease ran out during a slow chain call and another worker holds the proof
            # now: its answer will be recorded, ours is dropped (one attempt per claim).
            return checked.verdict, False
        if only_failure and (
            checked.verdict.status is not Status.failed
            or (only is not None and checked.verdict.code is not only)
            or locked.status != ProofStatus.verified
            or receipt_repo.ids_for_proofs(s, [proof_id])
        ):
            return checked.verdict, False
        # SECURITY: which session a transfer pays is decided once, when it is first verified
        # (or by staff): verified again after a reorg, a proof that may hold a receipt by now
        # is not sent back to review by a session opened since.
        decided = bool(locked.attempts) and attempt_repo.latest_verified(s, proof_id) is not None
        verdict, _, refused = _record_attempt(
            engine,
            s,
            locked,
            ps,
            checked,
            worker,
            resolved=decided,
            payload_claims=not adapter.reads_chain,
        )
    _count(engine, rail, checked, verdict)
    if refused is not None:
        _count_refusal(engine, refused)
    return verdict, True


def _not_found_since(s: Session, p: Proof | Record, now: datetime, grace: timedelta) -> datetime:
    """When the chain began answering "not found" for this proof without a break: its first
    such attempt since any other answer (a reorg, a verdict), else now. An unreachable node
    said nothing: it neither breaks the run (a flaky node would keep a proof pending for good)
    nor starts one (a proof first checked while its node was down starts at its first answer).
    A silence between two "not found" answers longer than the grace and than two re-checks
    (an outage, a stopped worker) starts the run again: the node answering after it may be one
    still catching up, and it gets the whole grace too. Never past the run's patience, though
    (`NOT_FOUND_PATIENCE`, or four graces): a node that answers rarely enough that every
    answer follows such a silence would otherwise keep a transfer that never existed pending
    for good."""
    if not p.attempts:
        return now
    silence = max(grace, 2 * LONGEST_RECHECK)
    run = attempt_repo.pending_run(
        s, p.id, FailureCode.tx_not_found.value, neutral=(FailureCode.rpc_unavailable.value,)
    )
    if not run:
        return now
    first = utc(run[0])
    if now - first > max(NOT_FOUND_PATIENCE, 4 * grace):
        return first
    since = now
    for said in reversed(run):
        if since - utc(said) > silence:
            break
        since = utc(said)
    return since


def _record_attempt(
    engine: Engine,
    s: Session,
    p: Proof | Record,
    ps: PaymentSession | Record,
    checked: Checked,
    worker: str | None,
    want_view: bool = False,
    as_written: bool = False,
    actor: str = "system",
    answer: Callable[[dict[str, Any]], None] | None = None,
    resolved: bool = False,
    payload_claims: bool = False,
) -> tuple[Verdict, dict[str, Any] | None, _Held | None]:
    """The attempt row, the proof's new status (its latest attempt's), the transfer holds,
    settlement evidence for a verified attempt, the next check, and an audit row when the
    status changes. Returns the verdict, the proof's view when asked for or needed for an
    event, and the refusal when another session holds the transfer. `answer` is given the
    view, when nothing refused the transfer, before the audit chain's lock is taken.

    `p`: the proof read under its row lock (`_get_proof`), or with `as_written` the record
    a submission inserted in an earlier transaction, which holds only while the row has no
    attempt: the first attempt's UPDATE checks exactly that, and the row is read (and locked)
    only when it fails. An attempt recorded meanwhile stands: this one raises `_Superseded`.

    `resolved`: staff have decided which session the transfer was for (services.reviews), or
    an earlier attempt verified it, so other open sessions that could take it do not send it
    to review again.

    `payload_claims`: the proof is the payment itself (an x402 authorization: the rail reads
    no chain to verify it), so another session's pending proof of it, which passed every
    check the payload allows, is a claim as good as an open session's: it is a candidate."""
    verdict = checked.verdict
    now = engine.now()
    grace = timedelta(seconds=engine.settings.tx_not_found_grace_seconds)
    if (
        verdict.status is Status.pending
        and verdict.code is FailureCode.tx_not_found
        and now > utc(ps.expires_at) + grace
        and now > _not_found_since(s, p, now, grace) + grace
    ):
        # Give up only when the session is long over (the transfer can no longer count) and
        # the chain has said "not found" for the whole grace: a proof submitted late, or sent
        # back to pending by a reorg, gives a node that is behind the same grace to catch up.
        verdict = Verdict.fail(
            FailureCode.tx_not_found,
            f"{verdict.detail}; not found by session expiry plus "
            f"{int(grace.total_seconds())} s grace",
        )
    # A verified transfer's other candidates are read behind the proof's lock below, in its
    # round trip; the verdict holds either way (verified or held for review), so the holds
    # it takes do not wait for the answer.
    deciding = (
        _unambiguous_behind(
            engine, s, ps, verdict, p.created_at, (p.fingerprint, p.id), payload_claims
        )
        if verdict.status is Status.verified and not resolved
        else None
    )
    # The session's status now, in the same round trip: another proof of it may have been
    # credited while this one's chain call ran, and the row read before that says open.
    reading = session_repo.status_behind(s, ps.id) if verdict.status is Status.verified else None
    holding = verdict.status.value in HOLDING
    # SECURITY: the hold is what makes a verdict count for this session; the insert decides
    # between concurrent claims of one transfer, on every identity it has.
    keys = (holds.fingerprint_key(p.fingerprint), *verdict.transfer_keys)
    taking = None
    reserving = None
    if as_written and proof_repo.locks_rows(s):
        # Lock order on PostgreSQL: the proof's row, then its holds (as the worker does), so
        # a submission and a worker recording the same proof never wait on each other
        # crosswise. SQLite's single writer needs no order. The holds' inserts run right
        # behind the lock, in its round trip (the proof's id and fingerprint never change).
        if holding:
            taking = holds.hold_behind(s, keys, p.id, ps.id, ps.owner_id, now)
        # The attempt's id too, so its row waits for the next round trip with the others.
        reserving = attempt_repo.reserve_id_behind(s)
        p, as_written = _get_proof(s, p.id), False
        if p.attempts:
            raise _Superseded
    if holding and taking is None:
        taking = holds.hold_behind(s, keys, p.id, ps.id, ps.owner_id, now)
    left = False
    if deciding is not None:
        verdict = deciding()
        if verdict.status is Status.requires_review and _paid(ps, reading):
            # SECURITY: a session already paid has no claim to a transfer another open
            # session could take: held for review, it would keep that session's payment
            # from it (any tenant can hand its own paid session a payment it saw on chain).
            # Failed, it holds nothing and the other session takes it.
            verdict = Verdict.fail(
                FailureCode.session_not_open,
                f"session {ps.id} is already paid, and another open session could take this "
                "transfer: left to it",
                observed=verdict.observed,
            )
            left = True
    refused = None
    if taking is not None:
        taken = taking()
        waiting = _review_naming(s, taken, ps.id, verdict.observed) if taken else None
        if waiting is not None:
            # Another proof of this payment is held for review, naming this session among its
            # candidates: this one waits for the staff decision rather than failing. On every
            # rail: a proof of another rail's spelling (a settlement's hash for an x402
            # payload's payment) refused here was stored `failed`, and answered every later
            # submission so, after staff released the review for this session too.
            holds.release(s, p.id)
            verdict = waiting
        elif taken:
            adapter = engine.adapter(engine.rail(ps.rail_id, network=ps.network, asset=ps.asset))
            refused = _Held.of(adapter, taken[0], ps, p.id)
            holds.release(s, p.id)
            verdict = Verdict.fail(
                FailureCode(refused.code),
                refused.message,
                observed={
                    **verdict.observed,
                    "held_by_session_id": taken[0].session_id,
                    "held_by_proof_id": taken[0].proof_id,
                },
            )
        elif left:
            holds.release(s, p.id)
    if verdict.status is Status.verified and _paid(ps, reading):
        verdict = _not_credited(s, p, ps, verdict)
    failure_code = verdict.code.value if verdict.code else None

    def new_state(attempts: int) -> dict[str, Any]:
        return {
            "status": verdict.status.value,
            "failure_code": failure_code,
            "detail": verdict.detail,
            "attempts": attempts,
            "updated_at": now,
            "claimed_until": None,
            "claimed_by": None,
            "next_check_at": _next_check(attempts, verdict, now),
        }

    # Under the proof's row lock (PostgreSQL FOR UPDATE or the UPDATE's own lock, SQLite's
    # write lock): a proof without any attempt was never verified, so it has no settlement
    # evidence (written only with or after a verified attempt), no receipt (the gate requires
    # `verified`) and no event (proof events are written with or after its first attempt).
    if as_written and isinstance(p, Record) and proof_repo.update_unattempted(s, p, new_state(1)):
        first, old = True, None
    else:
        if as_written:
            p = _get_proof(s, p.id)
            if p.attempts:
                raise _Superseded
        first = not p.attempts
        old = None if first else p.status  # a new proof's first attempt always counts
        state = new_state(p.attempts + 1)
        if not first and state["next_check_at"] is None and verdict.status is Status.verified:
            # SECURITY: a credited proof verified again (a reorg sent it back, its transfer
            # was re-included and is final at once) stays under the reorg watch: a second
            # reorg must not go unseen. (A first attempt has no receipt yet.)
            state["next_check_at"] = reorg_watch(engine, s, p.id, p.rail_id, now)
        proof_repo.update(s, p, state)
    if verdict.status is Status.failed and not first and refused is None:
        holds.release(s, p.id)  # a failed proof holds nothing (unless credited)
    # Core insert: the attempt is write-only here; its id comes back from the insert (or was
    # drawn with the proof's lock).
    attempt_id = attempt_repo.insert_attempt(
        s,
        {
            "proof_id": p.id,
            "status": verdict.status.value,
            "failure_code": failure_code,
            "detail": verdict.detail,
            "observed": _redact(verdict.observed),
            "rpc_calls": checked.rpc_calls,
            "latency_ms": checked.latency_ms,
            "source": checked.source,
            "worker": worker,
            "created_at": now,
        },
        reserving() if reserving is not None else None,
    )
    if refused is not None:
        _audit_refusal(engine, s, refused, actor)
    ev = None
    if verdict.status is Status.verified and verdict.settlement is not None:
        ev = record_settlement(engine, s, p, attempt_id, verdict.settlement, checked.source)
    changed = old != p.status
    view = None
    if want_view or (changed and p.status != ProofStatus.pending):
        # One view for every event and the answer: nothing below changes the proof, its
        # settlement or its receipt (emit copies the payload it stores). Made, and the answer
        # given, before the audit append below takes the chain's lock, which every other
        # appender waits on until this transaction commits.
        view = _view_after_attempt(s, p, ev, first)
        if answer is not None and refused is None:
            answer(view)
    if changed:
        if p.status != ProofStatus.pending:
            events.expect(s)  # emitted below
        audit.append(
            s,
            now,
            SYSTEM,
            f"proof.{p.status}",
            "proof",
            p.id,
            {"code": p.failure_code, "attempt_id": attempt_id},
        )
        if p.status != ProofStatus.pending and view is not None:
            events.emit(
                s,
                now,
                f"proof.{p.status}",
                p.owner_id,
                "proof",
                p.id,
                view,
                first_of_resource=first,
            )
            if ev is not None and (ev.is_final or ev.reorged):
                events.emit(
                    s,
                    now,
                    "settlement.reorged" if ev.reorged else "settlement.finalized",
                    p.owner_id,
                    "proof",
                    p.id,
                    view,
                )
    return verdict, view, refused


def _paid(ps: PaymentSession | Record, reading: Callable[[], str | None] | None) -> bool:
    """Whether the session is paid: as read now (`reading`), else as read before."""
    status = reading() if reading is not None else ps.status
    return status == SessionStatus.paid


def _not_credited(
    s: Session, p: Proof | Record, ps: PaymentSession | Record, v: Verdict
) -> Verdict:
    """A verified transfer for a session another proof paid (the payer paid twice): its
    detail says it is not credited, and the answer, `GET /v1/proofs/{id}` and its
    `proof.verified` event carry it, so no backend takes it for access paid. The session's
    own credited proof, verified again (a reorg re-check), keeps its detail."""
    if receipt_repo.id_for_proof(s, p.id) is not None:
        return v
    return v.model_copy(update={"detail": not_credited(v.detail, ps.id)})


def not_credited(detail: str | None, session_id: str) -> str:
    """A verified proof's detail once another transfer paid its session (the gate says so of
    the session's proofs verified before that credit)."""
    said = f"{detail}; " if detail else ""
    return (
        f"{said}not credited: session {session_id} is already paid by another transfer "
        "(refund the payer, or credit it by hand)"
    )


def record_resolved_attempt(
    engine: Engine,
    s: Session,
    p: Proof | Record,
    ps: PaymentSession | Record,
    checked: Checked,
    actor: str,
) -> tuple[Verdict, View | None, _Held | None]:
    """A staff decision's attempt on a proof held for review (`p` under its row lock): the
    chain's verdict recorded as a submission's would be, without the ambiguity check staff
    have just settled (services.reviews)."""
    return _record_attempt(
        engine, s, p, ps, checked, None, want_view=True, actor=actor, resolved=True
    )


def _review_naming(
    s: Session, taken: list[holds.Holder], session_id: str, observed: dict[str, Any]
) -> Verdict | None:
    """Pending, when the proof holding the transfer is held for review with `session_id`
    among its candidates; None otherwise."""
    holder = taken[0]
    attempts = attempt_repo.for_proof(s, holder.proof_id)
    last = attempts[-1] if attempts else None
    if last is None or last.failure_code != FailureCode.ambiguous_transfer.value:
        return None
    found = (last.observed or {}).get("candidate_sessions")
    if not isinstance(found, list) or session_id not in found:
        return None
    return Verdict.wait(
        FailureCode.ambiguous_transfer,
        # Another owner's proof is theirs: named only in the evidence staff read.
        "another proof of this payment is held for review between this session and others; "
        "this proof waits for the decision",
        observed={**observed, "candidate_sessions": found, "held_by_proof_id": holder.proof_id},
    )


MAX_AMOUNT = (1 << 63) - 1  # the sessions' BIGINT amount column


def _paying(
    kind: str | None, verdict: Verdict, payer: str | None
) -> list[tuple[str | None, tuple[str, int] | None]]:
    """What of a verified transfer a session of a rail paid by `kind` of transfer could take:
    (sender, (recipient, amount) or None for the transfer's own). Any transfer: the whole one.
    Only an EIP-3009 authorization: each one it carries, as it paid on its own (a
    transaction may settle several, or transfer more besides); none when it carries none."""
    if kind is None:
        return [(payer, None)]
    prefix = kind + ":"
    found = verdict.observed.get("authorizations")
    parts: list[tuple[str | None, tuple[str, int] | None]] = [
        (str(a["sender"]).lower(), (str(a["recipient"]), int(a["amount"])))
        for a in (found if isinstance(found, list) else [])
        if isinstance(a, dict)
        and str(a.get("key", "")).startswith(prefix)
        # No session asks for more than a stored amount can hold (a node's lie may).
        and 0 < int(a.get("amount", 0)) <= MAX_AMOUNT
    ]
    if parts:
        return parts
    # Its identity alone, with nothing said of what it paid: the transfer's own terms.
    return [(payer, None)] if any(k.startswith(prefix) for k in verdict.transfer_keys) else []


def _unambiguous_behind(
    engine: Engine,
    s: Session,
    ps: PaymentSession | Record,
    verdict: Verdict,
    submitted_at: datetime,
    proof: tuple[str, str],
    payload_claims: bool = False,
) -> Callable[[], Verdict]:
    """A verified transfer counts only when no other open session could take it too (same
    rail, recipient, asset and amount; the payer where a session names one; the transfer
    inside its window; and for a session bound by reference, another session's reference
    among the transfer's keys). Otherwise it is held for review with every candidate named in
    the evidence: amount and treasury never single out a session. The candidates are read
    behind the transaction's next statement (storage.repo.sessions
    `other_open_candidates_behind`): call the answer for the verdict. A payment without a
    chain time (an x402 authorization verified offline) is as of its submission: a session
    opened after the proof was submitted is no candidate."""
    refs = None
    if ps.reference is not None:
        refs = [r for r in verdict.references if r != ps.reference]
        if not refs:  # the usual payment: no other key could be anyone's reference
            return lambda: verdict
    t = epoch_of(verdict.observed.get("block_time"))
    at = datetime.fromtimestamp(t, UTC) if t is not None else utc(submitted_at)
    sender = verdict.observed.get("sender")
    payer = sender.lower() if isinstance(sender, str) else None
    readings = [session_repo.other_open_candidates_behind(s, ps, at, payer, refs)]
    # Proofs that are the payment itself (an x402 authorization): another session's pending
    # one passed every check the payload allows, so it is a claim as good as an open session.
    fp_self, proof_id = proof
    claimed = [fp_self] if payload_claims else []
    if refs is None:
        # SECURITY: one transfer of a token can back a session of any rail paid in it (an
        # x402 payment, or its settlement's hash on Base USDC): those sessions are
        # candidates too, or another tenant's session on the other rail would take it; and
        # so are pending proofs on that rail that are this transfer.
        for rail, adapter in engine.sibling_rails(ps.rail_id, ps.network, ps.asset):
            for sender, paid in _paying(adapter.paid_by, verdict, payer):
                readings.append(
                    session_repo.other_open_candidates_behind(
                        s, ps, at, sender, None, (rail.rail_id, rail.asset), paid
                    )
                )
            for key in verdict.transfer_keys:
                ref = adapter.proof_of(key)
                if ref is not None:
                    claimed += [
                        fingerprint(adapter.family, rail.network, proof_type, ref)
                        for proof_type in adapter.proof_types
                    ]

    def decided() -> Verdict:
        others = [o.id for reading in readings for o in reading()]
        for fp in claimed:
            # SECURITY: a pending proof of the same payment in a session that has expired
            # since (its node did not answer) is still that session's claim. One that failed
            # a check and waits only for finality to fail is none: anyone could submit a
            # settled payment to a session opened after it and send its payer to review.
            pending = proof_repo.pending_claims(s, fp, proof_id, _FAILING)
            others += [c for c in pending if c not in others]
        others = [o for o in others if o != ps.id]
        if not others:
            return verdict
        # SECURITY: first come would be first served with someone else's payment.
        candidates = [ps.id, *others]
        return Verdict.review(
            FailureCode.ambiguous_transfer,
            f"this transfer could back {len(candidates)} open sessions (same recipient, "
            "asset and amount); held for review",
            observed={**verdict.observed, "candidate_sessions": candidates},
            transfer_keys=verdict.transfer_keys,
        )

    return decided


def _view_after_attempt(
    s: Session, p: Proof | Record, ev: SettlementEvidence | Record | None, first: bool
) -> dict[str, Any]:
    """The proof's view from what the attempt has in hand: the evidence it just wrote is the
    latest (written under the proof's row lock); a first attempt has no older evidence and no
    receipt, so only a re-verification asks the database."""
    if first:
        return proof_view(p, ev, None)
    rid = receipt_repo.id_for_proof(s, p.id)
    return proof_view(p, ev if ev is not None else latest_settlement(s, p.id), rid)


def _count(engine: Engine, rail: Rail, checked: Checked, verdict: Verdict) -> None:
    engine.metrics.inc(
        "verification_attempts_total",
        rail_id=rail.rail_id,
        status=verdict.status.value,
        code=verdict.code.value if verdict.code else "",
    )
    engine.metrics.observe(
        "verification_latency_seconds", checked.latency_ms / 1000, rail_id=rail.rail_id
    )
    if verdict.code is FailureCode.rpc_unavailable:
        engine.metrics.inc("rpc_errors_total", network=rail.network, kind="verify")


# A depth-final EVM/Tron settlement can still leave the canonical chain (a deep reorg, a node
# that answered wrongly). Once a receipt depends on it, the worker re-checks it every
# REORG_RECHECK for REORG_WATCH after the receipt, so a reorg under an active entitlement is
# flagged. Commitment-final (Solana `finalized`) settlements are irreversible: not watched.
REORG_RECHECK = timedelta(minutes=10)
REORG_WATCH = timedelta(hours=6)


def watches_reorgs(engine: Engine, rail_id: str) -> bool:
    rail_def = engine.catalog.rails.get(rail_id)
    return rail_def is not None and rail_def.finality.mode == "depth"


def reorg_watch(
    engine: Engine, s: Session, proof_id: str, rail_id: str, now: datetime
) -> datetime | None:
    """Next re-check of a final settlement: only while a receipt depends on it, on a rail
    whose finality is depth-based, within the watch window."""
    if not watches_reorgs(engine, rail_id):
        return None
    created = receipt_repo.created_at_for_proof(s, proof_id)
    if created is None or now >= utc(created) + REORG_WATCH:
        return None
    return now + REORG_RECHECK


def _next_check(attempts: int, verdict: Verdict, now: datetime) -> datetime | None:
    if verdict.status is Status.pending:
        return now + backoff(attempts)
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


def record_settlement(
    engine: Engine, s: Session, p: Proof | Record, attempt_id: int, st: Settlement, source: str
) -> Record:
    row = {
        "proof_id": p.id,
        "attempt_id": attempt_id,
        "finality": st.finality,
        "is_final": st.is_final and not st.reorged,
        "reorged": st.reorged,
        "slot": st.slot,
        "block_number": st.block_number,
        "block_hash": st.block_hash,
        "confirmations": st.confirmations,
        "detail": st.detail,
        "tx_hash": st.tx_hash,
        "block_time": st.block_time,
        "source": source,
        "observed_at": engine.now(),
    }
    # Write-only evidence; the returned record of the row (without its id, which nothing
    # here needs) is not attached to the session: callers only read it for the proof's view.
    settlement_repo.insert_evidence(s, row)
    return Record(row)


def latest_settlement(s: Session, proof_id: str) -> SettlementEvidence | None:
    return settlement_repo.latest(s, proof_id)


def latest_verified_attempt(s: Session, proof_id: str) -> VerificationAttempt | None:
    return attempt_repo.latest_verified(s, proof_id)


def _view(s: Session, p: Proof | Record) -> dict[str, Any]:
    return proof_view(p, latest_settlement(s, p.id), receipt_repo.id_for_proof(s, p.id))


def load_proof(engine: Engine, s: Session, proof_id: str, owners: list[str] | None) -> Proof:
    p = proof_repo.get(s, proof_id)
    if p is not None and owners is not None and p.owner_id not in owners:
        engine.metrics.inc("owner_isolation_denials_total", reason="proof")
        p = None
    if p is None:
        raise NotFound("proof_not_found", f"no proof {proof_id!r}")
    return p


def get_proof(engine: Engine, proof_id: str, owners: list[str] | None) -> dict[str, Any]:
    with engine.db.tx() as s:
        p = load_proof(engine, s, proof_id, owners)
        return {**_view(s, p), "rail_paused": queries.rail_paused(s, p.rail_id)}


def list_proofs(
    engine: Engine, rail_id: str | None = None, status: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    if rail_id is not None and not engine.has_rail(rail_id):
        # A filter on a mistyped rail is not an empty list: "(none)" would read as all clear.
        raise NotFound("rail_not_registered", f"rail_id: no rail {rail_id!r}", field="rail_id")
    with engine.db.tx() as s:
        paused = queries.paused_rails(s)
        return [
            {**_view(s, p), "rail_paused": p.rail_id in paused}
            for p in proof_repo.recent(s, rail_id, status, limit)
        ]


def list_attempts(engine: Engine, proof_id: str) -> list[dict[str, Any]]:
    with engine.db.tx() as s:
        load_proof(engine, s, proof_id, None)
        return [attempt_view(a) for a in attempt_repo.for_proof(s, proof_id)]


def list_evidence(engine: Engine, proof_id: str) -> list[dict[str, Any]]:
    with engine.db.tx() as s:
        load_proof(engine, s, proof_id, None)
        return [evidence_view(e) for e in settlement_repo.for_proof(s, proof_id)]


def count_proofs(engine: Engine) -> int:
    with engine.db.tx() as s:
        return proof_repo.count(s)
