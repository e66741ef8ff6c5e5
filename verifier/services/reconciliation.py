"""Reconciliation runs: stored data against its invariants (`rail_proofs`) and the chain
against the database (`chain_inflows`), persisted with their findings and operator context.

Every run names an incident and a reason (dry runs too) and is kept, so an incident note can
cite its id. A chain that cannot be read makes the run `incomplete` with what it did check:
never "no drift" for what it could not see.

Apply only ever submits an `orphan_bound` inflow as its bound session's proof through
`proofs.submit_proof` (actor = the staff member): the proof is verified like any other and
receipts still come only from the apply gate. A transfer a proof already holds is `matched`
by the next run, so a second apply run attaches nothing twice.

Binding (README, "binding rules"): a Solana inflow is bound when it carries the reference of
exactly one session; an EVM inflow when exactly one open session names its sender as payer
with that amount and recipient, and was open at the transfer's block time. Anything else
needs a person (`orphan_unbound`). A pending proof holds nothing: it waits for a transfer
only for a session the transfer binds to, never hiding it from that session (`_claim_waits`),
and a transfer it waits for is recorded (`inflow_awaiting_proof`, information) so the next
run judges it again: the proof may fail.
Which scan a rail gets is what its adapter declares (`Adapter.inflow_scan`), never its
family's name. An EVM run over the whole history after a complete one reads on from where
that one ended (less the lookback) and carries what it found and nobody settled
(`_carry_inflows`); the first, and a run with only `--until`, read back to the rail's first
session: a window shorter than what a session could take never says `complete`. It reads
every treasury the rail had that a session in the window pays, never a recipient a tenant
named. A Solana run over the whole history after a complete one lists down to (a lookback
before) the newest signature that one listed and carries what it found and nobody settled
(`_carry_solana`); the first after a treasury change lists the new account whole and carries
what was found on the former one. It lists too each former treasury a session pays
(`_solana_former`), from where the last run that listed it got to there (or the oldest
paying session's opening), until one listed it after every such session expired. Both carry
the transfers a pending proof waited for too.

Drift is what a person still has to act on: a finding that is not `info`, was not applied
by the run and is not resolved. The drift gauge and `railproof assurance` read the current
runs (`repo.current_runs`) of each (scope, rail): the latest run that completed over the
whole history, the latest finished run after it, whatever its window and status, and each
run still reading when that one started (what it found, that one could not carry; the next
whole-history run carries it). So neither a run of another rail, nor a run over a narrower
window, nor one that could not read its window hides what the whole-history run found, not
even a thing such a run saw repaired: that clears at the next complete whole-history run. A
thing both found counts once, as the later of them found it.

A repair made outside railproof (a refund, a credit or an attach by hand, a decision that the
state stands) is recorded on the finding with `resolve_finding`: a resolution keyed by the
finding's kind and subject key (`subject_key`: what the finding is about, the same in every
run), with the staff member, incident id and reason. Every later run that finds the same
(kind, subject key) reports it `resolved`, so "re-run until there is zero drift" ends.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, overload

from sqlalchemy.orm import Session

from rails.base import Adapter, InflowScan, Transport, fingerprint
from rails.errors import CassetteError, ProofMalformed, TransportError
from registry.catalog import Rail, Stage
from verifier.core.engine import Engine
from verifier.core.errors import BadInput, Conflict, EngineError, NotFound
from verifier.core.timeutil import iso, utc
from verifier.services import audit
from verifier.storage.models import HOLDING, PaymentSession, ProofStatus, new_id
from verifier.storage.reconciliation_models import (
    ReconciliationFinding,
    ReconciliationResolution,
    ReconciliationRun,
    RepairStatus,
    Resolution,
    RunStatus,
    Scope,
)
from verifier.storage.repo import attempts as attempt_repo
from verifier.storage.repo import proofs as proof_repo
from verifier.storage.repo import receipts as receipt_repo
from verifier.storage.repo import reconciliation as repo
from verifier.storage.repo import settlements as settlement_repo

if TYPE_CHECKING:
    from rails.evm_inflows import EvmInflow
    from rails.solana_inflows import SignatureEntry, SignatureScan, SolanaInflow

MAX_LIMIT = 10_000
Row = TypeVar("Row")  # a row of one rail_proofs check
# Longer than any run takes (bounded by --limit, pages and RPC timeouts): one still running
# after it was left by a process that ended.
STALE_RUN = timedelta(hours=1)
# Pages of signatures after a Solana window's end a run may read, per page of the window it
# may read (RAILPROOF_RECONCILE_MAX_PAGES).
LATER_PAGES = 10
# How far before the newest signature the last complete whole-history Solana run listed the
# next one starts (blockTime seconds): a blockTime is the validators' estimate, and a node of
# a pool may list a transaction a little after a later one it already listed.
SOLANA_LOOKBACK_SECONDS = 600


@dataclass(frozen=True)
class RunRequest:
    scope: str
    incident_id: str | None
    operator_reason: str | None
    rail_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 1000
    apply: bool = False
    confirm: bool = False


Found = dict[str, Any]  # a finding as a run makes it: kind, severity, subjects, repair …


@dataclass
class Outcome:
    findings: list[Found]
    status: RunStatus = RunStatus.complete
    detail: str = ""
    counts: Counter | None = None  # what was looked at (matched, inflows, rpc calls …)
    notes: Mapping[str, object] | None = None  # kept in the summary beside the counts


def _finding(
    kind: str,
    severity: str,
    subjects: dict[str, Any],
    detail: str,
    repair: str = "",
    status: RepairStatus = RepairStatus.none,
) -> Found:
    return {
        "kind": kind,
        "severity": severity,
        "subjects": subjects,
        "detail": detail,
        "proposed_repair": repair,
        "repair_status": status.value,
    }


def _validate(engine: Engine, req: RunRequest) -> tuple[str, str]:
    """Refuses a request that cannot run; returns its incident id and reason, stripped."""
    # SECURITY: every run, dry or not, is on the record with who asked and why.
    incident_id = (req.incident_id or "").strip()
    operator_reason = (req.operator_reason or "").strip()
    audit.require_context(
        audit.Operator("", incident_id, operator_reason),
        "for every reconciliation run (dry runs too)",
    )
    if req.scope not in {s.value for s in Scope}:
        raise BadInput(
            "invalid_scope", f"scope: one of {', '.join(s.value for s in Scope)}", field="scope"
        )
    if req.apply and not req.confirm:
        raise BadInput(
            "confirmation_required",
            "confirm: apply needs an explicit confirmation",
            field="confirm",
        )
    if req.apply and req.scope != Scope.chain_inflows:
        raise BadInput(
            "invalid_apply",
            "apply: only chain_inflows has repairs railproof makes; "
            "rail_proofs findings name the staff action",
            field="apply",
        )
    if req.scope == Scope.chain_inflows and not req.rail_id:
        raise BadInput(
            "rail_id_required", "rail_id: chain_inflows reads one rail's treasury", field="rail_id"
        )
    if req.rail_id is not None:
        engine.rail(req.rail_id)  # unknown rail: 422 rail_not_registered
    if req.scope == Scope.chain_inflows and req.rail_id:  # (a rail_id: checked above)
        rail = engine.rail(req.rail_id)
        if engine.adapter(rail).inflow_scan is not None and not _treasury(engine, rail):
            raise BadInput(
                "treasury_required",
                f"rail_id: no treasury is configured for {rail.rail_id}",
                field="rail_id",
            )
    if not 1 <= req.limit <= MAX_LIMIT:
        raise BadInput("invalid_limit", f"limit: between 1 and {MAX_LIMIT}", field="limit")
    for field in ("since", "until"):
        _in_range(getattr(req, field), field)
    if req.since and req.until and utc(req.since) >= utc(req.until):
        raise BadInput("invalid_window", "since: must be before until", field="since")
    return incident_id, operator_reason


# A window bound is a chain time: from the epoch, and far enough from datetime's ends that
# the UTC conversion and the scan's margins stay inside it.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def _in_range(value: datetime | None, field: str) -> None:
    if value is None:
        return
    try:
        ok = EARLIEST <= utc(value) <= LATEST
    except OverflowError:
        ok = False
    if not ok:
        raise BadInput(
            "invalid_time",
            f"{field}: a time between {EARLIEST.date()} and {LATEST.date()} (UTC)",
            field=field,
        )


def run(engine: Engine, req: RunRequest, staff: str) -> dict[str, Any]:
    """One reconciliation run, persisted with its findings; returns its view."""
    incident_id, operator_reason = _validate(engine, req)
    op = audit.Operator(staff, incident_id, operator_reason)
    run_id = new_id()
    started = engine.now()
    with engine.db.tx() as s:
        repo.insert_run(
            s,
            {
                "id": run_id,
                "scope": req.scope,
                "rail_id": req.rail_id,
                "since": utc(req.since),
                "until": utc(req.until),
                "row_limit": req.limit,
                "dry_run": not req.apply,
                "incident_id": incident_id,
                "operator_reason": operator_reason,
                "staff": staff,
                "started_at": started,
                "finished_at": None,
                "status": RunStatus.running.value,
                "detail": "",
                "summary": {},
            },
        )
        audit.append(
            s,
            started,
            op,
            "reconciliation.started",
            "reconciliation_run",
            run_id,
            {"scope": req.scope, "rail_id": req.rail_id, "dry_run": not req.apply},
        )
    out: Outcome | None = None
    try:
        if req.scope == Scope.rail_proofs:
            out = _rail_proofs(engine, req)
        else:
            out = _chain_inflows(engine, req)
        # Before apply: a transfer a person settled (refunded, not ours) is never attached.
        _carry_resolutions(engine, out.findings, req.rail_id)
        if req.apply:
            _apply(engine, out.findings, op)
    except Exception as e:  # recorded, never lost: the run says it failed and why
        # Findings of a scan that finished are kept, with the repairs apply made before it
        # stopped (each also on the audit trail): a failed run never hides a proof it attached.
        out = Outcome(
            out.findings if out is not None else [],
            RunStatus.failed,
            f"{type(e).__name__}: {e}"[:2000],
            out.counts if out is not None else None,
        )
    kinds = Counter(f["kind"] for f in out.findings)
    unresolved = Counter(f["kind"] for f in out.findings if is_drift(f))
    summary = {
        "findings": len(out.findings),
        "by_kind": dict(kinds),
        "unresolved": dict(unresolved),
        "applied": sum(1 for f in out.findings if f["repair_status"] == RepairStatus.applied.value),
        **{k: v for k, v in (out.counts or {}).items()},
        **(out.notes or {}),
    }
    finished = engine.now()
    with engine.db.tx() as s:
        repo.insert_findings(s, run_id, out.findings)
        repo.finish_run(s, run_id, out.status.value, finished, summary, out.detail)
        audit.append(
            s,
            finished,
            op,
            "reconciliation.finished",
            "reconciliation_run",
            run_id,
            {
                "status": out.status.value,
                "findings": len(out.findings),
                "applied": summary["applied"],
            },
        )
    refresh_drift_gauge(engine)
    return get_run(engine, run_id)


def is_drift(f: dict[str, Any]) -> bool:
    """Whether a finding still needs someone: not information only, not repaired by its run
    and not resolved by a person (the repo's `unresolved_counts` counts the same)."""
    return f["severity"] != "info" and f["repair_status"] not in repo.SETTLED


# -- resolutions ------------------------------------------------------------------------------

# What a finding is about, by kind: the subject fields that name it the same in every run.
# Inflow findings are about one transfer of one rail (an EVM transaction may hold several
# Transfer logs; the same hash on two chains is two transfers).
_SUBJECT_FIELDS: dict[str, tuple[str, ...]] = {
    "verified_without_receipt": ("proof_id",),
    "receipt_without_active_entitlement": ("receipt_id",),
    "paid_session_without_receipt": ("session_id",),
    "pending_past_sla": ("proof_id",),
    "failed_then_paid": ("proof_id",),
    "verified_transfer_not_credited": ("proof_id",),
    # A third proof behind the same transfer is a new finding, not the one resolved.
    "transfer_behind_two_proofs": ("transfer", "proof_ids"),
    "entitlement_settlement_reorged": ("entitlement_id",),
    "orphan_bound": ("rail_id", "transfer", "log_index"),
    "orphan_unbound": ("rail_id", "transfer", "log_index"),
    # Information only (never resolved): a transfer a pending proof waits for.
    "inflow_awaiting_proof": ("rail_id", "transfer", "log_index"),
}

_ANY = frozenset({Resolution.accepted})
_MONEY_BACK = frozenset({Resolution.refunded, Resolution.credited_by_hand, Resolution.accepted})
_INFLOW = frozenset(
    {Resolution.refunded, Resolution.attached_by_hand, Resolution.not_ours, Resolution.accepted}
)
# The resolutions that fit each kind: what a person can have done about it outside railproof.
# `accepted` (reviewed, the state stands) fits every kind; the note says why.
RESOLUTIONS: dict[str, frozenset[Resolution]] = {
    "verified_without_receipt": _MONEY_BACK,
    "receipt_without_active_entitlement": frozenset(
        {Resolution.credited_by_hand, Resolution.accepted}
    ),
    "paid_session_without_receipt": frozenset({Resolution.credited_by_hand, Resolution.accepted}),
    "pending_past_sla": _MONEY_BACK,
    "verified_transfer_not_credited": _MONEY_BACK,
    "transfer_behind_two_proofs": frozenset({Resolution.refunded, Resolution.accepted}),
    "entitlement_settlement_reorged": _ANY,
    "orphan_bound": _INFLOW,
    "orphan_unbound": _INFLOW,
}


def subject_key(kind: str, subjects: dict[str, Any], rail_id: str | None = None) -> str:
    """The stable identity of what a finding is about, e.g. `proof_id=pr_…` or
    `rail_id=solana_usdc;transfer=5x…`: the same thing found by another run has the same key.
    A kind without a declared identity is keyed by all its subjects."""
    values = {"rail_id": rail_id, **subjects}
    fields = _SUBJECT_FIELDS.get(kind) or tuple(sorted(subjects))
    parts = []
    for name in fields:
        v = values.get(name)
        if v is None:
            continue
        text = ",".join(map(str, v)) if isinstance(v, list) else str(v)
        parts.append(f"{name}={text}")
    return ";".join(parts)[:256]


def _resolution_result(r: Any) -> dict[str, Any]:
    return {
        "resolution": r.resolution,
        "resolved_at": iso(r.resolved_at),
        "staff": r.staff,
        "incident_id": r.incident_id,
        "operator_reason": r.operator_reason,
        "finding_id": r.finding_id,
    }


# Kinds about the same thing: an inflow is one transfer whether a run finds it bound to a
# session or not (a session may open, or stop being held, between runs).
_INFLOW_KINDS = ("orphan_bound", "orphan_unbound")


# A transfer no proof holds that a pending proof waits for: information, not drift (the
# proof's verification decides it), but recorded so the run after judges it again.
AWAITING = "inflow_awaiting_proof"


def _kinds_of(kind: str) -> tuple[str, ...]:
    return _INFLOW_KINDS if kind in _INFLOW_KINDS else (kind,)


# What a person did with the money itself (sent it back, found it someone else's, credited it
# by hand): it holds for the transfer under any kind. `accepted` (reviewed, the state stands)
# holds only for the state it was given on: a transfer accepted while unbound may be credited
# once it is bound.
_SETTLES_TRANSFER = frozenset(
    {Resolution.refunded.value, Resolution.not_ours.value, Resolution.attached_by_hand.value}
)


def _carried(done: dict[tuple[str, str], Any], kind: str, key: str) -> Any:
    """The resolution that settles (kind, key): its own kind's, else a sibling kind's that
    settled the transfer itself."""
    if (kind, key) in done:
        return done[(kind, key)]
    return next(
        (
            done[(k, key)]
            for k in _kinds_of(kind)
            if (k, key) in done and done[(k, key)].resolution in _SETTLES_TRANSFER
        ),
        None,
    )


def _resolved(s: Session, kind: str, key: str) -> Any:
    """The stored resolution that settles what (kind, key) is about."""
    return _carried(repo.resolutions_for(s, [(k, key) for k in _kinds_of(kind)]), kind, key)


def _carry_resolutions(engine: Engine, findings: list[Found], rail_id: str | None) -> None:
    """Key each finding and mark resolved those a person already settled.

    SECURITY: a transfer resolved `refunded` or `not_ours` while unbound stays resolved once
    a run finds it bound, so apply never credits money already sent back."""
    for f in findings:
        f["subject_key"] = subject_key(f["kind"], f["subjects"], rail_id)
    if not findings:
        return
    with engine.db.tx() as s:
        done = repo.resolutions_for(
            s, [(k, f["subject_key"]) for f in findings for k in _kinds_of(f["kind"])]
        )
        for f in findings:
            r = _carried(done, f["kind"], f["subject_key"])
            if r is not None and is_drift(f):
                f["repair_status"] = RepairStatus.resolved.value
                f["repair_result"] = _resolution_result(r)


def settled_transfers(
    engine: Engine, rail_id: str, transfers: list[tuple[str, int | None]]
) -> set[tuple[str, int | None]]:
    """Which of these inflows (transfer, log index) a person settled (refunded, found not
    ours, attached by hand; or accepted as bound, not to be submitted): discovery must not
    submit them."""
    keys = {
        subject_key(_INFLOW_KINDS[0], {"transfer": t, "log_index": i}, rail_id): (t, i)
        for t, i in transfers
    }
    if not keys:
        return set()
    with engine.db.tx() as s:
        done = repo.resolutions_for(s, [(k, key) for key in keys for k in _INFLOW_KINDS])
    # `accepted` on the bound finding settles what discovery would do: submit it.
    return {
        keys[key]
        for (kind, key), r in done.items()
        if r.resolution in _SETTLES_TRANSFER
        or (r.resolution == Resolution.accepted.value and kind == "orphan_bound")
    }


# Resolutions saying the money is not ours to credit: sent back to the payer, or not a payment
# of ours at all (attached by hand is a credit, accepted a finding left as it is).
SENT_BACK = (Resolution.refunded.value, Resolution.not_ours.value)
# Findings about one proof (keyed `proof_id=…`) whose resolution can send its money back.
_PROOF_KINDS = ("verified_without_receipt", "pending_past_sla", "verified_transfer_not_credited")


@dataclass(frozen=True)
class Claimed:
    """What a proof says it was paid with, as the apply gate asks `sent_back`: its rail and
    reference, the transaction the chain showed (an x402 payload's settlement; None when the
    reference is the transaction), the session's payer (an EVM proof counts only that payer's
    transfers) and the rails the same transaction can be seen on (its network's)."""

    proof_id: str
    rail_id: str
    ref: str
    tx: str | None
    payer: str | None
    rails: tuple[str, ...]


def sent_back(s: Session, claims: Iterable[Claimed]) -> dict[str, ReconciliationResolution]:
    """Which of these proofs' money a person resolved refunded or not ours in
    reconciliation, by proof id: found about the proof itself, about its transfer as a
    transfer behind two proofs, or about an inflow into a treasury of its network (any rail:
    an x402 settlement is base_usdc's inflow) that is its transaction, and, on EVM, a log of
    the proof's own payer (another payer's transfer in the same bundle is not this money)."""
    claims = list(claims)
    if not claims:
        return {}
    kinds = (*_PROOF_KINDS, "transfer_behind_two_proofs", *_INFLOW_KINDS)
    return _matching(claims, repo.sent_back_resolutions(s, kinds, SENT_BACK))


def _matching(
    claims: Iterable[Claimed],
    resolutions: Iterable[tuple[ReconciliationResolution, dict[str, Any]]],
) -> dict[str, ReconciliationResolution]:
    """`sent_back`'s answer for these resolutions (each with its finding's subjects)."""
    whose: dict[tuple[str, str], list[Claimed]] = {}
    for c in claims:
        for kind in _PROOF_KINDS:
            whose.setdefault((kind, subject_key(kind, {"proof_id": c.proof_id})), []).append(c)
        base = subject_key("transfer_behind_two_proofs", {"transfer": c.ref})
        whose.setdefault(("transfer_behind_two_proofs", base), []).append(c)
        for tx in {c.ref, c.tx} - {None}:
            for rail_id in c.rails:
                base = subject_key(_INFLOW_KINDS[0], {"transfer": tx}, rail_id)
                for kind in _INFLOW_KINDS:
                    whose.setdefault((kind, base), []).append(c)
    out: dict[str, ReconciliationResolution] = {}
    for r, subjects in resolutions:
        # A key names its transfer first: an EVM log's index or the proofs behind a transfer
        # follow it.
        base = r.subject_key.split(";log_index=", 1)[0].split(";proof_ids=", 1)[0]
        for c in whose.get((r.kind, base), []):
            sender = subjects.get("sender")
            # SECURITY: a payer's own payment is not blocked by another payer's transfer in
            # the same transaction being sent back: the proof never counted it.
            if (
                r.kind in _INFLOW_KINDS
                and c.payer
                and isinstance(sender, str)
                and sender.lower() != c.payer.lower()
            ):
                continue
            out.setdefault(c.proof_id, r)
    return out


def backed_transfers(engine: Engine, rail: Rail, refs: list[str]) -> set[str]:
    """Which of these transfers a proof already holds (verified or in review). A pending
    proof holds nothing: a claim of the transfer for another session (its hash seen in the
    mempool) never hides it from the session it was made for."""
    adapter = engine.adapter(rail)
    ptype = rail.proof_types[0]
    fps = {
        fingerprint(rail.family, rail.network, ptype, adapter.normalize_proof(ptype, r)): r
        for r in refs
    }
    if not fps:
        return set()
    with engine.db.tx() as s:
        known = repo.proofs_by_fingerprint(s, list(fps))
    return {fps[fp] for fp, ps in known.items() if any(p.status in HOLDING for p in ps)}


def resolve_finding(
    engine: Engine, finding_id: int, resolution: str, op: audit.Operator
) -> dict[str, Any]:
    """Record that a person settled what a finding is about outside railproof; later runs
    that find the same (kind, subject key) report it resolved. Returns the finding's view."""
    # SECURITY: a finding leaves the drift only on the record, with who decided and why.
    audit.require_context(op, "to resolve a finding")
    if resolution not in {r.value for r in Resolution}:
        raise BadInput(
            "invalid_resolution",
            f"resolution: one of {', '.join(r.value for r in Resolution)}",
            field="resolution",
        )
    now = engine.now()
    with engine.db.tx() as s:
        f = repo.get_finding(s, finding_id)
        if f is None:
            raise NotFound(
                "reconciliation_finding_not_found", f"no reconciliation finding {finding_id}"
            )
        if f.repair_status == RepairStatus.resolved.value:
            raise Conflict(
                "finding_resolved",
                f"finding {finding_id} is already resolved",
                extra={"resolution": (f.repair_result or {}).get("resolution")},
            )
        if not is_drift({"severity": f.severity, "repair_status": f.repair_status}):
            raise Conflict(
                "finding_not_resolvable",
                f"finding {finding_id} leaves nothing to resolve (it is "
                f"{'information only' if f.severity == 'info' else 'applied by its run'})",
            )
        fits = RESOLUTIONS.get(f.kind, _ANY)
        if resolution not in fits:
            raise BadInput(
                "invalid_resolution",
                f"resolution: a {f.kind} finding takes {', '.join(sorted(r.value for r in fits))}",
                field="resolution",
            )
        found_by = repo.get_run(s, f.run_id)
        # A finding with no subject to name resolves itself alone, never its whole kind.
        key = (
            f.subject_key
            or subject_key(f.kind, dict(f.subjects or {}), found_by.rail_id if found_by else None)
            or f"finding_id={f.id}"
        )
        if resolution in _SETTLES_TRANSFER:
            _refuse_credited(engine, s, f, key)
        if _resolved(s, f.kind, key) is not None:
            raise Conflict(
                "finding_resolved", f"what finding {finding_id} is about is already resolved"
            )
        row = {
            "kind": f.kind,
            "subject_key": key,
            "resolution": resolution,
            "finding_id": f.id,
            "staff": op.actor,
            "incident_id": (op.incident_id or "").strip(),
            "operator_reason": (op.reason or "").strip(),
            "resolved_at": now,
        }
        if not repo.insert_resolution(s, row):
            # Found again by a later run before this one was resolved, or resolved at once.
            raise Conflict(
                "finding_resolved", f"what finding {finding_id} is about is already resolved"
            )
        result = {
            "resolution": resolution,
            "resolved_at": iso(now),
            "staff": op.actor,
            "incident_id": row["incident_id"],
            "operator_reason": row["operator_reason"],
            "finding_id": f.id,
        }
        # The current runs stop counting it at once: the gauge and assurance need no re-run.
        latest = [r.id for r in repo.current_runs(s)]
        marked = repo.mark_resolved(s, f.id, latest, f.kind, key, result)
        audit.append(
            s,
            now,
            op,
            "reconciliation.finding_resolved",
            "reconciliation_finding",
            str(f.id),
            {"kind": f.kind, "subject_key": key, "resolution": resolution, "run_id": f.run_id},
        )
        if resolution in _SETTLES_TRANSFER:
            # SECURITY: again now that the audit chain's lock is held (the append above, held
            # to commit): a credit commits under the same lock, so one made meanwhile, of a
            # proof the first look could not know of (an orphan's transfer submitted since,
            # a settlement recorded since), is committed and seen here, or else reads this
            # resolution under that lock and is refused (gate `_sent_back_meanwhile`).
            # Refused here, the resolution and its audit row roll back.
            _refuse_credited(engine, s, f, key, lock=False)
        s.flush()
        s.refresh(f)
        view = finding_view(f)
    refresh_drift_gauge(engine)
    view["also_resolved"] = max(0, marked - 1)
    return view


def _refuse_credited(
    engine: Engine, s: Session, f: ReconciliationFinding, key: str, lock: bool = True
) -> None:
    """Refuse a resolution saying railproof does not credit this money (refunded, not ours,
    attached by hand) while a receipt credits it (its entitlement not revoked): the payer
    would be paid twice.

    SECURITY: the proofs that could hold the transfer are locked first, as apply locks them
    (in id order, before any other row and before the audit chain's lock, which this
    transaction takes after), so an apply under way of a proof found here either commits its
    receipt before this reads the receipts, or reads this resolution in its gate once it is
    committed. Asked again without locking (`lock=False`: a row lock taken after the chain's
    would close a cycle with apply) once the chain's lock is held, for the proofs this first
    look could not find (`resolve_finding`)."""
    from verifier.services.gate import claims_of  # the gate asks this module: no cycle at load

    subjects = dict(f.subjects or {})
    named = [subjects.get("proof_id"), *(subjects.get("proof_ids") or [])]
    candidates = {str(i) for i in named if i}
    transfer = subjects.get("transfer")
    if isinstance(transfer, str):
        # Its proofs on any rail of the network, and those whose settlement it is (an x402
        # payment's): the proofs a receipt for this money can be of.
        found_by = repo.get_run(s, f.run_id)
        fps = _fingerprints_of(engine, transfer, found_by.rail_id if found_by else None)
        candidates |= {
            p.id for ps in repo.proofs_by_fingerprint(s, sorted(fps)).values() for p in ps
        }
        candidates |= settlement_repo.proofs_settled_in(s, sorted({transfer, transfer.lower()}))
    if not candidates:
        return
    held = (
        [p.id for p in proof_repo.lock_many(s, sorted(candidates))] if lock else sorted(candidates)
    )
    probe = ReconciliationResolution(kind=f.kind, subject_key=key)
    covered = _matching(claims_of(s, engine, held), [(probe, subjects)])
    credited = receipt_repo.crediting(s, sorted(covered))
    if credited:
        proof_id, receipt_id = min(credited.items())
        raise Conflict(
            "transfer_credited",
            f"finding {f.id}: receipt {receipt_id} (proof {proof_id}) credits this transfer; "
            "revoke its entitlement first if the money goes back",
            extra={"receipt_id": receipt_id, "proof_id": proof_id},
        )


def _fingerprints_of(engine: Engine, transfer: str, rail_id: str | None) -> set[str]:
    """The fingerprints a proof of this transfer has on each rail of the network the run
    scanned (every rail when the run names none)."""
    rails = list(engine.catalog.rails)
    network = _network_of(engine, rail_id) if rail_id is not None else None
    if network is not None:
        rails = [r for r in rails if _network_of(engine, r) == network]
    out = set()
    for other in rails:
        try:
            rail = engine.rail(other)
            adapter = engine.adapter(rail)
        except (BadInput, ValueError):
            continue  # a rail this deployment leaves unusable takes no proof
        for ptype in adapter.proof_types:
            try:
                ref = adapter.normalize_proof(ptype, transfer)
            except ProofMalformed:
                continue
            out.add(fingerprint(rail.family, rail.network, ptype, ref))
    return out


def _network_of(engine: Engine, rail_id: str) -> str | None:
    """The rail's network as this deployment resolves it; None for a rail it leaves unusable."""
    try:
        return engine.rail(rail_id).network
    except (BadInput, ValueError):
        return None


# -- scope rail_proofs ------------------------------------------------------------------------


def _rail_proofs(engine: Engine, req: RunRequest) -> Outcome:
    now = engine.now()
    st = engine.settings
    since, until, n = utc(req.since), utc(req.until), req.limit
    live = [
        r
        for r, d in engine.catalog.rails.items()
        if d.stage is Stage.live and (req.rail_id is None or r == req.rail_id)
    ]
    f: list[dict[str, Any]] = []
    # One row past the limit says a kind has more than the run reports: oldest first, the
    # rest would be left out of a run that says it checked everything.
    m = n + 1
    over: list[str] = []

    def capped(kind: str, rows: list[Row]) -> list[Row]:
        if len(rows) > n:
            over.append(kind)
        return rows[:n]

    with engine.db.tx() as s:
        for r in capped(
            "verified_without_receipt",
            repo.verified_final_without_receipt(
                s, live, now - timedelta(seconds=st.reconcile_verified_sla_seconds), since, until, m
            ),
        ):
            f.append(
                _finding(
                    "verified_without_receipt",
                    "warning",
                    {"proof_id": r.id, "session_id": r.session_id},
                    f"verified and final on live rail {r.rail_id} since "
                    f"{iso(r.updated_at)}, no receipt past the SLA",
                    "dry-run-rail-proof-apply to see the blockers, then apply-rail-proof",
                )
            )
        for r in capped(
            "receipt_without_active_entitlement",
            repo.receipts_without_active_entitlement(s, since, until, m, req.rail_id),
        ):
            f.append(
                _finding(
                    "receipt_without_active_entitlement",
                    "critical",
                    {
                        "receipt_id": r.id,
                        "proof_id": r.proof_id,
                        "session_id": r.session_id,
                        "entitlement_id": r.ent,
                    },
                    "a receipt whose entitlement is neither active nor revoked",
                    "re-run apply-rail-proof for its proof (idempotent)",
                )
            )
        for r in capped(
            "paid_session_without_receipt",
            repo.paid_sessions_without_receipt(s, since, until, m, req.rail_id),
        ):
            f.append(
                _finding(
                    "paid_session_without_receipt",
                    "critical",
                    {"session_id": r.id},
                    "the session is paid but no receipt credits it",
                    "investigate the writer; inspect the session's proofs",
                )
            )
        for r in capped(
            "pending_past_sla",
            repo.pending_past(
                s,
                now - timedelta(seconds=st.reconcile_pending_sla_seconds),
                since,
                until,
                m,
                req.rail_id,
            ),
        ):
            f.append(
                _finding(
                    "pending_past_sla",
                    "warning",
                    {"proof_id": r.id, "session_id": r.session_id},
                    f"pending since {iso(r.created_at)} ({r.failure_code or 'submitted'})",
                    "check RPC health and the worker; inspect-rail-proof",
                )
            )
        for r in capped("failed_then_paid", repo.failed_then_paid(s, since, until, m, req.rail_id)):
            # Information for support, never drift: the payer did pay. Crediting that payment
            # is drift of its own (verified_without_receipt, past the SLA) until it is applied.
            f.append(
                _finding(
                    "failed_then_paid",
                    "info",
                    {
                        "proof_id": r.failed_id,
                        "paid_proof_id": r.paid_id,
                        "session_id": r.session_id,
                        "receipt_id": r.receipt_id,
                    },
                    f"an earlier proof failed ({r.failure_code}); the payer later paid "
                    "the session successfully",
                    "none: tell support the failure is resolved"
                    if r.receipt_id
                    else "none yet: the verified proof is applied once final (reported as "
                    "verified_without_receipt past the SLA)",
                )
            )
        for r in capped(
            "verified_transfer_not_credited",
            repo.verified_not_credited(s, since, until, m, req.rail_id),
        ):
            f.append(
                _finding(
                    "verified_transfer_not_credited",
                    "warning",
                    {"proof_id": r.id, "session_id": r.session_id},
                    f"a verified transfer for session {r.session_id} (owner "
                    f"{r.owner_id}) that another transfer already paid",
                    "refund the payer, or review; it never creates a second receipt",
                )
            )
        for r in capped(
            "transfer_behind_two_proofs",
            repo.transfers_behind_two_proofs(s, since, until, m, req.rail_id),
        ):
            f.append(
                _finding(
                    "transfer_behind_two_proofs",
                    "critical",
                    {"transfer": r.ref, "proof_ids": [r.first_id, r.last_id]},
                    f"one {r.rail_id} transfer is held by {r.n} proofs of different sessions",
                    "revoke all but the first under an incident id",
                )
            )
        for r in capped(
            "entitlement_settlement_reorged",
            repo.reorged_entitlements(s, since, until, m, req.rail_id),
        ):
            f.append(
                _finding(
                    "entitlement_settlement_reorged",
                    "critical",
                    {"entitlement_id": r.id, "receipt_id": r.receipt_id, "proof_id": r.proof_id},
                    "an active entitlement whose settlement reorged",
                    "watch the re-verification; revoke-entitlement if the transfer "
                    "does not come back",
                )
            )
    if over:
        # SECURITY: anyone can make rows of some kinds (pending proofs of their own sessions):
        # a run that reported only the oldest `limit` of them must not say nothing else drifts.
        return Outcome(
            f,
            RunStatus.incomplete,
            f"more than {n} rows of {', '.join(over)}: only the oldest {n} of each were "
            "checked; raise --limit or narrow the window (--since/--until) and re-run",
        )
    return Outcome(f)


# -- scope chain_inflows ----------------------------------------------------------------------


def _treasury(engine: Engine, rail: Rail) -> str | None:
    with engine.db.tx() as s:
        return engine.treasury(s, rail)


_NOT_SCANNED = "are not scanned"


def _chain_inflows(engine: Engine, req: RunRequest) -> Outcome:
    if req.rail_id is None:  # _validate refuses chain_inflows without one
        raise ValueError("rail_id: chain_inflows reads one rail's treasury")
    rail = engine.rail(req.rail_id)
    adapter = engine.adapter(rail)
    scan = adapter.inflow_scan
    if scan is None:
        # Nothing was checked, so the run never says "no drift": incomplete, and why.
        return Outcome(
            [],
            RunStatus.incomplete,
            f"treasury inflows of {rail.rail_id} {_NOT_SCANNED}: {adapter.inflow_scan_gap}. "
            "Nothing was checked.",
            Counter(inflows_scanned=0),
        )
    treasury = _treasury(engine, rail)
    if treasury is None:  # _validate refused it; a failed run if it was unset since
        raise ValueError(f"no treasury is configured for {rail.rail_id}")
    scanner = _SCANS[scan]
    return scanner(engine, rail, treasury, utc(req.since), utc(req.until), req.limit)


@overload
def _epoch(dt: datetime) -> int: ...
@overload
def _epoch(dt: None) -> None: ...
def _epoch(dt: datetime | None) -> int | None:
    return int(dt.timestamp()) if dt is not None else None


def solana_inflows(
    engine: Engine,
    rail: Rail,
    treasury: str,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    chain: Any = None,
) -> Outcome:
    from rails.solana import token_account
    from rails.solana_inflows import list_signatures

    chain = chain or engine.chains.transport(rail.family, rail.network)
    watched = token_account(treasury, rail.asset)
    pages, per_page = engine.settings.reconcile_max_pages, engine.settings.discovery_page_limit
    hi = _epoch(until)
    whole = since is None and until is None
    follow = _solana_follow(engine, rail, treasury) if whole else None
    # After a treasury change (or while the account has no signature to follow on from) it
    # is listed whole, and what was found before is carried (`_former_treasury`).
    carry = follow.carry if follow is not None else None
    if whole and carry is None:
        carry = _former_treasury(engine, rail)
    # The listing starts at the newest signature: the pages after the window's end (a busy
    # treasury's later transfers, anyone's dust) have a budget of their own, larger but
    # bounded, or an old window could never be read whole however narrow.
    scan = list_signatures(
        chain,
        watched,
        not_before=_epoch(since) if follow is None else follow.not_before,
        not_after=hi,
        page_limit=per_page,
        max_pages=pages,
        max_later_pages=LATER_PAGES * pages,
        confirm_end=True,
    )
    counts: Counter = Counter(rpc_calls=scan.calls)
    notes = _newest_listed(scan.entries, treasury, follow, counts)
    entries = [
        e
        for e in scan.entries
        if not e.failed and (hi is None or e.block_time is None or e.block_time < hi)
    ]
    counts["failed_transactions_skipped"] = sum(1 for e in scan.entries if e.failed)
    problems = _listing_problems(scan, pages, per_page)
    findings, _ = _solana_judge(
        engine, rail, treasury, [e.signature for e in entries[:limit]], chain, counts, problems
    )
    if len(entries) > limit:
        problems.append(f"{len(entries) - limit} more transactions in the window than --limit")
    # (A complete run judged every listed transfer: those past --limit, or after a node
    # error, leave it incomplete, and the next run follows on from an earlier one.)
    judged = {(treasury, e.signature) for e in entries[:limit]}
    # Where a whole-history run follows each former treasury's account on from, and where
    # this one got to (the next run's follow points).
    points = _former_points(engine, rail) if whole else {}
    listed: dict[str, dict[str, int | None]] = {}
    for former in _treasuries_paid(engine, rail, treasury, since, until)[1:]:
        left = max(0, limit - len(judged))
        findings += _solana_former(
            engine,
            rail,
            former,
            (since, until),
            left,
            chain,
            counts,
            problems,
            judged,
            (points.get(former), listed),
        )
    if carry is not None:
        findings += _carry_solana(engine, rail, treasury, carry, judged, chain, counts, problems)
    out = _outcome(findings, problems, counts)
    out.notes = {**notes, "former_listed": listed} if whole else notes
    return out


def _listing_problems(scan: SignatureScan, pages: int, per_page: int) -> list[str]:
    """What a listing of signatures left unread, said as a run reports it."""
    if scan.out_of == "window":
        return [
            f"more than {pages} pages of {per_page} signatures in the window "
            "(RAILPROOF_RECONCILE_MAX_PAGES): raise it for one run (a complete run over the "
            "whole history is followed on from by the next), or narrow the window "
            "(--since/--until)"
        ]
    if scan.out_of == "later":
        return [
            f"the window ends behind more than {LATER_PAGES * pages} pages of {per_page} later "
            f"signatures ({LATER_PAGES} x RAILPROOF_RECONCILE_MAX_PAGES): raise "
            "RAILPROOF_RECONCILE_MAX_PAGES"
        ]
    return [scan.error] if scan.error else []


def _solana_former(
    engine: Engine,
    rail: Rail,
    former: str,
    window: tuple[datetime | None, datetime | None],
    limit: int,
    chain: Transport,
    counts: Counter,
    problems: list[str],
    judged: set[tuple[str, str]],
    follow: tuple[dict[str, int | None] | None, dict[str, dict[str, int | None]]],
) -> list[Found]:
    """The transfers into a former treasury's account a session opened before the change
    still pays, judged as the current treasury's are and naming it (`recipient`: the money
    is there). A run with --since/--until lists its window. A whole-history run follows on
    from the latest complete one that listed the account (`follow`: its point, from
    `_former_points`): from the earlier of the newest blockTime that one listed there (less
    the lookback) and the opening (less the clock skew) of the oldest session paying it
    still open or expired less than the not-found grace ago; with no such run, from the
    opening of the oldest session that ever paid it. It stops listing the account once a
    complete one listed it after every session paying it expired longer than the grace ago
    (a later transfer there is no session's payment). Where it got to is added to the run's
    follow points (`follow`'s second part). The pairs (treasury, signature) judged are added
    to `judged`, so none is carried beside it (what an earlier run found there is carried)."""
    from rails.solana import token_account
    from rails.solana_inflows import list_signatures
    from verifier.services.proofs import opening_skew

    since, until = window
    hi = _epoch(until)
    not_before = _epoch(since)
    point, listed = follow
    whole = since is None and until is None
    if whole:
        grace = timedelta(seconds=engine.settings.tx_not_found_grace_seconds)
        with engine.db.tx() as s:
            last_expiry = repo.last_paying_expiry(s, rail.rail_id, former)
            alive = repo.oldest_paying(s, rail.rail_id, former, engine.now() - grace)
            ever = repo.oldest_paying(s, rail.rail_id, former, None)
        at = _block_no(point.get("newest_block_time")) if point else None
        done = _block_no(point.get("listed_at")) if point else None
        # SECURITY: only a complete listing made after every session paying the account had
        # expired past the grace has seen every payment owed a check there; until then it is
        # listed, from where the last one that listed it got to.
        if point and done is not None and last_expiry is not None:
            if done > _epoch(utc(last_expiry) + grace):
                listed[former] = point  # kept: the next run still knows it was done
                return []
        starts = [max(0, at - SOLANA_LOOKBACK_SECONDS)] if at is not None else []
        if alive is not None:
            starts.append(_epoch(utc(alive) - opening_skew(engine)))
        if at is None and ever is not None:
            starts.append(_epoch(utc(ever) - opening_skew(engine)))
        if not starts:
            return []  # no session ever paid it
        not_before = min(starts)
        listed_at = _epoch(engine.now())
    pages, per_page = engine.settings.reconcile_max_pages, engine.settings.discovery_page_limit
    scan = list_signatures(
        chain,
        token_account(former, rail.asset),
        not_before=not_before,
        not_after=hi,
        page_limit=per_page,
        max_pages=pages,
        max_later_pages=LATER_PAGES * pages,
        confirm_end=True,
    )
    counts["rpc_calls"] += scan.calls
    counts["failed_transactions_skipped"] += sum(1 for e in scan.entries if e.failed)
    entries = [
        e.signature
        for e in scan.entries
        if not e.failed and (hi is None or e.block_time is None or e.block_time < hi)
    ]
    # SECURITY: what this account's listing left unread leaves the run incomplete, named.
    unread = _listing_problems(scan, pages, per_page)
    findings, left = _solana_judge(engine, rail, former, entries[:limit], chain, counts, unread)
    if len(entries) > limit:
        unread.append(f"{len(entries) - limit} more transactions in the window than --limit")
    problems += [f"inflows to {former}: {p}" for p in unread]
    if whole:
        newest = next((e.block_time for e in scan.entries if e.block_time is not None), at)
        listed[former] = {"newest_block_time": newest, "listed_at": listed_at}
    # What the node failed to return is not judged: an earlier finding of it is carried.
    judged.update((former, sig) for sig in set(entries[:limit]) - set(left))
    for f in findings:
        f["subjects"]["recipient"] = former
    return findings


def _solana_judge(
    engine: Engine,
    rail: Rail,
    treasury: str,
    signatures: list[str],
    chain: Any,
    counts: Counter,
    problems: list[str],
) -> tuple[list[Found], list[str]]:
    """Transactions touching the treasury account, by signature, matched against the proofs
    we hold (counted in `matched`) or fetched and judged: bound by reference to one open
    session and passing its checks (`orphan_bound`), waited for by a pending proof
    (`inflow_awaiting_proof`, information), or a person's to decide (`orphan_unbound`).
    Returns the findings and the signatures left unread (the node failed)."""
    from rails.solana_inflows import fetch_inflow
    from verifier.services.proofs import terms_for

    adapter = engine.adapter(rail)
    ptype = rail.proof_types[0]
    fps = {sig: fingerprint(rail.family, rail.network, ptype, sig) for sig in signatures}
    with engine.db.tx() as s:
        known = repo.proofs_by_fingerprint(s, list(fps.values()))
    findings: list[Found] = []
    inflows = []
    read = held_n = 0
    for sig in signatures:
        if any(p.status in HOLDING for p in known.get(fps[sig], ())):
            held_n += 1
            read += 1
            continue
        counts["rpc_calls"] += 1
        try:
            inflow = fetch_inflow(chain, sig, rail.asset, treasury)
        except (TransportError, CassetteError) as err:
            problems.append(f"getTransaction({sig}): {err}")
            counts["unreadable"] += 1
            break  # the node fails: what is left is unchecked, and the run says so
        read += 1
        if inflow is not None:
            inflows.append(inflow)
    counts["matched"] += held_n
    counts["inflows"] += held_n + len(inflows)
    refs = sorted({k for i in inflows for k in i.keys})
    checks: list[tuple[Any, str, dict[str, Any], Any]] = []
    with engine.db.tx() as s:
        by_ref = repo.sessions_by_reference(s, refs)
        held = repo.session_has_hold(s, [ps.id for ps in by_ref.values()])
        for i in inflows:
            subjects = {"transfer": i.signature, "amount": str(i.amount), "sender": i.sender}
            sessions = carried_sessions(engine, adapter, i, by_ref)
            free = [ps for ps in sessions if ps.status == "open" and ps.id not in held]
            if len(sessions) == 1:
                subjects["session_id"] = sessions[0].id
            pending = known.get(fps[i.signature], ())
            if _claim_waits(_claims(pending), sessions, free):
                counts["awaiting_proof"] += 1
                findings.append(_awaiting(subjects, pending))
                continue
            if len(sessions) != 1:
                findings.append(
                    _finding(
                        "orphan_unbound",
                        "warning",
                        subjects,
                        "no session carries a reference of this transfer"
                        if not sessions
                        else f"the transfer carries the references of {len(sessions)} sessions",
                        "needs a person: refund the sender, or attach by hand under an incident id",
                    )
                )
                continue
            ps = sessions[0]
            if ps.status != "open" or ps.id in held:
                findings.append(
                    _finding(
                        "orphan_unbound",
                        "warning",
                        subjects,
                        f"bound by reference to session {ps.id}, which is {ps.status} or already "
                        "backed by another transfer",
                        "refund the sender, or review",
                    )
                )
            else:
                checks.append((i, ps.id, subjects, terms_for(engine, ps, adapter)))
    for i, sid, subjects, terms in checks:
        # The rail's own checks, on the transaction already fetched (only the settlement
        # status is asked of the node, for a transfer that passes them).
        replay = _Fetched(chain, i.signature, i.result)
        try:
            verdict = adapter.verify(i.signature, terms, replay)
        except (TransportError, CassetteError) as err:
            problems.append(f"checks of {i.signature}: {err}")
            continue
        finally:
            counts["rpc_calls"] += replay.forwarded
        if verdict.status.value == "verified":
            findings.append(_bound(rail, subjects, sid, "by reference"))
        else:
            findings.append(
                _finding(
                    "orphan_unbound",
                    "warning",
                    subjects,
                    f"bound by reference to session {sid} but fails its checks: "
                    f"{verdict.code.value if verdict.code else verdict.status.value} "
                    f"({verdict.detail})",
                    "refund the sender, or review",
                )
            )
    return findings, signatures[read:]


@dataclass(frozen=True)
class _Newest:
    """The newest signature a Solana listing met with a blockTime: where the next
    whole-history run stops (less the lookback)."""

    signature: str
    block_time: int
    slot: int | None


@dataclass(frozen=True)
class _Follow:
    """The complete whole-history run a Solana run follows on from, the newest signature it
    listed, and the blockTime this run's listing stops before."""

    carry: _Carry
    newest: _Newest
    not_before: int


def _solana_follow(engine: Engine, rail: Rail, treasury: str) -> _Follow | None:
    """What a whole-history Solana run follows on from: the latest complete whole-history
    run, listed down to the newest signature it listed less the lookback. None (the whole
    history is listed) without such a run, or when it listed another treasury's account
    (whose findings are carried all the same: `_former_treasury`)."""
    with engine.db.tx() as s:
        last = repo.last_whole_run(s, Scope.chain_inflows.value, rail.rail_id)
        last_id, summary = (last.id, dict(last.summary or {})) if last else (None, {})
    at = _block_no(summary.get("newest_block_time"))
    signature = summary.get("newest_signature")
    if last_id is None or at is None or not isinstance(signature, str):
        return None
    if summary.get("treasury") != treasury:
        return None  # a new treasury's account: its whole history is read once
    # SECURITY: the earlier run listed everything up to its newest signature (it completed)
    # and what it found there is carried, so listing down to it leaves nothing unseen. The
    # stop is a blockTime, never `until` = that signature: a signature the node does not have
    # (its block dropped, a node of a pool behind) is never met, and the walk would run on.
    newest = _Newest(signature, at, _block_no(summary.get("newest_slot")))
    return _Follow(_Carry(last_id, treasury), newest, max(0, at - SOLANA_LOOKBACK_SECONDS))


def _former_points(engine: Engine, rail: Rail) -> dict[str, dict[str, int | None]]:
    """Where the latest complete whole-history run got to on each account it listed, by
    address: the newest blockTime it listed there (None: none) and when it listed it
    (`listed_at`): its treasury's, and each former treasury's (`former_listed`). Empty
    without such a run."""
    with engine.db.tx() as s:
        last = repo.last_whole_run(s, Scope.chain_inflows.value, rail.rail_id)
        if last is None:
            return {}
        summary, started = dict(last.summary or {}), _epoch(utc(last.started_at))
    out: dict[str, dict[str, int | None]] = {}
    former = summary.get("former_listed")
    if isinstance(former, dict):
        for address, point in former.items():
            if isinstance(point, dict):
                out[str(address)] = {
                    "newest_block_time": _block_no(point.get("newest_block_time")),
                    "listed_at": _block_no(point.get("listed_at")),
                }
    treasury = summary.get("treasury")
    if isinstance(treasury, str):
        at = _block_no(summary.get("newest_block_time"))
        out[treasury] = {"newest_block_time": at, "listed_at": started}
    return out


def _former_treasury(engine: Engine, rail: Rail) -> _Carry | None:
    """The latest complete whole-history run a run listing `treasury`'s account whole does
    not follow on from: it listed another treasury's account (the treasury changed since),
    or this one's when that listed nothing (a new account): what it, and the runs after it,
    found is carried. None without one."""
    with engine.db.tx() as s:
        last = repo.last_whole_run(s, Scope.chain_inflows.value, rail.rail_id)
        if last is None:
            return None
        former = dict(last.summary or {}).get("treasury")
        # SECURITY: a new treasury's listing never holds the former one's transfers: what was
        # found there and nobody settled (a refund owed) must stay drift, not be replaced by
        # a complete run that never looked at that account. Nor by the run after, while the
        # new account is still empty (no signature to follow on from).
        if isinstance(former, str):
            return _Carry(last.id, former)
        return None


def _newest_listed(
    listed: list[SignatureEntry], treasury: str, follow: _Follow | None, counts: Counter
) -> dict[str, str]:
    """The run's notes (the treasury, the newest signature listed with a blockTime), its slot
    and blockTime counted beside them; the run followed on from's when this one listed none."""
    newest = next(
        (_Newest(e.signature, e.block_time, e.slot) for e in listed if e.block_time is not None),
        follow.newest if follow is not None else None,
    )
    notes = {"treasury": treasury}
    if newest is not None:
        notes["newest_signature"] = newest.signature
        counts["newest_block_time"] = newest.block_time
        if newest.slot is not None:
            counts["newest_slot"] = newest.slot
    if follow is not None:
        notes["follows_run"] = follow.carry.run_id
        counts["not_before"] = follow.not_before
    return notes


def _carry_solana(
    engine: Engine,
    rail: Rail,
    treasury: str,
    carry: _Carry,
    judged: set[tuple[str, str]],
    chain: Any,
    counts: Counter,
    problems: list[str],
) -> list[Found]:
    """The inflows the earlier complete whole-history run left as drift (not information, not
    applied, not resolved), and those a pending proof waited for, that this run did not judge
    again, judged again as the scan judges: a transfer a proof holds now is matched; one its
    bound session's pending proof waits for is waited for still (information); one bound to
    a session that was paid or closed since is unbound. A drift finding is judged from the
    database (the chain was read when it was found); a waited-for transfer no pending proof
    of its session waits for any more (the proof failed), or with no one session named, is
    read again from the chain (`_solana_judge`): its checks were never run. The rest are
    findings of this run, naming the run that read them from the chain (`carried_from`). (A
    pending proof of another session matches only a transfer bound to a session: which
    sessions an unbound transfer names is read from the chain, so such a claim leaves it
    drift.) After a treasury change the former account's findings are carried so, naming it
    (`recipient`): the money to refund is there.

    SECURITY: a whole-history run that lists only what is new stands for the whole history:
    what an earlier one found and nobody settled, and what a proof that may yet fail waited
    for, must be judged again, never drop out because it is older than the listing."""
    former = carry.treasury or treasury  # the account the earlier run listed

    def recipient(f: Found) -> str:
        return str(f["subjects"].get("recipient") or former)

    earlier = [
        f
        for f in _unsettled_inflows(engine, carry.run_id)
        if (recipient(f), str(f["subjects"].get("transfer"))) not in judged
    ]
    if not earlier:
        return []
    for f in earlier:
        if recipient(f) != treasury:  # a former treasury's: its money is refunded from there
            f["subjects"]["recipient"] = recipient(f)
    ptype = rail.proof_types[0]
    fps = {
        str(f["subjects"].get("transfer")): fingerprint(
            rail.family, rail.network, ptype, str(f["subjects"].get("transfer"))
        )
        for f in earlier
    }
    sids = sorted(
        {str(f["subjects"]["session_id"]) for f in earlier if f["subjects"].get("session_id")}
    )
    with engine.db.tx() as s:
        known = repo.proofs_by_fingerprint(s, list(fps.values()))
        sessions = repo.sessions_by_id(s, sids)
        held = repo.session_has_hold(s, sids)
    out: list[Found] = []
    again: dict[str, tuple[Found, str]] = {}  # judged again from the chain, by signature
    for f in earlier:
        subjects = f["subjects"]
        transfer = str(subjects.get("transfer"))
        proofs_ = known.get(fps[transfer], ())
        if any(p.status in HOLDING for p in proofs_):
            counts["carried_matched"] += 1
            continue
        origin = str(subjects.get("carried_from") or carry.run_id)
        ps = sessions.get(str(subjects.get("session_id")))
        bound = [ps] if ps is not None else []
        free = [x for x in bound if x.status == "open" and x.id not in held]
        if ps is not None and _claim_waits(_claims(proofs_), bound, free):
            f = _awaiting(subjects, proofs_)
        elif f["kind"] == AWAITING and (ps is None or free):
            again[transfer] = (f, origin)
            continue
        elif f["kind"] != "orphan_unbound" and ps is not None:
            if free:
                f = _bound(rail, subjects, ps.id, "by reference")
            else:
                f = _finding(
                    "orphan_unbound",
                    "warning",
                    subjects,
                    f"bound by reference to session {ps.id}, which is {ps.status} or already "
                    "backed by another transfer",
                    "refund the sender, or review",
                )
        out.append(_carried_from(f, origin))
    by_recipient: dict[str, list[str]] = {}
    for sig, (f, _) in again.items():
        by_recipient.setdefault(recipient(f), []).append(sig)
    for to, sigs in by_recipient.items():
        fresh: Counter = Counter()
        found, unread = _solana_judge(engine, rail, to, sigs, chain, fresh, problems)
        counts["rpc_calls"] += fresh["rpc_calls"]
        counts["carried_matched"] += fresh["matched"]
        for f in found:
            if to != treasury:
                f["subjects"]["recipient"] = to
            out.append(_carried_from(f, again[str(f["subjects"]["transfer"])][1]))
        # Left unread (the node failed; the run is incomplete): carried as it was found.
        out += [_carried_from(*again[sig]) for sig in unread]
    counts["carried"] += len(out)
    return out


def _carried_from(f: Found, origin: str) -> Found:
    """`f`, naming the run that read it from the chain."""
    f["subjects"]["carried_from"] = origin
    suffix = f" (found by run {origin}; not read again by this run)"
    if not f["detail"].endswith(suffix):
        f["detail"] += suffix
    return f


class _Fetched:
    """A transport that answers `getTransaction` for one signature from the answer already
    fetched, and forwards anything else to the chain (counted)."""

    def __init__(self, chain: Any, signature: str, result: Any):
        self.chain, self.signature, self.result = chain, signature, result
        self.source = getattr(chain, "source", "live")
        self.forwarded = 0

    def call(self, method: str, params: list[Any]) -> Any:
        if method == "getTransaction" and params and params[0] == self.signature:
            return self.result
        self.forwarded += 1
        return self.chain.call(method, params)


def _bound(rail: Rail, subjects: dict[str, Any], session_id: str, how: str) -> Found:
    review = rail.stage is Stage.review_only
    return _finding(
        "orphan_bound",
        "warning",
        subjects,
        f"bound {how} to session {session_id}; no proof was submitted",
        "review-only rail: report, never repaired"
        if review
        else f"submit the transfer as session {session_id}'s proof (apply)",
        RepairStatus.none if review else RepairStatus.proposed,
    )


_UNREAD = "the chain could not be read in full; unchecked: "


def _outcome(findings: list[Found], problems: list[str], counts: Counter) -> Outcome:
    if problems:
        return Outcome(
            findings,
            RunStatus.incomplete,
            _UNREAD + "; ".join(problems)[:1800],
            counts,
        )
    return Outcome(findings, RunStatus.complete, "", counts)


def _block_at(chain: Any, when: int, head: int, counts: Counter) -> int:
    """The first block at or after `when` (epoch seconds): a binary search on timestamps.
    A block at or below the head that the node does not return is a read error."""
    from rails.evm import hex_int, read_block

    lo, hi = 0, head + 1  # head + 1: every block is older than `when`
    while lo < hi:
        mid = (lo + hi) // 2
        counts["rpc_calls"] += 1
        block = read_block(chain, mid)
        if block is None:
            # SECURITY: a node behind the head it reported (a load-balanced provider's lagging
            # backend) answers null for the newest blocks. Taken as older than `when`, such a
            # block moved the window's start past every block not returned, and the transfers
            # there went unread in a run that said `complete`.
            raise TransportError(
                f"eth_getBlockByNumber({mid}): no block, though the node's head is {head}"
            )
        if hex_int(block.get("timestamp"), "block.timestamp") < when:
            lo = mid + 1
        else:
            hi = mid
    return lo


@dataclass(frozen=True)
class _Carry:
    """The complete whole-history run a run follows on from: its id, and the treasury it read
    (None: a run made before that was kept)."""

    run_id: str
    treasury: str | None


@dataclass(frozen=True)
class _Blocks:
    """The blocks an EVM run reads: [lo, hi], where its start comes from, and the earlier run
    whose findings before it are carried into this one (None: none are)."""

    lo: int
    hi: int
    start: str
    carry: _Carry | None = None


def _block_no(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _evm_blocks(
    engine: Engine,
    rail: Rail,
    chain: Transport,
    since: datetime | None,
    until: datetime | None,
    counts: Counter,
) -> _Blocks:
    """The window in blocks. A whole-history run (no `since`, no `until`) after a complete
    one starts where that one ended, less the lookback (10 x RAILPROOF_RECONCILE_EVM_MAX_RANGE
    blocks: a block reorged since it was read), and carries what that run found before it
    (`_carry_inflows`): each run reads what is new, not the rail's whole history again.
    Otherwise, without `since`, it reaches back to the block of the rail's first session (its
    opening less the clock skew verification allows: no older transfer can be bound to a
    session), to the first block the last complete whole-history run read, and at least the
    lookback before the window's end (all a rail with neither has)."""
    from rails.evm_inflows import head as read_head
    from verifier.services.proofs import opening_skew

    top = read_head(chain)
    counts["rpc_calls"] += 1
    hi = _block_at(chain, _epoch(until), top, counts) - 1 if until else top
    if since is not None:
        return _Blocks(_block_at(chain, _epoch(since), top, counts), hi, "--since")
    with engine.db.tx() as s:
        first = repo.earliest_session(s, rail.rail_id)
        last = repo.last_whole_run(s, Scope.chain_inflows.value, rail.rail_id)
        last_id, summary = (last.id, dict(last.summary or {})) if last else (None, {})
    lookback = 10 * engine.settings.reconcile_evm_max_range
    read_to = _block_no(summary.get("to_block"))
    if until is None and last_id is not None and read_to is not None:
        # SECURITY: the earlier run read everything before its end (it completed) and its
        # findings there are carried, so reading on from it leaves nothing unseen; the
        # lookback re-reads the blocks a reorg may have changed since.
        lo = max(0, min(read_to, hi) + 1 - lookback)
        treasury = summary.get("treasury")
        return _Blocks(
            lo,
            hi,
            f"the end of the last complete whole-history run {last_id} (block {read_to}) "
            f"less the lookback ({lookback} blocks)",
            _Carry(last_id, treasury if isinstance(treasury, str) else None),
        )
    starts = {max(0, hi + 1 - lookback): f"the lookback ({lookback} blocks before the end)"}
    before = _block_no(summary.get("from_block"))
    if before is not None:
        starts.setdefault(before, "the first block the last whole-history run read")
    if first is not None and min(starts) > 0:
        opened = utc(first) - opening_skew(engine)
        at = _block_at(chain, _epoch(opened), top, counts)
        starts.setdefault(at, f"the rail's first session, opened {iso(utc(first))}")
    lo = min(starts)
    return _Blocks(lo, hi, starts[lo])


def _treasuries_paid(
    engine: Engine, rail: Rail, treasury: str, since: datetime | None, until: datetime | None
) -> list[str]:
    """The addresses a run reads inflows of: the current treasury, and each treasury the rail
    had before that a session open in the window pays (it was the treasury when the session
    opened, and its payer was told to pay there), as it was configured or approved (a
    Solana address is case-sensitive)."""
    from verifier.storage.repo import approvals as approval_repo

    with engine.db.tx() as s:
        paid = repo.session_recipients(s, rail.rail_id, since, until)
        # SECURITY: a session may name any recipient (a tenant's own wallet, or anyone's busy
        # address): only an address the rail had as its treasury (configured, or approved by
        # two staff members) is read, or one tenant could fill every run with transfers
        # railproof never received, past --limit, and keep the rail's run from completing.
        known = {t.lower(): t for t in approval_repo.approved_treasuries(s, rail.rail_id)}
    if rail.treasury:
        known[rail.treasury.lower()] = rail.treasury
    former = (paid & known.keys()) - {treasury.lower()}
    return [treasury, *(known[a] for a in sorted(former))]


def evm_inflows(
    engine: Engine,
    rail: Rail,
    treasury: str,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    chain: Any = None,
) -> Outcome:
    chain = chain or engine.chains.transport(rail.family, rail.network)
    counts: Counter = Counter()
    try:
        blocks = _evm_blocks(engine, rail, chain, since, until, counts)
    except (TransportError, CassetteError) as err:
        return Outcome([], RunStatus.incomplete, f"the chain could not be read: {err}", counts)
    lo, hi = blocks.lo, blocks.hi
    counts["from_block"], counts["to_block"] = lo, hi
    notes = {"treasury": treasury}
    if lo > hi:
        # Nothing to read (the rail's first session opened after --until): said, not implied.
        return Outcome(
            [],
            RunStatus.complete,
            f"no block was read: the window starts at block {lo} ({blocks.start}), after it "
            f"ends at block {hi}",
            counts,
            notes,
        )
    problems: list[str] = []
    most = engine.settings.reconcile_evm_max_blocks
    if hi - lo + 1 > most:
        # SECURITY: a window too long for one run is never reported as read whole: what
        # was left is named, and the run is `incomplete`. The newest blocks are the ones
        # read: read from the start, every scheduled run re-read the same oldest blocks and
        # nothing later was ever found (no such run completes to move the start on).
        problems.append(
            f"the window holds blocks {lo}..{hi}, more than RAILPROOF_RECONCILE_EVM_MAX_BLOCKS "
            f"({most}): the newest, {hi - most + 1}..{hi}, were read, {lo}..{hi - most} were "
            f"not; raise it for one run (a complete run over the whole history is followed "
            f"on from by the next), or read those with a window ending before block "
            f"{hi - most + 1} (--until)"
        )
        lo = hi - most + 1
        counts["from_block"] = lo
    findings: list[Found] = []
    # An EVM address is not case-sensitive: a former treasury is read and named in lower case.
    paid = _treasuries_paid(engine, rail, treasury, since, until)
    recipients = [treasury, *(r.lower() for r in paid[1:])]
    for n, recipient in enumerate(recipients):
        got = _evm_treasury_inflows(
            engine, rail, recipient, lo, hi, max(0, limit - counts["inflows"]), chain
        )
        if n:  # a former treasury: named, as the repair (a refund, say) is about its money
            for f in got.findings:
                f["subjects"]["recipient"] = recipient
        findings.extend(got.findings)
        counts.update(got.counts or {})
        if got.status is not RunStatus.complete:
            unread = got.detail.removeprefix(_UNREAD)
            problems.append(f"inflows to {recipient}: {unread}" if n else unread)
    if blocks.carry is not None:
        findings += _carry_inflows(
            engine, rail, treasury, blocks.carry, (lo, hi), recipients, chain, counts, problems
        )
    out = _outcome(findings, problems, counts)
    out.notes = notes
    return out


def _unsettled_inflows(engine: Engine, run_id: str) -> list[Found]:
    """The inflow findings of run `run_id`, and of the finished runs of its scope and rail
    after it or still running when it started (a run with `--since`, one that ended
    incomplete), that are drift (not
    information, not applied, not resolved), and the transfers pending proofs waited for, as
    a run makes them, each transfer once (as the latest run found it): what a run following
    on from `run_id` carries and judges again.

    SECURITY: a transfer a narrower run found (one read again with `--since` because its
    proof stopped holding it, say) is carried too: the next whole-history run, which does
    not read that far back, must not clear it."""
    out: list[Found] = []
    with engine.db.tx() as s:
        run = s.get(ReconciliationRun, run_id)
        found = repo.unsettled_inflows(s, run, _INFLOW_KINDS, AWAITING) if run else []
        for f in found:
            subjects = dict(f.subjects or {})
            subjects.setdefault("carried_from", f.run_id)  # the run that read it from the chain
            out.append(
                _finding(
                    f.kind,
                    f.severity,
                    subjects,
                    f.detail,
                    f.proposed_repair,
                    RepairStatus(f.repair_status),
                )
            )
    return out


def _carry_inflows(
    engine: Engine,
    rail: Rail,
    treasury: str,
    carry: _Carry,
    window: tuple[int, int],
    recipients: list[str],
    chain: Transport,
    counts: Counter,
    problems: list[str],
) -> list[Found]:
    """The inflows the earlier complete whole-history run left as drift (not information, not
    applied, not resolved), and those a pending proof waited for, that this run did not read
    again (before its window, or into an address it no longer reads), judged again as a run
    judges what it reads: a transfer a proof holds now is matched; one a pending proof still
    waits for is carried as information; the rest are findings of this run (a waited-for
    transfer whose proof failed is an orphan now), each naming the run that read it from the
    chain (`carried_from`).

    SECURITY: a whole-history run that reads only what is new stands for the whole history:
    what an earlier one found and nobody settled, and what a proof that may yet fail waited
    for, must be judged again, never drop out because it is older than the window."""
    from rails.evm_inflows import EvmInflow

    lo, hi = window
    read = {r.lower() for r in recipients}
    earlier = _unsettled_inflows(engine, carry.run_id)
    out: list[Found] = []
    by_recipient: dict[str, list[tuple[EvmInflow, str]]] = {}
    for old in earlier:
        subjects = old["subjects"]
        recipient = str(subjects.get("recipient") or carry.treasury or treasury)
        block = _block_no(subjects.get("block_number"))
        if block is not None and lo <= block <= hi and recipient.lower() in read:
            continue  # read again by this run
        try:
            inflow = EvmInflow(
                tx_hash=str(subjects["transfer"]),
                block_number=block if block is not None else -1,
                log_index=subjects.get("log_index"),
                sender=str(subjects["sender"]),
                recipient=recipient,
                value=int(subjects["amount"]),
                log_indexes=tuple(subjects.get("log_indexes") or ()),
            )
        except (KeyError, TypeError, ValueError):
            # A finding this run cannot judge again is carried as it was found, never dropped.
            subjects.setdefault("carried_from", carry.run_id)
            counts["carried"] += 1
            out.append(old)
            continue
        origin = str(subjects.get("carried_from") or carry.run_id)
        by_recipient.setdefault(recipient, []).append((inflow, origin))
    for recipient, carried in by_recipient.items():
        origins = {(i.tx_hash.lower(), i.log_index): o for i, o in carried}
        judged: Counter = Counter()
        found = _evm_judge(
            engine, rail, recipient, [i for i, _ in carried], chain, judged, problems
        )
        counts["rpc_calls"] += judged["rpc_calls"]
        counts["carried_matched"] += judged["matched"]
        counts["carried"] += len(found)
        for f in found:
            sub = f["subjects"]
            origin = origins[(str(sub["transfer"]).lower(), sub["log_index"])]
            sub["carried_from"] = origin
            if recipient.lower() != treasury.lower():
                sub["recipient"] = recipient
            f["detail"] = f"{f['detail']} (found by run {origin}; not read again by this run)"
        out += found
    return out


def _evm_treasury_inflows(
    engine: Engine,
    rail: Rail,
    treasury: str,
    lo: int,
    hi: int,
    limit: int,
    chain: Transport,
) -> Outcome:
    """The Transfer logs to `treasury` in blocks [lo, hi], each matched or reported."""
    from rails.evm_inflows import transfer_logs

    counts: Counter = Counter()
    scan = transfer_logs(
        chain, rail.asset, treasury, lo, hi, max_range=engine.settings.reconcile_evm_max_range
    )
    counts["rpc_calls"] += scan.calls
    problems = [scan.error] if scan.error else []
    # The logs checked: `limit` of them, and the rest of the last one's transaction (its
    # logs are one payment: cut in two, it would match no session).
    cut = min(len(scan.inflows), limit)
    while (
        0 < cut < len(scan.inflows) and scan.inflows[cut].tx_hash == scan.inflows[cut - 1].tx_hash
    ):
        cut += 1
    window = scan.inflows[:cut]
    counts["inflows"] = len(window)
    findings = _evm_judge(engine, rail, treasury, window, chain, counts, problems)
    if len(scan.inflows) > len(window):
        problems.append(
            f"{len(scan.inflows) - len(window)} more inflows in the window than --limit"
        )
    return _outcome(findings, problems, counts)


def _evm_judge(
    engine: Engine,
    rail: Rail,
    treasury: str,
    window: list[EvmInflow],
    chain: Transport,
    counts: Counter,
    problems: list[str],
) -> list[Found]:
    """Transfers to `treasury` (logs as read, or payments already summed) matched against
    the proofs we hold (counted in `matched`, in logs) or reported as findings."""
    from rails.evm_inflows import payments

    adapter = engine.adapter(rail)
    ptype = rail.proof_types[0]
    fps = {
        i.tx_hash: fingerprint(
            rail.family, rail.network, ptype, adapter.normalize_proof(ptype, i.tx_hash)
        )
        for i in window
    }
    findings: list[Found] = []
    with engine.db.tx() as s:
        known = repo.proofs_by_fingerprint(s, list(fps.values()))
        # A transaction is one proof, but it may carry several payers' transfers (a bundle):
        # the one its holding proof's payer did not make is nobody's payment yet.
        # And a payment another rail's proof holds, settled in this transaction (an x402
        # authorization, in its facilitator's): matched, by the payer that proof verified.
        settled = repo.holding_settled_in(s, [i.tx_hash for i in window])
        paid = {
            pid: (
                str((a.observed or {}).get("sender", "")).lower(),
                str((a.observed or {}).get("amount", "")),
            )
            for pid, a in attempt_repo.latest_verified_many(
                s, [pid for ids in settled.values() for pid in ids]
            ).items()
        }
        # (An authorization pays one log: matched log by log, before they are summed.)
        unsettled = [i for i in window if not _settles(paid, settled.get(i.tx_hash.lower(), []), i)]
        # SECURITY: a payer's logs in one transaction are one payment, summed as verification
        # credits them (`payments`): matched log by log, a smart wallet's payment split over
        # two logs would bind to no session and be proposed for a refund.
        fresh = [
            i
            for i in payments(unsettled)
            if not any(
                p.status in HOLDING and (p.payer is None or p.payer.lower() == i.sender.lower())
                for p in known.get(fps[i.tx_hash], ())
            )
        ]
        claims = {i.tx_hash: _claims(known.get(fps[i.tx_hash], ())) for i in fresh}
        # (Counted in logs, as read.)
        counts["matched"] += sum(len(i.log_indexes) or 1 for i in window) - sum(
            len(i.log_indexes) for i in fresh
        )
        cands = repo.sessions_for_payer(
            s, rail.rail_id, treasury, [(i.sender, i.value) for i in fresh]
        )
        held = repo.session_has_hold(s, [ps.id for v in cands.values() for ps in v])
        # SECURITY: a payer and an amount can be read off the chain; a session opened after
        # the transfer (by anyone) must not be proposed to take it, as verification would
        # refuse it (`session_not_open`) and the transfer would drop out of the drift.
        times = block_times(
            chain, [i.block_number for i in fresh if cands.get((i.sender.lower(), i.value))]
        )
        counts["rpc_calls"] += len(times)
        for i in fresh:
            subjects: dict[str, object] = {
                "transfer": i.tx_hash,
                "log_index": i.log_index,
                "amount": str(i.value),
                "sender": i.sender,
                "block_number": i.block_number,
            }
            when = times.get(i.block_number)
            if when is None and cands.get((i.sender.lower(), i.value)):
                problems.append(f"block {i.block_number}'s time could not be read")
            bound = [
                ps
                for ps in cands.get((i.sender.lower(), i.value), ())
                if when is not None and in_window(ps, when)
            ]
            sessions = [ps for ps in bound if ps.id not in held]
            if len(i.log_indexes) > 1:  # the logs summed, `log_index` the first's
                subjects["log_indexes"] = list(i.log_indexes)
            if len(sessions) == 1:
                subjects["session_id"] = sessions[0].id
            if _claim_waits(claims[i.tx_hash], bound, sessions):
                counts["awaiting_proof"] += len(i.log_indexes)
                findings.append(_awaiting(subjects, known.get(fps[i.tx_hash], ())))
                continue
            if len(sessions) == 1:
                findings.append(_bound(rail, subjects, sessions[0].id, "by payer and amount"))
            else:
                findings.append(
                    _finding(
                        "orphan_unbound",
                        "warning",
                        subjects,
                        "no open session names this sender as payer with this amount"
                        if not sessions
                        else f"{len(sessions)} open sessions could take this transfer",
                        "needs a person: refund the sender, or attach by hand under an incident id",
                    )
                )
    return findings


class _Proofed(Protocol):
    id: str
    session_id: str
    status: str


def _claims(proofs: Iterable[_Proofed]) -> set[str]:
    """The sessions whose pending proofs claim a transfer no proof holds."""
    return {p.session_id for p in proofs if p.status == ProofStatus.pending.value}


def _awaiting(subjects: dict[str, Any], proofs: Iterable[_Proofed]) -> Found:
    """A transfer no proof holds that a pending proof (named in `proof_ids`) waits for.

    SECURITY: a pending proof holds nothing and may still fail. Counted matched and left
    unrecorded, such a transfer dropped out of every run once it was older than a run reads
    again: money received, the session unpaid, nobody told to refund. Recorded, the next
    run judges it again (`_carry_inflows`, `_carry_solana`) and reports it if the proof
    failed."""
    ids = sorted(p.id for p in proofs if p.status == ProofStatus.pending.value)
    subjects["proof_ids"] = ids
    return _finding(
        AWAITING,
        "info",
        subjects,
        f"no proof holds this transfer yet; pending proof {', '.join(ids)} waits for it",
        "none while the proof is pending: if it fails, a later run reports the transfer",
    )


def _claim_waits(
    claims: set[str], bound: Sequence[PaymentSession], free: Sequence[PaymentSession]
) -> bool:
    """Whether a transfer's pending claims match it: a pending proof holds nothing, so it
    waits for the transfer only as a proof of a session the transfer binds to (`bound`), or
    when no other session could take it (`free`: bound and no proof of its holding a
    transfer; a session's pending proof of another transfer, a hash that never landed, does
    not keep its real payment from binding to it).

    SECURITY: another session's claim (a hash seen in the mempool, submitted first) never
    hides the transfer from the one session it was made for: that is `orphan_bound` there."""
    if not claims:
        return False
    return bool(claims & {ps.id for ps in bound}) or len(free) != 1


def block_times(chain: Any, numbers: list[int]) -> dict[int, datetime]:
    """Each block's time (read once a block); a block the node cannot give, or gives with a
    timestamp no clock has, is left out."""
    from rails.evm import hex_int, read_block

    out: dict[int, datetime] = {}
    for n in sorted(set(numbers)):
        try:
            block = read_block(chain, n)
            if block is not None and block.get("timestamp") is not None:
                stamp = hex_int(block["timestamp"], "block.timestamp")
                out[n] = datetime.fromtimestamp(stamp, tz=UTC)
        except (TransportError, CassetteError, OverflowError, OSError, ValueError):
            continue
    return out


def in_window(ps: PaymentSession, when: datetime) -> bool:
    """Whether a transfer at chain time `when` was made while the payer-bound session was
    open (such a session allows no clock skew: proofs.terms_for). Chain times are whole
    seconds: the second it opened in counts, as verification judges it."""
    return utc(ps.created_at).replace(microsecond=0) <= when <= utc(ps.expires_at)


# The scan each declared way of listing inflows runs (`Adapter.inflow_scan`).
_SCANS: dict[InflowScan, Callable[..., Outcome]] = {
    InflowScan.signatures: solana_inflows,
    InflowScan.transfer_logs: evm_inflows,
}


# -- apply ------------------------------------------------------------------------------------


def _apply(engine: Engine, findings: list[Found], op: audit.Operator) -> None:
    from verifier.services.proofs import submit_proof

    for f in findings:
        if f["kind"] != "orphan_bound" or f["repair_status"] != RepairStatus.proposed.value:
            continue
        sid, transfer = f["subjects"]["session_id"], f["subjects"]["transfer"]
        try:
            # The normal submission path: checks, holds, audit (the staff member, under the
            # run's incident and reason).
            view, created = submit_proof(engine, sid, transfer, None, actor=op.actor, operator=op)
        except EngineError as e:
            f["repair_status"] = RepairStatus.failed.value
            f["repair_result"] = {"code": e.code, "message": e.message}
            continue
        except Exception as e:  # the run fails; this finding says where it stopped
            f["repair_status"] = RepairStatus.failed.value
            f["repair_result"] = {"code": "internal_error", "message": type(e).__name__}
            raise
        # A proof the chain refused repaired nothing: the transfer stays in the drift.
        done = view["status"] != ProofStatus.failed.value
        f["repair_status"] = (RepairStatus.applied if done else RepairStatus.failed).value
        f["repair_result"] = {
            "proof_id": view["id"],
            "proof_status": view["status"],
            "created": created,
            **({} if done else {"code": view.get("failure_code")}),
        }


# -- reads ------------------------------------------------------------------------------------


def run_view(r: Any, findings: Iterable[Any] | None = None) -> dict[str, Any]:
    out = {
        "id": r.id,
        "scope": r.scope,
        "rail_id": r.rail_id,
        "since": iso(r.since),
        "until": iso(r.until),
        "limit": r.row_limit,
        "dry_run": r.dry_run,
        "incident_id": r.incident_id,
        "operator_reason": r.operator_reason,
        "staff": r.staff,
        "started_at": iso(r.started_at),
        "finished_at": iso(r.finished_at),
        "status": r.status,
        "detail": r.detail,
        "summary": dict(r.summary or {}),
    }
    if findings is not None:
        out["findings"] = [finding_view(f) for f in findings]
    return out


def finding_view(f: Any) -> dict[str, Any]:
    return {
        "id": f.id,
        "kind": f.kind,
        "severity": f.severity,
        "subjects": dict(f.subjects or {}),
        "detail": f.detail,
        "proposed_repair": f.proposed_repair,
        "repair_status": f.repair_status,
        "repair_result": f.repair_result,
        "subject_key": f.subject_key,
    }


def get_run(engine: Engine, run_id: str) -> dict[str, Any]:
    with engine.db.tx() as s:
        r = repo.get_run(s, run_id)
        if r is None:
            raise NotFound("reconciliation_run_not_found", f"no reconciliation run {run_id!r}")
        return run_view(r, repo.findings_of(s, run_id))


def list_runs(engine: Engine, scope: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    if scope is not None and scope not in {s.value for s in Scope}:
        raise BadInput(
            "invalid_scope", f"scope: one of {', '.join(s.value for s in Scope)}", field="scope"
        )
    with engine.db.tx() as s:
        return [run_view(r) for r in repo.list_runs(s, scope, max(1, min(limit, 1000)))]


# -- assurance and metrics --------------------------------------------------------------------


def _unscannable(engine: Engine, r: ReconciliationRun) -> bool:
    """A treasury scan that checked nothing because its rail's adapter cannot list inflows
    (`inflow_scan` None): so said by the run itself, and still so of the rail today."""
    if r.scope != Scope.chain_inflows.value or r.rail_id is None or not engine.has_rail(r.rail_id):
        return False
    if f"{r.rail_id} {_NOT_SCANNED}" not in (r.detail or ""):
        return False
    try:
        return engine.adapter(engine.rail(r.rail_id)).inflow_scan is None
    except (BadInput, ValueError):  # a rail its overrides leave unbuildable keeps its warning
        return False


def assurance_issues(engine: Engine) -> list[dict[str, str]]:
    """The drift of the current runs (`repo.current_runs`), and each such run that did not
    complete, as `railproof assurance` issues."""
    out: list[dict[str, str]] = []
    with engine.db.tx() as s:
        runs = repo.current_runs(s)
        drift: dict[str, list[ReconciliationFinding]] = {}
        for f in repo.drift_findings(s, [r.id for r in runs]):
            drift.setdefault(f.run_id, []).append(f)
        for r in runs:
            out += [
                {
                    "category": f"reconciliation_{f.kind}",
                    "severity": f.severity,
                    "subject": f"reconciliation run {r.id} finding {f.id}",
                    "repair": f.proposed_repair or f.detail,
                }
                for f in drift.get(r.id, [])
            ]
            if r.status != RunStatus.complete.value and _unscannable(engine, r):
                # Incomplete by design (Tron): a re-run checks nothing either, so it is no
                # warning that running it again clears; the treasury is reviewed by hand.
                out.append(
                    {
                        "category": "reconciliation_incomplete",
                        "severity": "info",
                        "subject": f"reconciliation run {r.id}",
                        "repair": f"{r.detail[:200]} Review the treasury's transfers in an "
                        "explorer and submit each as its session's proof; a re-run checks "
                        "nothing",
                    }
                )
            elif r.status != RunStatus.complete.value:
                out.append(
                    {
                        "category": "reconciliation_incomplete",
                        "severity": "warning",
                        "subject": f"reconciliation run {r.id}",
                        "repair": f"the run is {r.status}: {r.detail[:200]}; re-run it",
                    }
                )
        # A run whose process died (killed, restarted) stays `running`: none finishes it.
        for r in repo.runs_running_since(s, engine.now() - STALE_RUN):
            out.append(
                {
                    "category": "reconciliation_incomplete",
                    "severity": "warning",
                    "subject": f"reconciliation run {r.id}",
                    "repair": (
                        f"the run has been running since {iso(utc(r.started_at))}: its process "
                        "most likely ended before it did; re-run it (an --apply run's repairs "
                        "so far are in the audit log under its incident id)"
                    ),
                }
            )
    return out


def refresh_drift_gauge(engine: Engine) -> None:
    """Unresolved findings by kind over the current runs (`repo.current_runs`)."""
    with engine.db.tx() as s:
        counts = repo.unresolved_counts(s, [r.id for r in repo.current_runs(s)])
    for kind, n in counts.items():
        engine.metrics.set("reconciliation_drift", n, kind=kind)
    # Kinds the current runs no longer report drop to zero rather than keep an old value.
    for kind in _DRIFT_KINDS - set(counts):
        engine.metrics.set("reconciliation_drift", 0, kind=kind)
    _DRIFT_KINDS.update(counts)


_DRIFT_KINDS: set[str] = set()


def parse_time(value: str | None, field: str) -> datetime | None:
    if value is None or value == "":
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadInput("invalid_time", f"{field}: an ISO-8601 time", field=field) from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _settles(paid: dict[str, tuple[str, str]], proof_ids: list[str], inflow: EvmInflow) -> bool:
    """Whether one of these proofs (settled in the inflow's transaction) paid it: its payer's
    transfer of its amount. Each proof matches one inflow (removed from `proof_ids` once it
    does): a payer's second authorization settled in the same transaction is not paid by
    the first's proof."""
    for pid in proof_ids:
        if paid.get(pid) == (inflow.sender.lower(), str(inflow.value)):
            proof_ids.remove(pid)
            return True
    return False


def carried_sessions(
    engine: Engine, adapter: Adapter, inflow: SolanaInflow, by_ref: dict[str, PaymentSession]
) -> list[PaymentSession]:
    """The sessions (of `by_ref`, by reference) whose reference a Solana inflow carries where
    it binds: a chosen one among the keys no shared account can be, one railproof generated
    wherever it sits, as verification takes them. A chosen reference matched elsewhere (a
    payer's wallet, a pool) would make other tenants' payments look ambiguous. A session
    whose window does not hold the transfer's chain time is not carried, as verification
    judges it: one opened after a payment, naming one of its keys, would hide that payment."""
    from verifier.services.proofs import terms_for
    from verifier.services.sessions import reference_generated

    out = []
    for key in inflow.keys:
        ps = by_ref.get(key)
        if ps is None or not (
            key in inflow.account_keys or reference_generated(engine, adapter, ps)
        ):
            continue
        if inflow.block_time is not None:  # without one, verification holds it for review
            terms = terms_for(engine, ps, adapter)
            opens, closes = terms.not_before, terms.not_after
            # Chain times are whole seconds: the second a bound falls in counts.
            if (opens is not None and inflow.block_time < int(opens.timestamp())) or (
                closes is not None and inflow.block_time > int(closes.timestamp())
            ):
                continue
        out.append(ps)
    return out
