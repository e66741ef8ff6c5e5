"""SQL of reconciliation and discovery: runs and findings, the resolutions people made of
findings, the stored-data checks of the `rail_proofs` scope, the lookups that classify chain
inflows, and the discovery cursors."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from verifier.storage.models import (
    HOLDING,
    Entitlement,
    EntitlementStatus,
    PaymentSession,
    Proof,
    ProofStatus,
    Receipt,
    SessionStatus,
    SettlementEvidence,
)
from verifier.storage.reconciliation_models import (
    DiscoveryCursor,
    ReconciliationFinding,
    ReconciliationResolution,
    ReconciliationRun,
    RepairStatus,
    RunStatus,
)
from verifier.storage.repo.rows import rowcount, table

# Repair statuses that leave nothing for a person to do: repaired by its run, or resolved.
SETTLED = (RepairStatus.applied.value, RepairStatus.resolved.value)


# -- runs and findings -----------------------------------------------------------------------


def insert_run(s: Session, row: dict[str, Any]) -> None:
    s.execute(table(ReconciliationRun).insert().values(**row))


def finish_run(
    s: Session,
    run_id: str,
    status: str,
    finished_at: datetime,
    summary: dict[str, Any],
    detail: str,
) -> None:
    s.execute(
        update(table(ReconciliationRun))
        .where(table(ReconciliationRun).c.id == run_id)
        .values(status=status, finished_at=finished_at, summary=summary, detail=detail)
    )


def insert_findings(s: Session, run_id: str, findings: Iterable[dict[str, Any]]) -> None:
    rows = [
        {
            "run_id": run_id,
            "repair_result": None,
            "repair_status": RepairStatus.none.value,
            "detail": "",
            "proposed_repair": "",
            "subject_key": None,
            **f,
        }
        for f in findings
    ]
    if rows:
        s.execute(table(ReconciliationFinding).insert(), rows)


def get_run(s: Session, run_id: str) -> ReconciliationRun | None:
    return s.get(ReconciliationRun, run_id)


def list_runs(s: Session, scope: str | None, limit: int) -> list[ReconciliationRun]:
    q = (
        select(ReconciliationRun)
        .order_by(ReconciliationRun.started_at.desc(), ReconciliationRun.id.desc())
        .limit(limit)
    )
    if scope:
        q = q.where(ReconciliationRun.scope == scope)
    return list(s.scalars(q).all())


def findings_of(s: Session, run_id: str) -> list[ReconciliationFinding]:
    return list(
        s.scalars(
            select(ReconciliationFinding)
            .where(ReconciliationFinding.run_id == run_id)
            .order_by(ReconciliationFinding.id)
        ).all()
    )


def get_finding(s: Session, finding_id: int) -> ReconciliationFinding | None:
    return s.get(ReconciliationFinding, finding_id)


def resolutions_for(
    s: Session, keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], ReconciliationResolution]:
    """The stored resolutions of the given (kind, subject key) pairs."""
    wanted = set(keys)
    out: dict[tuple[str, str], ReconciliationResolution] = {}
    kinds = sorted({k for k, _ in wanted})
    subjects = sorted({sk for _, sk in wanted})
    for i in range(0, len(subjects), 500):
        part = subjects[i : i + 500]
        q = select(ReconciliationResolution).where(
            ReconciliationResolution.kind.in_(kinds),
            ReconciliationResolution.subject_key.in_(part),
        )
        for r in s.scalars(q):
            if (r.kind, r.subject_key) in wanted:
                out[(r.kind, r.subject_key)] = r
    return out


def sent_back_resolutions(
    s: Session, kinds: Sequence[str], resolutions: Sequence[str]
) -> list[tuple[ReconciliationResolution, dict[str, Any]]]:
    """Every stored resolution among `resolutions` of a finding of `kinds`, with the subjects
    of the finding it was made on. People make these one at a time (a refund, a transfer not
    ours): few rows, read whole and matched by the caller, rather than one condition per
    proof and key in a query an apply batch would spend more time planning than running."""
    R, F = ReconciliationResolution, ReconciliationFinding
    q = (
        select(R, F.subjects)
        .join(F, F.id == R.finding_id)
        .where(R.kind.in_(list(kinds)), R.resolution.in_(list(resolutions)))
    )
    return [(r, dict(subjects or {})) for r, subjects in s.execute(q).all()]


def insert_resolution(s: Session, row: dict[str, Any]) -> bool:
    """Store a resolution; False when its (kind, subject key) already has one (a concurrent
    resolve of the same thing, which the caller answers as a conflict)."""
    try:
        with s.begin_nested():
            s.execute(table(ReconciliationResolution).insert().values(**row))
    except IntegrityError:
        return False
    return True


def mark_resolved(
    s: Session,
    finding_id: int,
    run_ids: list[str],
    kind: str,
    subject_key: str,
    result: dict[str, Any],
) -> int:
    """Mark the finding resolved, and with it every finding of the same (kind, subject key)
    that is still drift in the given runs (the current runs: a few of each scope and rail);
    returns how many rows changed."""
    t = table(ReconciliationFinding)
    same = and_(
        t.c.run_id.in_(run_ids),
        t.c.kind == kind,
        t.c.subject_key == subject_key,
        t.c.severity != "info",
        t.c.repair_status.notin_(SETTLED),
    )
    return rowcount(
        s.execute(
            update(t)
            .where((t.c.id == finding_id) | same)
            .values(repair_status=RepairStatus.resolved.value, repair_result=result)
        )
    )


def current_runs(s: Session) -> list[ReconciliationRun]:
    """The runs drift is read from, of each (scope, rail_id): the latest run that completed
    over the whole history (no `--since`, no `--until`), the latest finished run of any
    status when it started after that one (or there is none), and each run that was still
    running when that one started and has finished since. A run of one rail (or scope) never
    replaces what another's found; a NULL rail_id (rail_proofs over every rail) is its own
    key."""
    # SECURITY: only a complete whole-history run stands for everything: a later run over a
    # narrower window, or one that could not read its window (a treasury flooded with dust
    # runs out of pages), never hides what that run found. Bounded whatever the schedule: a
    # rolling `--since` run replaces the previous one rather than adding to a set that grows.
    R = ReconciliationRun
    whole = case(
        (
            and_(
                R.status == RunStatus.complete.value,
                R.since.is_(None),
                R.until.is_(None),
            ),
            1,
        ),
        else_=0,
    )
    newest_first = (R.started_at.desc(), R.id.desc())
    ranked = (
        select(
            R.id,
            R.scope,
            R.rail_id,
            R.started_at,
            R.finished_at,
            whole.label("whole"),
            func.row_number()
            .over(partition_by=(R.scope, R.rail_id), order_by=newest_first)
            .label("latest"),
            func.row_number()
            .over(partition_by=(R.scope, R.rail_id, whole), order_by=newest_first)
            .label("latest_of_kind"),
        )
        .where(R.status != RunStatus.running.value)
        .subquery()
    )
    # The latest finished run started after the latest whole-history one, or is it.
    latest = or_(ranked.c.latest == 1, and_(ranked.c.whole == 1, ranked.c.latest_of_kind == 1))
    # SECURITY: a run that was still reading when the whole-history run started (an
    # operator's `--since` run over an old transfer) found what that run could not carry: it
    # is drift until the next whole-history run carries it (`unsettled_inflows`). Bounded by
    # how many runs overlap one start, not by the schedule. Finished as it started counts:
    # which came first is unknown.
    whole_run = (
        select(ranked.c.scope, ranked.c.rail_id, ranked.c.started_at)
        .where(ranked.c.whole == 1, ranked.c.latest_of_kind == 1)
        .subquery()
    )
    overlapping = (
        select(ranked.c.id)
        .join(
            whole_run,
            and_(
                whole_run.c.scope == ranked.c.scope,
                whole_run.c.rail_id.is_not_distinct_from(ranked.c.rail_id),
            ),
        )
        .where(
            ranked.c.started_at <= whole_run.c.started_at,
            ranked.c.finished_at >= whole_run.c.started_at,
        )
    )
    ids = select(ranked.c.id).where(latest).union(overlapping)
    q = select(R).where(R.id.in_(ids)).order_by(R.scope, R.rail_id, R.started_at, R.id)
    return list(s.scalars(q).all())


# Unsettled inflow findings read per query by `unsettled_inflows`.
_PAGE = 1000


def unsettled_inflows(
    s: Session, run: ReconciliationRun, kinds: Sequence[str], awaiting: str
) -> list[ReconciliationFinding]:
    """The inflow findings of `run` and of every finished run of its scope and rail started
    after it, or still running when it started, that still need someone (of `kinds`, not
    information, not applied, not resolved) or are a transfer a pending proof waited for
    (`awaiting`): each transfer (subject key) once, as the latest of those runs found it; by
    id, read a page at a time."""
    # SECURITY: every run after `run` counts, however many a schedule made (a rolling
    # `--since` every few minutes): what one of them found must never drop out of what the
    # next whole-history run carries because later runs pushed it past a count; nor what
    # one still reading when `run` started found (an operator's `--since` run over an old
    # transfer), which `run` could not carry: each finished run is carried by the first
    # whole-history run after it.
    F, R = ReconciliationFinding, ReconciliationRun
    unsettled = or_(
        F.kind == awaiting,
        and_(
            F.kind.in_(list(kinds)),
            F.severity != "info",
            F.repair_status.notin_(SETTLED),
        ),
    )
    ranked = (
        select(
            F.id,
            func.row_number()
            .over(
                partition_by=(F.subject_key, case((F.subject_key.is_(None), F.id))),
                order_by=(R.started_at.desc(), R.id.desc(), F.id.desc()),
            )
            .label("n"),
        )
        .join(R, R.id == F.run_id)
        .where(
            R.scope == run.scope,
            R.rail_id == run.rail_id,
            R.status != RunStatus.running.value,
            or_(
                R.id == run.id,
                R.started_at > run.started_at,
                and_(R.started_at == run.started_at, R.id > run.id),
                # Finished as it started counts: which came first is unknown.
                R.finished_at >= run.started_at,
            ),
            unsettled,
        )
        .subquery()
    )
    newest = select(ranked.c.id).where(ranked.c.n == 1)
    out: list[ReconciliationFinding] = []
    after = 0
    while True:
        page = list(
            s.scalars(
                select(F).where(F.id.in_(newest), F.id > after).order_by(F.id).limit(_PAGE)
            ).all()
        )
        out += page
        if len(page) < _PAGE:
            return out
        after = page[-1].id


def last_whole_run(s: Session, scope: str, rail_id: str) -> ReconciliationRun | None:
    """The latest run of `scope` and `rail_id` that completed over the whole history (no
    `--since`, no `--until`): the one `current_runs` reads drift from."""
    R = ReconciliationRun
    return s.scalar(
        select(R)
        .where(
            R.scope == scope,
            R.rail_id == rail_id,
            R.status == RunStatus.complete.value,
            R.since.is_(None),
            R.until.is_(None),
        )
        .order_by(R.started_at.desc(), R.id.desc())
        .limit(1)
    )


def holding_settled_in(s: Session, tx_hashes: Sequence[str]) -> dict[str, list[str]]:
    """The holding proofs whose settlement was found in each of these transactions (an x402
    payment's, in its facilitator's transaction), by transaction (lower case)."""
    out: dict[str, list[str]] = {}
    wanted = sorted({t.lower() for t in tx_hashes})
    for i in range(0, len(wanted), 500):
        q = (
            select(func.lower(SettlementEvidence.tx_hash), Proof.id)
            .join(Proof, Proof.id == SettlementEvidence.proof_id)
            .where(
                func.lower(SettlementEvidence.tx_hash).in_(wanted[i : i + 500]),
                Proof.status.in_(HOLDING),
            )
            .distinct()
        )
        for tx, proof_id in s.execute(q):
            out.setdefault(tx, []).append(proof_id)
    return out


def runs_running_since(s: Session, before: datetime) -> list[ReconciliationRun]:
    """Runs still `running` that started before `before`, oldest first (at most 50), unless
    a run of the same scope and rail started after it, over a window that covers its own (an
    unset bound is open), has finished: it was run again."""
    R, later = ReconciliationRun, aliased(ReconciliationRun)
    # Only the runs a process left running are looked at, each against the later runs of
    # its scope (ix_reconciliation_runs_scope): however many runs a schedule has made.
    run_again = (
        select(later.id)
        .where(
            later.scope == R.scope,
            later.rail_id.is_not_distinct_from(R.rail_id),
            later.status != RunStatus.running.value,
            or_(
                later.started_at > R.started_at,
                and_(later.started_at == R.started_at, later.id > R.id),
            ),
            or_(later.since.is_(None), and_(R.since.is_not(None), later.since <= R.since)),
            or_(later.until.is_(None), and_(R.until.is_not(None), later.until >= R.until)),
        )
        .exists()
    )
    q = (
        select(R)
        .where(R.status == RunStatus.running.value, R.started_at < before, ~run_again)
        .order_by(R.started_at, R.id)
        .limit(50)
    )
    return list(s.scalars(q).all())


# -- scope rail_proofs: stored data against its invariants -----------------------------------


def _window(q: Any, col: Any, since: datetime | None, until: datetime | None) -> Any:
    if since is not None:
        q = q.where(col >= since)
    if until is not None:
        q = q.where(col < until)
    return q


def _rail(q: Any, col: Any, rail_id: str | None) -> Any:
    return q if rail_id is None else q.where(col == rail_id)


def _latest_settlement() -> Any:
    latest = (
        select(SettlementEvidence.proof_id, func.max(SettlementEvidence.id).label("mid"))
        .group_by(SettlementEvidence.proof_id)
        .subquery()
    )
    return select(SettlementEvidence).join(latest, SettlementEvidence.id == latest.c.mid).subquery()


def verified_final_without_receipt(
    s: Session,
    rails: list[str],
    older_than: datetime,
    since: datetime | None,
    until: datetime | None,
    limit: int,
) -> list[Any]:
    cur = _latest_settlement()
    # A session another proof paid: that one is `verified_transfer_not_credited` (money to
    # send back), never a receipt to create.
    paid = aliased(Receipt)
    q = (
        select(Proof.id, Proof.session_id, Proof.rail_id, Proof.updated_at)
        .join(cur, cur.c.proof_id == Proof.id)
        .outerjoin(Receipt, Receipt.proof_id == Proof.id)
        .where(
            Proof.status == ProofStatus.verified.value,
            cur.c.is_final.is_(True),
            Proof.rail_id.in_(rails),
            Receipt.id.is_(None),
            Proof.updated_at < older_than,
            ~select(paid.id).where(paid.session_id == Proof.session_id).exists(),
        )
    )
    return list(
        s.execute(
            _window(q, Proof.created_at, since, until).order_by(Proof.created_at).limit(limit)
        ).all()
    )


def receipts_without_active_entitlement(
    s: Session,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    rail_id: str | None = None,
) -> list[Any]:
    # A revoked entitlement was revoked on purpose (audited): not drift.
    q = (
        select(Receipt.id, Receipt.proof_id, Receipt.session_id, Entitlement.id.label("ent"))
        .outerjoin(Entitlement, Entitlement.receipt_id == Receipt.id)
        .where((Entitlement.id.is_(None)) | (Entitlement.status == EntitlementStatus.pending.value))
    )
    return list(
        s.execute(
            _window(_rail(q, Receipt.rail_id, rail_id), Receipt.created_at, since, until)
            .order_by(Receipt.created_at)
            .limit(limit)
        ).all()
    )


def paid_sessions_without_receipt(
    s: Session,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    rail_id: str | None = None,
) -> list[Any]:
    q = (
        select(PaymentSession.id, PaymentSession.owner_id)
        .outerjoin(Receipt, Receipt.session_id == PaymentSession.id)
        .where(PaymentSession.status == SessionStatus.paid.value, Receipt.id.is_(None))
    )
    return list(
        s.execute(
            _window(
                _rail(q, PaymentSession.rail_id, rail_id), PaymentSession.created_at, since, until
            )
            .order_by(PaymentSession.created_at)
            .limit(limit)
        ).all()
    )


def pending_past(
    s: Session,
    older_than: datetime,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    rail_id: str | None = None,
) -> list[Any]:
    q = select(Proof.id, Proof.session_id, Proof.failure_code, Proof.created_at).where(
        Proof.status == ProofStatus.pending.value, Proof.created_at < older_than
    )
    return list(
        s.execute(
            _window(_rail(q, Proof.rail_id, rail_id), Proof.created_at, since, until)
            .order_by(Proof.created_at)
            .limit(limit)
        ).all()
    )


def failed_then_paid(
    s: Session,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    rail_id: str | None = None,
) -> list[Any]:
    """Sessions with a failed proof and a later proof of the same session that verified."""
    later = aliased(Proof)
    q = (
        select(
            Proof.id.label("failed_id"),
            Proof.failure_code,
            later.id.label("paid_id"),
            Proof.session_id,
            Receipt.id.label("receipt_id"),
        )
        .join(
            later,
            and_(
                later.session_id == Proof.session_id,
                later.id != Proof.id,
                later.created_at >= Proof.created_at,
                later.status == ProofStatus.verified.value,
            ),
        )
        .outerjoin(Receipt, Receipt.proof_id == later.id)
        .where(Proof.status == ProofStatus.failed.value)
    )
    return list(
        s.execute(
            _window(_rail(q, Proof.rail_id, rail_id), Proof.created_at, since, until)
            .order_by(Proof.created_at)
            .limit(limit)
        ).all()
    )


def verified_not_credited(
    s: Session,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    rail_id: str | None = None,
) -> list[Any]:
    other = aliased(Receipt)
    credited = (
        select(other.id)
        .where(other.session_id == Proof.session_id, other.proof_id != Proof.id)
        .exists()
    )
    q = (
        select(Proof.id, Proof.session_id, Proof.owner_id)
        .outerjoin(Receipt, Receipt.proof_id == Proof.id)
        .where(Proof.status == ProofStatus.verified.value, Receipt.id.is_(None), credited)
    )
    return list(
        s.execute(
            _window(_rail(q, Proof.rail_id, rail_id), Proof.created_at, since, until)
            .order_by(Proof.created_at)
            .limit(limit)
        ).all()
    )


def transfers_behind_two_proofs(
    s: Session,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    rail_id: str | None = None,
) -> list[Any]:
    q = select(
        Proof.rail_id,
        Proof.ref,
        func.count(Proof.id).label("n"),
        func.min(Proof.id).label("first_id"),
        func.max(Proof.id).label("last_id"),
    ).where(Proof.status.in_(HOLDING))
    q = _window(_rail(q, Proof.rail_id, rail_id), Proof.created_at, since, until)
    return list(
        s.execute(
            q.group_by(Proof.rail_id, Proof.ref)
            .having(func.count(func.distinct(Proof.session_id)) > 1)
            .limit(limit)
        ).all()
    )


def reorged_entitlements(
    s: Session,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    rail_id: str | None = None,
) -> list[Any]:
    cur = _latest_settlement()
    q = (
        select(
            Entitlement.id,
            Entitlement.status,
            Receipt.id.label("receipt_id"),
            Receipt.proof_id,
            Entitlement.reorg_flagged,
            cur.c.reorged,
        )
        .join(Receipt, Receipt.id == Entitlement.receipt_id)
        .outerjoin(cur, cur.c.proof_id == Receipt.proof_id)
        .where(
            Entitlement.status == EntitlementStatus.active.value,
            (Entitlement.reorg_flagged.is_(True)) | (cur.c.reorged.is_(True)),
        )
    )
    return list(
        s.execute(
            _window(_rail(q, Receipt.rail_id, rail_id), Entitlement.created_at, since, until)
            .order_by(Entitlement.created_at)
            .limit(limit)
        ).all()
    )


# -- scope chain_inflows: what we hold, and who a transfer is bound to -----------------------


def proofs_by_fingerprint(s: Session, fingerprints: list[str]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for i in range(0, len(fingerprints), 500):
        part = fingerprints[i : i + 500]
        for row in s.execute(
            select(
                Proof.id, Proof.fingerprint, Proof.session_id, Proof.status, PaymentSession.payer
            )
            .join(PaymentSession, PaymentSession.id == Proof.session_id)
            .where(Proof.fingerprint.in_(part))
        ):
            out.setdefault(row.fingerprint, []).append(row)
    return out


def sessions_by_reference(s: Session, references: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i in range(0, len(references), 500):
        part = references[i : i + 500]
        for (ps,) in s.execute(select(PaymentSession).where(PaymentSession.reference.in_(part))):
            if ps.reference is not None:  # always: NULL is in no list
                out[ps.reference] = ps
    return out


def sessions_by_id(s: Session, session_ids: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i in range(0, len(session_ids), 500):
        part = session_ids[i : i + 500]
        for (ps,) in s.execute(select(PaymentSession).where(PaymentSession.id.in_(part))):
            out[ps.id] = ps
    return out


def sessions_for_payer(
    s: Session, rail_id: str, recipient: str, pairs: list[tuple[str, int]]
) -> dict[tuple[str, int], list[Any]]:
    """Open sessions of `rail_id` paying `recipient` that name one of the (payer, amount)."""
    out: dict[tuple[str, int], list[Any]] = {}
    payers = sorted({p.lower() for p, _ in pairs})
    for i in range(0, len(payers), 500):
        part = payers[i : i + 500]
        q = select(PaymentSession).where(
            PaymentSession.rail_id == rail_id,
            func.lower(PaymentSession.recipient) == recipient.lower(),
            PaymentSession.status == SessionStatus.open.value,
            func.lower(PaymentSession.payer).in_(part),
        )
        for (ps,) in s.execute(q):
            if ps.payer is not None:  # always: NULL is in no list
                out.setdefault((ps.payer.lower(), ps.amount), []).append(ps)
    return out


def earliest_session(s: Session, rail_id: str) -> datetime | None:
    """When the rail's first session opened (None: it has none)."""
    q = select(func.min(PaymentSession.created_at)).where(PaymentSession.rail_id == rail_id)
    return s.scalar(q)


