"""Staff decisions on proofs held for review (`requires_review`).

A proof held for review holds its transfer, so nobody else's session can take it, until staff
decide, with an incident id and a reason, as the runbook's RailproofAmbiguousTransfers asks:

- **credit**: the transfer was made for this proof's session. Only an `ambiguous_transfer`
  hold can be credited: the one review railproof itself decides, because another open session
  could take the same transfer. The chain is asked again and must verify the transfer exactly
  as a submission would (recipient, amount, binding, window, finality), with only the
  ambiguity left out, and an x402 authorization's validity as of the proof's submission (it
  expires within minutes): staff pick among sessions, never vouch for a payment. The proof
  is then `verified` and goes through the apply gate like any other. A rail's own review
  (review-only rails, a reference or memo an EVM transfer cannot carry) is never credited
  here, and a proof backing a receipt is neither credited nor released
  (`proof_has_receipt`).
- **release**: the transfer was not made for this session. The proof becomes `failed` with
  the code it was held under and holds nothing any more, so the transfer can be submitted for
  the session it was made for (where it may be held for review again while this session is
  still open, and be credited there).

Each decision is one transaction under the proof's row lock, after checking that the proof
still waits for review: of two concurrent decisions, one is recorded and the other is
refused (`proof_not_in_review`). Both are audited with the operator's context; a credit's
chain answer is also recorded as the proof's verification attempt (its evidence says
`"decision": "credit"`), a release asks the chain nothing and records no attempt.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy.orm import Session

from rails.base import Status
from rails.codes import FailureCode
from verifier.core.checking import Checked
from verifier.core.engine import Engine
from verifier.core.errors import Conflict, NotFound, Refused
from verifier.services import audit, events, proofs
from verifier.services.views import View, proof_view
from verifier.storage.models import Proof, ProofStatus, SessionStatus
from verifier.storage.repo import attempts as attempt_repo
from verifier.storage.repo import holds
from verifier.storage.repo import proofs as proof_repo
from verifier.storage.repo import receipts as receipt_repo
from verifier.storage.repo import sessions as session_repo
from verifier.storage.repo.rows import Record

RELEASED_DETAIL = "released by staff review: not made for this session"


class Decision(StrEnum):
    credit = "credit"
    release = "release"


def resolve_review(engine: Engine, proof_id: str, decision: Decision, op: audit.Operator) -> View:
    """Record the staff decision on a proof held for review; returns the proof's view."""
    audit.require_context(op, "to resolve a review")
    if decision is Decision.release:
        return _release(engine, proof_id, op)
    return _credit(engine, proof_id, op)


def _waiting(p: Proof | Record) -> None:
    if p.status != ProofStatus.requires_review:
        raise Conflict(
            "proof_not_in_review",
            f"the proof is {p.status}, not requires_review: there is nothing to resolve",
        )


def _release(engine: Engine, proof_id: str, op: audit.Operator) -> View:
    now = engine.now()
    with engine.db.tx() as s:
        p = proof_repo.for_attempt(s, proof_id)
        if p is None:
            raise NotFound("proof_not_found", f"no proof {proof_id!r}")
        _waiting(p)
        receipt = receipt_repo.id_for_proof(s, p.id)
        if receipt is not None:
            # SECURITY: a receipt's transfer stays its own; the entitlement it activated is
            # revoked through its own path, never by failing the proof under it.
            raise Conflict(
                "proof_has_receipt",
                f"the proof backs receipt {receipt}: it cannot be released; revoke the "
                "entitlement (revoke-entitlement) if the payment was not for this session",
            )
        code = p.failure_code
        # The tenant reads this detail (and gets it in proof.failed): a fixed text, never the
        # staff's incident id or reason, which stay on the audit row.
        detail = RELEASED_DETAIL
        proof_repo.update(
            s,
            p,
            {
                "status": ProofStatus.failed.value,
                "detail": detail,
                "updated_at": now,
                "claimed_by": None,
                "claimed_until": None,
                "next_check_at": None,
            },
        )
        # SECURITY: the transfer is free again for the session it was made for.
        holds.release(s, p.id)
        view = proof_view(p, proofs.latest_settlement(s, p.id), None)
        audit.append(
            s,
            now,
            op,
            "proof.review_released",
            "proof",
            p.id,
            {"code": code, "session_id": p.session_id},
        )
        events.emit(s, now, "proof.failed", p.owner_id, "proof", p.id, view)
    return view


