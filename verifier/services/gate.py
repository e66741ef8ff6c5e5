"""The apply gate: where a verified payment becomes a receipt and an active entitlement.

`dry_run_apply` evaluates every check and reports all of them (never stopping at the first);
`apply` evaluates the same checks inside one transaction and then creates the receipt,
activates the entitlement, marks the session paid and writes the audit events — or, on any
blocker or error, does nothing at all. A blocker's code is the name of the check that failed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy.orm import Session

from rails.base import fingerprint
from rails.codes import FailureCode
from rails.errors import ProofMalformed
from registry.catalog import Stage
from verifier.core.engine import Engine
from verifier.core.errors import BadInput, Conflict, EngineError, NotFound, Refused
from verifier.core.timeutil import epoch_of, utc
from verifier.services import audit, events, reconciliation
from verifier.services.proofs import (
    REORG_RECHECK,
    latest_settlement,
    latest_verified_attempt,
    load_proof,
    not_credited,
    terms_for,
    watches_reorgs,
)
from verifier.services.views import entitlement_view, proof_view, receipt_view
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
    VerificationAttempt,
    new_id,
)
from verifier.storage.reconciliation_models import ReconciliationResolution
from verifier.storage.repo import attempts as attempt_repo
from verifier.storage.repo import entitlements as entitlement_repo
from verifier.storage.repo import holds
from verifier.storage.repo import proofs as proof_repo
from verifier.storage.repo import receipts as receipt_repo
from verifier.storage.repo import sessions as session_repo
from verifier.storage.repo import settlements as settlement_repo
from verifier.storage.repo.rows import Record


class Via(StrEnum):
    auto = "auto"  # the service or worker, no human in the loop
    staff = "staff"  # a staff member applying (POST /v1/admin/proofs/{id}/apply)
    staff_receipt = "staff_receipt"  # staff receipt creation (POST …/receipt): gated rails' path


# A dry run's path as staff name it (POST …/dry-run-apply `path`, `--receipt-path`).
PATHS = {Via.staff: "apply", Via.staff_receipt: "receipt", Via.auto: "auto"}


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class _Rows:
    """The rows the checks read, for the report and the apply that follow them."""

    settlement: SettlementEvidence | Record | None = None
    session: PaymentSession | None = None
    entitlement: Entitlement | None = None
    receipt: Receipt | None = None
    # What `transfer_not_sent_back` asked about (read again under the chain's lock).
    claim: reconciliation.Claimed | None = None


class _Reads:
    """Where the checks find the rows they read besides the proof and its session: one query
    each here (one proof's apply or dry run); `_Prefetched` answers from what an apply batch
    read for all of its proofs at once."""

    def settlement(self, s: Session, proof_id: str) -> SettlementEvidence | Record | None:
        return latest_settlement(s, proof_id)

    def entitlement(self, s: Session, session_id: str) -> Entitlement | None:
        return entitlement_repo.for_session(s, session_id)

    def receipt_for_session(self, s: Session, session_id: str) -> Receipt | None:
        return receipt_repo.for_session(s, session_id)

    def receipt_for_proof(self, s: Session, proof_id: str) -> Receipt | None:
        return receipt_repo.for_proof(s, proof_id)

    def verified_attempt(self, s: Session, proof_id: str) -> VerificationAttempt | Record | None:
        return latest_verified_attempt(s, proof_id)

    def claim(
        self, s: Session, engine: Engine, p: Proof, ps: PaymentSession | None
    ) -> reconciliation.Claimed:
        return claimed(engine, p, ps, self.verified_attempt(s, p.id), self.settlement(s, p.id))

    def sent_back(
        self, s: Session, claim: reconciliation.Claimed
    ) -> ReconciliationResolution | None:
        return reconciliation.sent_back(s, [claim]).get(claim.proof_id)


def network_rails(engine: Engine) -> dict[str, tuple[str, ...]]:
    """The catalog's rails by the network each is configured on."""
    out: dict[str, list[str]] = {}
    for rail_id in engine.catalog.rails:
        try:
            network = engine.rail(rail_id).network
        except (BadInput, ValueError):
            # A rail this deployment's overrides leave unusable takes no session, and must
            # not stop another rail's apply (as Engine.sibling_rails).
            continue
        out.setdefault(network, []).append(rail_id)
    return {network: tuple(rails) for network, rails in out.items()}


def current_networks(engine: Engine, rail_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Each rail's (network, asset) as this deployment resolves it now: what
    `rail_network_current` holds a proof's session to. Rails that cannot be resolved are
    left out (every proof of theirs is blocked)."""
    out = {}
    for rail_id in rail_ids:
        try:
            rail = engine.rail(rail_id)
        except (BadInput, ValueError):
            continue
        out[rail_id] = (rail.network, rail.asset)
    return out


def claimed(
    engine: Engine,
    p: Proof | Record,
    ps: PaymentSession | Record | None,
    attempt: VerificationAttempt | Record | None,
    settled: SettlementEvidence | Record | None,
    by_network: dict[str, tuple[str, ...]] | None = None,
) -> reconciliation.Claimed:
    """What `transfer_not_sent_back` asks reconciliation's resolutions about this proof: its
    transaction is the one verification observed, or else the one its settlement was found
    in (an x402 payment verified before it was settled)."""
    observed = (attempt.observed if attempt is not None else None) or {}
    tx = observed.get("tx_hash") or (settled.tx_hash if settled is not None else None)
    rails: tuple[str, ...] = (p.rail_id,)
    by_network = by_network if by_network is not None else network_rails(engine)
    for network_of in by_network.values():
        if p.rail_id in network_of:
            rails = network_of
    return reconciliation.Claimed(
        proof_id=p.id,
        rail_id=p.rail_id,
        ref=p.ref,
        tx=tx.lower() if isinstance(tx, str) and tx.startswith("0x") else None,
        payer=(ps.payer if ps is not None else None) or _evm_sender(observed),
        rails=rails,
    )


def _evm_sender(observed: Mapping[str, object]) -> str | None:
    """The one EVM address verification saw paying (an x402 authorization's `from`), for a
    session that names no payer: another payer's log of a batched settlement, sent back, is
    not this payment's. None for anything else (a Solana transfer's senders are not one
    address: its resolutions stand)."""
    sender = observed.get("sender")
    if isinstance(sender, str) and len(sender) == 42 and sender[:2].lower() == "0x":
        return sender
    return None


_ONE_BY_ONE = _Reads()


def sent_back_of(engine: Engine, proof_ids: Sequence[str]) -> set[str]:
    """Which of these proofs `transfer_not_sent_back` blocks (read in one transaction)."""
    with engine.db.tx() as s:
        return set(reconciliation.sent_back(s, claims_of(s, engine, proof_ids)))


def claims_of(s: Session, engine: Engine, proof_ids: Sequence[str]) -> list[reconciliation.Claimed]:
    """`claimed` for each of these proofs, read in one query per table."""
    targets = proof_repo.finality_targets(s, proof_ids)
    attempts = attempt_repo.latest_verified_many(s, proof_ids)
    settled = settlement_repo.latest_many(s, proof_ids)
    by_network = network_rails(engine)
    return [
        claimed(engine, t, t, attempts.get(t.id), settled.get(t.id), by_network) for t in targets
    ]


class _Prefetched(_Reads):
    """The same rows for many proofs, one query per table, read once their proofs and
    sessions are locked (`apply_many`): the answers of `_Reads` for each of them, provided
    no proof of the batch shares its session with another (a credit changes what the next
    proof of that session would read)."""

    def __init__(
        self,
        s: Session,
        engine: Engine,
        proofs: list[Proof],
        sessions: dict[str, PaymentSession],
    ):
        proof_ids = [p.id for p in proofs]
        session_ids = list(sessions)
        self._settlements = settlement_repo.latest_many(s, proof_ids)
        self._entitlements = entitlement_repo.for_sessions(s, session_ids)
        receipts = receipt_repo.touching(s, proof_ids, session_ids)
        self._by_proof = {r.proof_id: r for r in receipts}
        self._by_session = {r.session_id: r for r in receipts}
        self._attempts = attempt_repo.latest_verified_many(s, proof_ids)
        by_network = network_rails(engine)
        self._claims = {
            p.id: claimed(
                engine,
                p,
                sessions.get(p.session_id),
                self._attempts.get(p.id),
                self._settlements.get(p.id),
                by_network,
            )
            for p in proofs
        }
        self._sent_back = reconciliation.sent_back(s, self._claims.values())

    def settlement(self, s: Session, proof_id: str) -> SettlementEvidence | Record | None:
        return self._settlements.get(proof_id)

    def entitlement(self, s: Session, session_id: str) -> Entitlement | None:
        return self._entitlements.get(session_id)

    def receipt_for_session(self, s: Session, session_id: str) -> Receipt | None:
        return self._by_session.get(session_id)

    def receipt_for_proof(self, s: Session, proof_id: str) -> Receipt | None:
        return self._by_proof.get(proof_id)

    def verified_attempt(self, s: Session, proof_id: str) -> VerificationAttempt | Record | None:
        return self._attempts.get(proof_id)

    def claim(
        self, s: Session, engine: Engine, p: Proof, ps: PaymentSession | None
    ) -> reconciliation.Claimed:
        return self._claims[p.id]

    def sent_back(
        self, s: Session, claim: reconciliation.Claimed
    ) -> ReconciliationResolution | None:
        return self._sent_back.get(claim.proof_id)


def _evaluate(
    engine: Engine,
    s: Session,
    p: Proof,
    via: Via,
    st: RailState | Record | None = None,
    reads: _Reads = _ONE_BY_ONE,
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

    ev = reads.settlement(s, p.id)
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
    add("rail_network_current", *_on_current_network(engine, s, p, registered))
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
    ok, detail = _tuple_bound(engine, s, p, ctx, reads)
    add("tuple_bound", ok, detail)
    # SECURITY: money staff sent back to the payer (or found not a payment of ours) in
    # reconciliation is never credited afterwards, whoever submits the transfer and when.
    ctx.claim = reads.claim(s, engine, p, ctx.session)
    checks.append(_not_sent_back(reads.sent_back(s, ctx.claim)))
    # SECURITY: a payment settled by a transaction that is another proof's own (a Base USDC
    # proof of an x402 facilitator's settlement) is one payment. Holds name both since
    # transfer holds exist; a proof credited before them holds only its own fingerprint.
    elsewhere = _settled_as_another_proof(engine, s, p, ctx)
    add(
        "settlement_not_another_proof",
        elsewhere is None,
        "the settling transaction is no other proof's payment"
        if elsewhere is None
        else f"{FailureCode.duplicate_payment}: the transaction that settled it is proof "
        f"{elsewhere.proof_id} (session {elsewhere.session_id})",
    )
    return checks, ctx


def _not_sent_back(back: ReconciliationResolution | None) -> Check:
    return Check(
        "transfer_not_sent_back",
        back is None,
        "no reconciliation resolution sent it back"
        if back is None
        else f"resolved {back.resolution} in reconciliation (finding {back.finding_id}, "
        f"incident {back.incident_id}, by {back.staff})",
    )


def _sent_back_meanwhile(
    s: Session, credits: Sequence[tuple[Proof, _Rows]]
) -> dict[str, ReconciliationResolution]:
    """The proofs of these credits whose money a resolution sent back since the gate read.

    SECURITY: call it once the audit chain's lock is held (the credit's first append). A
    resolution appends under the same lock, held to its commit, then asks whether a receipt
    credits the transfer (reconciliation.resolve_finding): one that took the lock first has
    committed, and is seen here; one that takes it after this credit commits sees the
    receipt. Its first lookup, before any lock, cannot find a proof submitted after it (an
    orphan's transfer) to wait for: without this read both would stand. One query for all."""
    claims = [ctx.claim for _, ctx in credits if ctx.claim is not None]
    return reconciliation.sent_back(s, claims)


def _settled_as_another_proof(
    engine: Engine, s: Session, p: Proof, ctx: _Rows
) -> holds.Holder | None:
    """Another proof holding, as its own proof, the transaction this proof's settlement was
    found in (a payment verified before it settled: an x402 authorization)."""
    ev, ps = ctx.settlement, ctx.session
    tx = ev.tx_hash if ev is not None else None
    if not tx or ps is None:
        return None
    keys = []
    for rail, adapter in engine.sibling_rails(p.rail_id, ps.network, ps.asset):
        for proof_type in adapter.proof_types:
            try:
                ref = adapter.normalize_proof(proof_type, tx)
            except ProofMalformed:
                continue
            keys.append(
                holds.fingerprint_key(fingerprint(rail.family, rail.network, proof_type, ref))
            )
    for h in holds.holders(s, keys):
        # A proof verified since transfer holds exist holds every identity it counted (its
        # transfers', the authorizations it settled): one that does not name this payment's
        # was not this payment (a settlement of several authorizations). Only a proof that
        # holds its fingerprint alone, credited before holds, cannot tell.
        if h.proof_id != p.id and holds.keys_of(s, h.proof_id) == [h.transfer_key]:
            return h
    return None


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


def _same_address(a: str, b: str) -> bool:
    return a == b or (a[:2].lower() == "0x" and a.lower() == b.lower())


def _on_current_network(engine: Engine, s: Session, p: Proof, registered: bool) -> tuple[bool, str]:
    """The session was opened on the network and token its rail uses now. A rail resolved
    from the catalog and this deployment's overrides (RAILPROOF_NETWORK_<RAIL>,
    RAILPROOF_ASSET_<RAIL>) that cannot be resolved any more fails here, as a check."""
    if not registered:
        return False, "rail not in the catalog"
    ps = session_repo.get(s, p.session_id)
    if ps is None:
        return False, "session missing"
    try:
        rail = engine.rail(p.rail_id)
    except (BadInput, ValueError) as e:
        return False, f"the rail cannot be resolved as configured: {e}"
    # SECURITY: a session opened while the rail ran on another network or token (its test
    # network, staged by RAILPROOF_NETWORK_<RAIL>, before the switch to mainnet) was paid
    # in that network's token, worth nothing here: it never becomes a receipt, whoever
    # applies it and whatever the chain showed.
    if ps.network != rail.network or not _same_address(ps.asset, rail.asset):
        return (
            False,
            f"session on {ps.network} ({ps.asset}); the rail is on {rail.network} "
            f"({rail.asset}) now",
        )
    return True, f"{rail.network} ({rail.asset})"


def _tuple_bound(
    engine: Engine, s: Session, p: Proof, ctx: _Rows, reads: _Reads
) -> tuple[bool, str]:
    """proof ↔ session ↔ owner ↔ product ↔ receipt all agree, and the chain paid what the
    session asked, to whom it asked, on its rail."""
    ps = session_repo.get(s, p.session_id)
    ent = reads.entitlement(s, p.session_id)
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
    receipt_for_session = reads.receipt_for_session(s, ps.id)
    receipt_for_proof = reads.receipt_for_proof(s, p.id)
    ctx.receipt = receipt_for_proof
    if receipt_for_session is not None and receipt_for_session.proof_id != p.id:
        problems.append("session already paid by another proof")
    if receipt_for_proof is not None and receipt_for_proof.session_id != ps.id:
        problems.append("proof already backs another session")
    if ps.status != SessionStatus.open and not (
        ps.status == SessionStatus.paid and receipt_for_proof is not None
    ):
        problems.append(f"session is {ps.status}")
    att = reads.verified_attempt(s, p.id)
    if att is None:
        problems.append("no verified attempt")
    else:
        obs = att.observed or {}
        if str(obs.get("amount")) != str(ps.amount):
            problems.append(f"observed amount {obs.get('amount')} != session {ps.amount}")
        rcpt = str(obs.get("recipient") or "")
        if rcpt.lower() != ps.recipient.lower():
            problems.append("observed recipient differs from session recipient")
        # SECURITY: the token moved is the one the session asked for (a hex address in any
        # case; a Solana mint exactly).
        seen = obs.get("asset")
        if seen is not None and not _same_address(str(seen), ps.asset):
            problems.append("observed asset differs from the session's asset")
        # SECURITY: a session that names its payer binds the transfer's sender.
        if ps.payer and str(obs.get("sender") or "").lower() != ps.payer.lower():
            problems.append("observed sender differs from the session's payer")
        problems += _outside_window(engine, p, ps, _chain_time(obs, ctx.settlement))
    if problems:
        return False, "; ".join(problems)
    return True, "owner, session, product, amount, recipient and rail agree"


def _chain_time(
    observed: Mapping[str, object], ev: SettlementEvidence | Record | None
) -> float | None:
    """When the chain says the payment was made: its verification's block time, else (a
    payment verified before it settled, x402) its settlement evidence's block time."""
    seen = epoch_of(observed.get("block_time"))
    if seen is None and ev is not None and ev.block_time is not None:
        return utc(ev.block_time).timestamp()
    return seen


def _outside_window(
    engine: Engine, p: Proof, ps: PaymentSession | Record, chain_time: float | None
) -> list[str]:
    """Why the payment is outside the session's window, read as its rail reads it: the window
    its verification had (a generated reference's skew included), the chain's margin, and a
    payment made at its submission (x402) checked at that time."""
    if not engine.has_rail(ps.rail_id):
        return []  # rail_registered blocks it already
    try:
        adapter = engine.adapter(engine.rail(ps.rail_id, network=ps.network, asset=ps.asset))
    except (BadInput, ValueError):
        # The session's network or token was retired from the catalog (a testnet at a
        # mainnet launch): rail_network_current blocks it; reported, never raised, so a dry
        # run still answers and an apply batch is not failed by it.
        return [f"the session's network or token ({ps.network}, {ps.asset}) is not in the catalog"]
    terms = terms_for(engine, ps, adapter, p.created_at)
    assert terms.not_before is not None and terms.not_after is not None
    # Chain times are whole seconds: compare at that resolution, as the adapters do.
    start = int(terms.not_before.timestamp()) - adapter.chain_time_margin_s
    end = terms.not_after.timestamp()
    problems = []
    if adapter.paid_at_submission:
        # SECURITY: handed over after the session closed, it is not this session's payment,
        # whenever it settled.
        if utc(p.created_at) > terms.not_after:
            problems.append("proof submitted after the session expired")
        # SECURITY: a settlement is public once mined; one whose time is unknown may be a
        # payment made before the session existed, which it cannot take.
        if chain_time is None:
            problems.append("settlement time unknown: not checked against the session's window")
        elif chain_time < start:
            problems.append("settled before the session opened")
    elif chain_time is not None and not start <= chain_time <= end:
        problems.append("transfer time outside the session window")
    return problems


def _report(p: Proof, checks: list[Check], ctx: _Rows) -> dict[str, Any]:
    blockers = [{"code": c.name, "detail": c.detail} for c in checks if not c.passed]
    # A receipt whose entitlement is pending is a credit half written: apply finishes it.
    applied = ctx.receipt is not None and not _half_credited(p, ctx)
    ent = ctx.entitlement
    would = not blockers and not applied
    return {
        "proof_id": p.id,
        "rail_id": p.rail_id,
        "would_apply": would,
        "would_create_receipt": would and ctx.receipt is None,
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
                    # Which path was evaluated: a gated rail's proof passes on the receipt path
                    # and is blocked on the apply path; the row must say which it answered.
                    "path": PATHS[via],
                    "would_apply": report["would_apply"],
                    "blockers": [b["code"] for b in report["blockers"]],
                },
            )
    return report


def apply(
    engine: Engine,
    proof_id: str,
    op: audit.Operator,
    via: Via = Via.staff,
    on_credit: Callable[[Session, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Apply inside one transaction. Idempotent: an applied proof returns its receipt again.
    `on_credit(s, result)`: called in that transaction when this apply credits (creates the
    receipt, or finishes a half-written credit), never for an already applied proof, so what
    it writes (an assurance repair's audit row) commits with the credit or not at all."""
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
        # Then the proof's row and its session's, locked in that order (PostgreSQL); with the
        # proof, in id order, the session's other verified (and pending) proofs without a
        # receipt, told they are not credited should this apply pay the session (a pending
        # one's attempt may be recording it verified, its session read open: locked, it is
        # seen as it commits). Before the session, as
        # apply_many locks them: no two appliers wait on each other's proofs.
        siblings = proof_repo.unapplied_siblings(s, [proof_id])
        if siblings:
            held = {q.id: q for q in proof_repo.lock_many(s, [proof_id, *siblings])}
            p, others = held.get(proof_id), [held[i] for i in siblings if i in held]
        else:
            p, others = proof_repo.get(s, proof_id, lock=True), []
        assert p is not None  # a proof row is never deleted
        ps = session_repo.get(s, p.session_id, lock=True)
        assert ps is not None  # nor its session (foreign key)
        checks, ctx = _evaluate(engine, s, p, via, st)
        report = _report(p, checks, ctx)
        if ctx.receipt is not None and not _half_credited(p, ctx):
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
            # Refused because another proof paid the session meanwhile (its credit could not
            # wait for this proof's row, which this apply held): told, as that credit would
            # have told it, never left reading as a payment waiting to be applied.
            _tell_paid_elsewhere(s, engine.now(), [(p, ps)])
        elif ctx.receipt is not None:
            # The proof's receipt stands but its entitlement is still pending (a credit half
            # written: restored from a backup taken mid-way, or edited by hand). Every check
            # passed again: the credit is finished, as assurance's repair says.
            blocked = None
            now = engine.now()
            # Before the audit chain's lock: a finality sweep holding a late sibling's row
            # waits for that lock, and would wait for this credit while it waits for the row.
            late = proof_repo.late_siblings(s, [proof_id], siblings)
            r = ctx.receipt
            ent = _activate(engine, p, ps, ctx, r, now)
            audit.append(
                s,
                now,
                op,
                "entitlement.activated",
                "entitlement",
                ent.id,
                {"receipt_id": r.id, "owner_id": ent.owner_id, "completed_credit": True},
            )
            _refuse_sent_back_meanwhile(engine, s, p, checks, ctx)
            _emit_activated(s, now, ent)
            _tell_not_credited(s, now, {ps.id}, [*others, *late])
            result = {
                "applied": True,
                "already_applied": False,
                "receipt_id": r.id,
                "entitlement_id": ent.id,
            }
            if on_credit is not None:
                on_credit(s, result)
        else:
            blocked = None
            now = engine.now()
            late = proof_repo.late_siblings(s, [proof_id], siblings)  # before the chain's lock
            r = _receipt(p, ps, ctx, op, now)
            receipt_repo.add(s, r)
            if engine.fail_after_receipt_insert:
                raise RuntimeError("injected failure after receipt insert")
            ent = _activate(engine, p, ps, ctx, r, now)
            _audit_credit(s, now, op, via, p, ps, r, ent)
            _refuse_sent_back_meanwhile(engine, s, p, checks, ctx)
            _emit_credit(s, now, r, ent, via)
            _tell_not_credited(s, now, {ps.id}, [*others, *late])
            result = {
                "applied": True,
                "already_applied": False,
                "receipt_id": r.id,
                "entitlement_id": ent.id,
            }
            if on_credit is not None:
                on_credit(s, result)
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


def _refuse_sent_back_meanwhile(
    engine: Engine, s: Session, p: Proof, checks: list[Check], ctx: _Rows
) -> None:
    """`apply`'s credit, once the chain's lock is held: refused as the gate refuses a
    transfer sent back (`transfer_not_sent_back`) when a resolution sent it back meanwhile,
    raised inside the transaction so nothing of the credit is written."""
    back = _sent_back_meanwhile(s, [(p, ctx)]).get(p.id)
    if back is None:
        return
    report = _report(
        p, [_not_sent_back(back) if c.name == "transfer_not_sent_back" else c for c in checks], ctx
    )
    engine.metrics.inc(
        "apply_gate_blocks_total", rail_id=p.rail_id, blocker="transfer_not_sent_back"
    )
    raise Refused(
        "apply_blocked",
        "apply gate blocked: transfer_not_sent_back",
        extra={"report": report},
    )


def _tell_paid_elsewhere(
    s: Session, now: datetime, refused: Sequence[tuple[Proof, PaymentSession]]
) -> None:
    """Refused proofs whose session another proof has paid: `_tell_not_credited` for them.
    A credit tells the session's other verified proofs itself, but one whose row another
    transaction held past `late_siblings`' wait (an apply of that very proof, waiting for the
    credit's rows) is told here, by that apply, once it sees the session paid."""
    paid = [(p, ps) for p, ps in refused if ps.status == SessionStatus.paid]
    if paid:
        _tell_not_credited(s, now, {ps.id for _, ps in paid}, [p for p, _ in paid])


def _tell_not_credited(s: Session, now: datetime, paid: set[str], others: Sequence[Proof]) -> None:
    """The paid sessions' other verified proofs without a receipt (the payer paid twice, and
    both transfers were verified before this credit), locked with the credited ones: their
    detail now says they are not credited, as it says of a transfer verified after the credit
    (services.proofs), and a `proof.verified` event carries it to the tenant, so none reads as
    a payment waiting to be applied, nor does its later `settlement.finalized`."""
    told = [
        q
        for q in others
        if q.session_id in paid
        and q.status == ProofStatus.verified
        and q.applied_at is None
        and not (q.detail or "").endswith(not_credited(None, q.session_id))
    ]
    if not told:
        return
    proof_repo.update_many(
        s, [(q, {"detail": not_credited(q.detail, q.session_id), "updated_at": now}) for q in told]
    )
    ids = [q.id for q in told]
    settled = settlement_repo.latest_many(s, ids)
    events.prime_sequences(s, "proof", ids)  # one query for all of them
    for q in told:
        view = proof_view(q, settled.get(q.id), None)
        events.emit(s, now, "proof.verified", q.owner_id, "proof", q.id, view)


def _half_credited(p: Proof, ctx: _Rows) -> bool:
    """The proof's own receipt with its session's entitlement still pending."""
    r, ent = ctx.receipt, ctx.entitlement
    return (
        r is not None
        and r.proof_id == p.id
        and ent is not None
        and ent.status == EntitlementStatus.pending
        and ent.receipt_id in (None, r.id)
    )


def _receipt(
    p: Proof, ps: PaymentSession, ctx: _Rows, op: audit.Operator, now: datetime
) -> Receipt:
    ev = ctx.settlement
    assert ev is not None  # settlement_final passed
    return Receipt(
        id=new_id(),
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


def _activate(
    engine: Engine, p: Proof, ps: PaymentSession, ctx: _Rows, r: Receipt, now: datetime
) -> Entitlement:
    """The entitlement active under the receipt, the session paid (flushed with the
    transaction's next statement)."""
    ent = ctx.entitlement
    assert ent is not None  # tuple_bound passed
    ent.status = EntitlementStatus.active
    ent.receipt_id = r.id
    ent.updated_at = now
    ps.status = SessionStatus.paid
    ps.paid_at = now
    p.applied_at = now  # out of the apply sweep's index (storage.models UNAPPLIED_SQL)
    if watches_reorgs(engine, p.rail_id):
        p.next_check_at = now + REORG_RECHECK
    return ent


def _audit_credit(
    s: Session,
    now: datetime,
    op: audit.Operator,
    via: Via,
    p: Proof,
    ps: PaymentSession,
    r: Receipt,
    ent: Entitlement,
) -> None:
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
    audit.append(s, now, op, "proof.applied", "proof", p.id, {"receipt_id": r.id, "via": via.value})


def _emit_credit(s: Session, now: datetime, r: Receipt, ent: Entitlement, via: Via) -> None:
    view = receipt_view(r)
    if via is not Via.auto:
        # SECURITY: staff identities are staff-only data (the audit log keeps the name, the
        # incident and the reason); the tenant is told only that staff created the receipt.
        view["created_by"] = "staff"
    # The receipt was created in this transaction: no event about it can exist yet.
    events.emit(
        s,
        now,
        "receipt.created",
        r.owner_id,
        "receipt",
        r.id,
        view,
        first_of_resource=True,
    )
    _emit_activated(s, now, ent)


def _emit_activated(s: Session, now: datetime, ent: Entitlement) -> None:
    events.emit(
        s, now, "entitlement.activated", ent.owner_id, "entitlement", ent.id, entitlement_view(ent)
    )


def apply_many(
    engine: Engine, proof_ids: Sequence[str], op: audit.Operator, via: Via = Via.auto
) -> int:
    """`apply` for many proofs in one transaction (the worker's apply sweep): the same checks
    on the same rows, read with one query per table rather than several per proof, the
    receipts and the rows they change written in one flush, one commit. Proofs that share a
    session with another of the batch are applied one by one after it, in the order given
    (the first to pass pays the session; the next ones meet its receipt, as they would in
    turn). A proof blocked by a check is left as it is and counted as `apply` counts it.
    Anything else that goes wrong rolls the whole batch back and is raised: the caller then
    applies proof by proof. Returns how many proofs are applied (already applied ones
    included, as `apply` answers them)."""
    ids = list(dict.fromkeys(proof_ids))
    blocked: list[tuple[str, list[str]]] = []
    credited: list[str] = []
    applied = 0
    alone: list[str] = []
    with engine.db.tx() as s:
        rails = proof_repo.rail_ids_of(s, ids)
        # Verified (and pending, see `apply`) proofs without a receipt sharing a session with
        # the batch's, not in it (a payer's second transfer): one query, most batches have
        # none. Told they are not credited when the batch pays their session
        # (`_tell_not_credited`).
        siblings = proof_repo.unapplied_siblings(s, list(rails))
        # SECURITY: the rails' states first, under their share locks, then the proofs' and
        # the sessions' rows, then the audit chain's lock: the order `apply` takes them in
        # (see there), each set locked in id order.
        states = {
            rid: engine.rail_state_read(s, rid) if engine.has_rail(rid) else None
            for rid in sorted(set(rails.values()))
        }
        held = {p.id: p for p in proof_repo.lock_many(s, [*rails, *siblings])}
        locked = {pid: p for pid, p in held.items() if pid in rails}
        others = [held[pid] for pid in siblings if pid in held]
        shared = Counter(p.session_id for p in locked.values())
        alone = [pid for pid in ids if pid in locked and shared[locked[pid].session_id] > 1]
        batch = [locked[pid] for pid in ids if pid in locked and pid not in alone]
        sessions = {ps.id: ps for ps in session_repo.lock_many(s, [p.session_id for p in batch])}
        reads = _Prefetched(s, engine, batch, sessions)
        now = engine.now()
        passed: list[tuple[Proof, PaymentSession, _Rows, Receipt]] = []
        refused: list[tuple[Proof, PaymentSession]] = []
        for p in batch:
            checks, ctx = _evaluate(engine, s, p, via, states.get(p.rail_id), reads)
            if ctx.receipt is not None:
                applied += 1  # already applied: `apply` answers it again
                continue
            failed = [c.name for c in checks if not c.passed]
            if failed:
                blocked.append((p.rail_id, failed))
                refused.append((p, sessions[p.session_id]))
                continue
            ps = sessions[p.session_id]
            passed.append((p, ps, ctx, receipt_repo.stage(s, _receipt(p, ps, ctx, op, now))))
        if passed:
            # Before the audit chain's lock (see `apply`).
            paid = [p.id for p, _, _, _ in passed]
            late = proof_repo.late_siblings(s, paid, [*siblings, *ids])
            # The receipts are written (one INSERT) before the entitlements that point at them
            # change: without a relationship between the two models the unit of work would
            # not order them. Both before the audit chain's lock is taken.
            s.flush()
            if engine.fail_after_receipt_insert:
                raise RuntimeError("injected failure after receipt insert")
            credits = [
                (p, ps, r, _activate(engine, p, ps, ctx, r, now)) for p, ps, ctx, r in passed
            ]
            s.flush()
            events.expect(s)
            for p, ps, r, ent in credits:
                _audit_credit(s, now, op, via, p, ps, r, ent)
            back = _sent_back_meanwhile(s, [(p, ctx) for p, _, ctx, _ in passed])
            if back:
                # Rolled back whole: the caller applies proof by proof, and `apply`'s gate
                # refuses these as it refuses any transfer sent back.
                raise Refused(
                    "apply_blocked",
                    "apply gate blocked: transfer_not_sent_back for " + ", ".join(sorted(back)),
                    extra={"proof_ids": sorted(back)},
                )
            # Entitlements may have events already (one query for all); receipts are new.
            events.prime_sequences(s, "entitlement", [ent.id for *_, ent in credits])
            for _, _, r, ent in credits:
                _emit_credit(s, now, r, ent, via)
                credited.append(r.rail_id)
            _tell_not_credited(s, now, {ps.id for _, ps, _, _ in credits}, [*others, *late])
        _tell_paid_elsewhere(s, now, refused)  # as `apply` does
    for rail_id, failed in blocked:
        for code in failed:
            engine.metrics.inc("apply_gate_blocks_total", rail_id=rail_id, blocker=code)
    for rail_id in credited:
        engine.metrics.inc("receipts_total", rail_id=rail_id)
    return applied + len(credited) + apply_each(engine, alone, op, via)


def apply_each(
    engine: Engine, proof_ids: Sequence[str], op: audit.Operator, via: Via = Via.auto
) -> int:
    """`apply` for each proof in turn, a transaction each; returns how many are applied (a
    blocked proof is counted by the gate, and staff see why in dry-run)."""
    applied = 0
    for pid in proof_ids:
        try:
            apply(engine, pid, op, via)
            applied += 1
        except EngineError:
            pass
    return applied


def revoke(engine: Engine, entitlement_id: str, op: audit.Operator) -> dict[str, Any]:
    audit.require_context(op, "to revoke")
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