def oldest_paying(
    s: Session, rail_id: str, recipient: str, alive_after: datetime | None
) -> datetime | None:
    """When the oldest of the rail's sessions paying `recipient` (exactly: a Solana address)
    whose expiry is not before `alive_after` was opened: those open, or expired less than
    the grace ago (one paid or cancelled counts until its expiry); with no `alive_after`,
    of every session paying it. None when there is none."""
    q = select(func.min(PaymentSession.created_at)).where(
        PaymentSession.rail_id == rail_id,
        PaymentSession.recipient == recipient,
    )
    if alive_after is not None:
        q = q.where(PaymentSession.expires_at >= alive_after)
    return s.scalar(q)


def last_paying_expiry(s: Session, rail_id: str, recipient: str) -> datetime | None:
    """The latest expiry of the rail's sessions paying `recipient` (exactly). None: none."""
    q = select(func.max(PaymentSession.expires_at)).where(
        PaymentSession.rail_id == rail_id,
        PaymentSession.recipient == recipient,
    )
    return s.scalar(q)


def session_recipients(
    s: Session, rail_id: str, since: datetime | None, until: datetime | None
) -> set[str]:
    """The recipients (lower case) of the rail's sessions open at some time in the window
    [since, until): opened before its end, expiring at or after its start."""
    q = select(func.lower(PaymentSession.recipient)).where(PaymentSession.rail_id == rail_id)
    if until is not None:
        q = q.where(PaymentSession.created_at < until)
    if since is not None:
        q = q.where(PaymentSession.expires_at >= since)
    return set(s.scalars(q.distinct()).all())