def _credit(engine: Engine, proof_id: str, op: audit.Operator) -> View:
    with engine.db.tx() as s:
        p = proof_repo.get(s, proof_id)
        if p is None:
            raise NotFound("proof_not_found", f"no proof {proof_id!r}")
        _waiting(p)
        _ambiguous(p.failure_code)
        ps = session_repo.get(s, p.session_id)
        assert ps is not None  # a proof's session is never deleted (foreign key)
        held = _hold(s, p.id)
    rail = engine.rail(ps.rail_id, network=ps.network, asset=ps.asset)
    adapter = engine.adapter(rail)
    # The chain decides again, outside any transaction, as for a submission. An x402
    # authorization's window is checked as of the proof's submission, not of when staff
    # decide: one valid for a minute would otherwise never be creditable after the hour a
    # review may wait (unused on chain by now, it is refused: it can no longer settle).
    terms = proofs.terms_for(engine, ps, adapter, p.created_at)
    checked = engine.chains.verify(adapter, p.raw, terms)
    verdict = checked.verdict
    if verdict.status is not Status.verified:
        code = verdict.code.value if verdict.code else None
        raise Conflict(
            "review_not_verified",
            f"the chain does not verify this transfer now ({verdict.status.value}, {code}): "
            "nothing changed; try again when it does, or release it",
        )
    with engine.db.tx() as s:
        # SECURITY: read FOR SHARE first in the transaction, as every path that acts on a rail
        # does, so a pause either waits for this credit or is seen by it: once pause-rail has
        # answered, no credit of that rail commits (a session's rail never changes).
        state = engine.rail_state_read(s, ps.rail_id)
        locked = proof_repo.for_attempt(s, proof_id)
        assert locked is not None  # a proof row is never deleted
        _waiting(locked)  # another decision may have been recorded meanwhile
        _ambiguous(locked.failure_code)
        session = session_repo.get(s, locked.session_id, lock=True)
        assert session is not None
        paid = receipt_repo.for_session(s, session.id)
        if paid is not None and paid.proof_id == locked.id:
            raise Conflict(
                "proof_has_receipt",
                f"the proof already backs receipt {paid.id}: there is nothing to credit",
            )
        if session.status == SessionStatus.paid or paid is not None:
            raise Conflict(
                "session_already_paid",
                "the proof's session is already paid by another transfer: release this one",
            )
        if state.paused:
            raise Refused(
                FailureCode.rail_paused,
                f"rail {session.rail_id} is paused: no review is credited while it is",
            )
        staff = Checked(
            verdict.model_copy(
                update={"observed": {**verdict.observed, "decision": Decision.credit.value}}
            ),
            checked.rpc_calls,
            checked.latency_ms,
            checked.source,
        )
        recorded, view, refused = proofs.record_resolved_attempt(
            engine, s, locked, session, staff, op.actor
        )
        if refused is not None or recorded.status is not Status.verified:  # pragma: no cover
            # Defensive: the proof held every identity of its transfer while in review, so no
            # other proof can hold one now. Raising rolls the attempt back.
            raise Conflict("review_not_verified", "another proof holds this transfer")
        audit.append(
            s,
            engine.now(),
            op,
            "proof.review_credited",
            "proof",
            locked.id,
            {
                "session_id": locked.session_id,
                "candidate_sessions": held.candidates,
            },
        )
    assert view is not None
    return view


def _ambiguous(code: str | None) -> None:
    # SECURITY: only the ambiguity railproof decides itself is staff's to lift; a rail's own
    # review (review-only, an unprovable reference or memo) is never credited by hand here.
    if code != FailureCode.ambiguous_transfer.value:
        raise Conflict(
            "review_not_ambiguous",
            f"the proof waits for review as {code}, a rule of its rail: it can be released, "
            "not credited",
        )


@dataclass(frozen=True)
class _Hold:
    candidates: list[str]  # the sessions the review named


def _hold(s: Session, proof_id: str) -> _Hold:
    """The proof's latest ambiguous attempt: whom it named."""
    for a in reversed(attempt_repo.for_proof(s, proof_id)):
        if a.failure_code == FailureCode.ambiguous_transfer.value:
            found = (a.observed or {}).get("candidate_sessions")
            return _Hold(list(found) if isinstance(found, list) else [])
    raise Conflict("proof_not_in_review", "the proof has no review to resolve")  # pragma: no cover