def session_has_hold(s: Session, session_ids: list[str]) -> set[str]:
    """Those of the sessions a proof of theirs holds a transfer for (verified or in review).
    A pending proof holds nothing, not even for its own session: it may be a hash that never
    lands (a wallet's replaced or re-sent transaction), and the session's real payment must
    still be bound to it."""
    if not session_ids:
        return set()
    q = select(Proof.session_id).where(Proof.session_id.in_(session_ids), Proof.status.in_(HOLDING))
    return set(s.scalars(q).all())


# -- discovery --------------------------------------------------------------------------------


def _watched(rail_id: str, alive_after: datetime) -> tuple[Any, ...]:
    """Open sessions of a rail still worth watching (expiry plus grace not past), with no
    proof that holds a transfer. A session whose proofs are only pending is watched: its
    client's hash may never land (an EVM wallet's "speed up" replaces it, a Solana wallet
    re-sends under a new signature), and such a proof fails only after the watch has ended
    (services.discovery leaves out the transfer a pending proof of the session already is)."""
    held = (
        select(Proof.id)
        .where(Proof.session_id == PaymentSession.id, Proof.status.in_(HOLDING))
        .exists()
    )
    return (
        PaymentSession.rail_id == rail_id,
        PaymentSession.status == SessionStatus.open.value,
        PaymentSession.expires_at >= alive_after,
        ~held,
    )


def sessions_by_reference_turn(
    s: Session,
    rail_id: str,
    alive_after: datetime,
    limit: int,
    watch_prefix: str,
    other_than: str | None = None,
) -> list[Any]:
    """`limit` watched sessions (`_watched`) with a reference, those paying `other_than` left
    out, whose turn it is: the watch of each reference (the cursor `watch_prefix` +
    reference) in the order their turn came: a polled one when it fell due, one never polled
    when its session was opened."""
    # SECURITY: chosen by turn, not by age: one tenant's many open sessions, the oldest, would
    # otherwise take every slot for their week and leave the others' never watched. Nor are
    # never-polled watches put first: a tenant opening more sessions each cycle than a
    # cycle's budget reaches would keep every other session from its second look.
    cursor = aliased(DiscoveryCursor)
    q = (
        select(PaymentSession)
        .outerjoin(cursor, cursor.watch_key == watch_prefix + PaymentSession.reference)
        .where(*_watched(rail_id, alive_after), PaymentSession.reference.is_not(None))
    )
    if other_than is not None:
        q = q.where(PaymentSession.recipient != other_than)
    turn = func.coalesce(cursor.next_poll_at, PaymentSession.created_at)
    q = q.order_by(turn, PaymentSession.created_at, PaymentSession.id)
    return list(s.scalars(q.limit(limit)).all())


def oldest_watched(
    s: Session,
    rail_id: str,
    alive_after: datetime,
    recipient: str,
    *,
    any_case: bool = False,
    payer_named: bool = False,
) -> datetime | None:
    """When the oldest watched session paying `recipient` (compared in any case: an EVM
    address) was opened; None when there is none."""
    paying = (
        func.lower(PaymentSession.recipient) == recipient.lower()
        if any_case
        else PaymentSession.recipient == recipient
    )
    q = select(func.min(PaymentSession.created_at)).where(*_watched(rail_id, alive_after), paying)
    if payer_named:
        q = q.where(PaymentSession.payer.is_not(None))
    return s.scalar(q)


def watched_by_reference(
    s: Session, rail_id: str, alive_after: datetime, references: Iterable[str]
) -> dict[str, Any]:
    """The watched sessions whose reference is one of `references`, by reference."""
    out: dict[str, Any] = {}
    refs = sorted(set(references))
    for i in range(0, len(refs), 500):
        q = select(PaymentSession).where(
            *_watched(rail_id, alive_after), PaymentSession.reference.in_(refs[i : i + 500])
        )
        for ps in s.scalars(q):
            if ps.reference is not None:  # always: NULL is in no list
                out[ps.reference] = ps
    return out


def payer_recipients_by_turn(
    s: Session,
    rail_id: str,
    alive_after: datetime,
    limit: int,
    watch_prefix: str,
    other_than: str,
) -> list[str]:
    """`limit` distinct recipients (lower case: EVM addresses) of watched sessions naming a
    payer, `other_than` left out, whose turn it is: the watch of each (the cursor
    `watch_prefix` + recipient) in the order their turn came: a polled one when it fell due,
    one never polled when its oldest session was opened."""
    # SECURITY: by turn, as sessions_by_reference_turn: one tenant's many sessions paying
    # addresses of its own must not keep every other recipient from its watch.
    paying = func.lower(PaymentSession.recipient)
    opened = (
        select(paying.label("recipient"), func.min(PaymentSession.created_at).label("opened"))
        .where(
            *_watched(rail_id, alive_after),
            PaymentSession.payer.is_not(None),
            paying != other_than.lower(),
        )
        .group_by(paying)
        .subquery()
    )
    cursor = aliased(DiscoveryCursor)
    q = (
        select(opened.c.recipient)
        .outerjoin(cursor, cursor.watch_key == watch_prefix + opened.c.recipient)
        .order_by(func.coalesce(cursor.next_poll_at, opened.c.opened), opened.c.recipient)
        .limit(limit)
    )
    return [r for r in s.scalars(q).all() if r]


def watched_payers(s: Session, rail_id: str, alive_after: datetime, recipient: str) -> set[str]:
    """The payers (lower case) the watched sessions paying `recipient` (any case) name."""
    q = select(func.lower(PaymentSession.payer)).where(
        *_watched(rail_id, alive_after),
        func.lower(PaymentSession.recipient) == recipient.lower(),
        PaymentSession.payer.is_not(None),
    )
    return set(s.scalars(q.distinct()).all())


def watched_by_payer(
    s: Session, rail_id: str, alive_after: datetime, recipient: str, payers: Iterable[str]
) -> list[Any]:
    """The watched sessions paying `recipient` (an EVM address: any case) that name one of
    `payers` as their payer."""
    out: list[Any] = []
    wanted = sorted({p.lower() for p in payers})
    for i in range(0, len(wanted), 500):
        q = select(PaymentSession).where(
            *_watched(rail_id, alive_after),
            func.lower(PaymentSession.recipient) == recipient.lower(),
            func.lower(PaymentSession.payer).in_(wanted[i : i + 500]),
        )
        out.extend(s.scalars(q).all())
    return out


def get_cursor(s: Session, key: str) -> DiscoveryCursor | None:
    return s.get(DiscoveryCursor, key)


def save_cursor(s: Session, key: str, rail_id: str, values: dict[str, Any]) -> None:
    """Create or move a watch's cursor. Two workers watching at once may both create it: the
    loser's insert is dropped (the watch is idempotent, its next cycle reads again)."""
    t = table(DiscoveryCursor)
    done = rowcount(s.execute(update(t).where(t.c.watch_key == key).values(**values)))
    if done:
        return
    row = {
        "watch_key": key,
        "rail_id": rail_id,
        "last_signature": None,
        "last_block": None,
        "walk_before": None,
        "walk_newest": None,
        "stuck_signature": None,
        "stuck_failures": None,
        "idle_polls": 0,
        "next_poll_at": None,
        **values,
    }
    try:
        with s.begin_nested():
            s.execute(t.insert().values(**row))
    except IntegrityError:
        pass


# The chain_inflows kinds, all about one transfer (keyed by rail, transfer and log index): a
# run may find bound what an earlier run found unbound, or waited for by a pending proof.
TRANSFER_KINDS = ("orphan_bound", "orphan_unbound", "inflow_awaiting_proof")


def _newest_findings(run_ids: list[str]) -> Any:
    """The findings of the given runs, each numbered `n` within its (kind, subject key),
    1 for the one the latest run made: what a thing found by several current runs is now.
    The kinds about one transfer (`TRANSFER_KINDS`) are one kind here. A finding without a
    subject key is its own."""
    F, R = ReconciliationFinding, ReconciliationRun
    # SECURITY: one transfer is one thing whatever kind each run gave it (orphan_bound in the
    # complete run, carried as orphan_unbound by a later one once its session expired): it
    # counts once in drift, as the latest run judged it, never twice.
    about = case((F.kind.in_(TRANSFER_KINDS), TRANSFER_KINDS[0]), else_=F.kind)
    return (
        select(
            F.id,
            F.kind,
            F.severity,
            F.repair_status,
            func.row_number()
            .over(
                partition_by=(about, F.subject_key, case((F.subject_key.is_(None), F.id))),
                order_by=(R.started_at.desc(), R.id.desc(), F.id.desc()),
            )
            .label("n"),
        )
        .join(R, R.id == F.run_id)
        .where(F.run_id.in_(run_ids))
        .subquery()
    )


def _drift_of(run_ids: list[str]) -> tuple[Any, Any]:
    """Each thing's latest finding over the given runs, where it still needs a person:
    neither information only, nor repaired by its run, nor resolved by a person
    (`services.reconciliation.is_drift`)."""
    newest = _newest_findings(run_ids)
    return newest, and_(
        newest.c.n == 1,
        newest.c.severity != "info",
        newest.c.repair_status.notin_(SETTLED),
    )


def unresolved_counts(s: Session, run_ids: list[str]) -> dict[str, int]:
    """Drift by kind over the given runs (`_drift_of`): a thing two of them found counts
    once."""
    if not run_ids:
        return {}
    newest, drift = _drift_of(run_ids)
    q = select(newest.c.kind, func.count()).where(drift).group_by(newest.c.kind)
    return {k: int(n) for k, n in s.execute(q)}


def drift_findings(s: Session, run_ids: list[str]) -> list[ReconciliationFinding]:
    """The findings that are drift over the given runs (`_drift_of`), in one query, by id."""
    if not run_ids:
        return []
    newest, drift = _drift_of(run_ids)
    q = (
        select(ReconciliationFinding)
        .where(ReconciliationFinding.id.in_(select(newest.c.id).where(drift)))
        .order_by(ReconciliationFinding.id)
    )
    return list(s.scalars(q).all())


def set_repair(s: Session, finding_id: int, status: str, result: dict[str, Any]) -> None:
    s.execute(
        update(table(ReconciliationFinding))
        .where(table(ReconciliationFinding).c.id == finding_id)
        .values(repair_status=status, repair_result=result)
    )
