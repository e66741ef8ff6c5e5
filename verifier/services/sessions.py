"""Payment sessions: what an owner is asked to pay, on which rail, for which product."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from rails.base import Adapter, SessionShape
from rails.codes import FailureCode
from rails.errors import ProofMalformed
from registry.catalog import Rail
from verifier.core.engine import Engine
from verifier.core.errors import BadInput, NotFound, Refused
from verifier.core.timeutil import utc
from verifier.services import audit, queries
from verifier.services.views import session_status, session_view
from verifier.storage.models import (
    EntitlementStatus,
    PaymentSession,
    SessionStatus,
    new_id,
)
from verifier.storage.repo import entitlements as entitlement_repo
from verifier.storage.repo import sessions as session_repo
from verifier.storage.repo.rows import Record

AUTO = "auto"
_Row = dict[str, Any]  # a row to insert, by column


@dataclass(frozen=True)
class NewSession:
    owner_id: str
    rail_id: str
    access_product_id: str
    amount: int
    recipient: str | None = None
    reference: str | None = AUTO
    payer: str | None = None
    memo: str | None = None
    expires_in_seconds: int | None = None


def open_session(engine: Engine, req: NewSession, actor: str) -> dict[str, Any]:
    rail = engine.rail(req.rail_id)
    adapter = engine.adapter(rail)
    now = engine.now()
    if req.amount <= 0:
        raise BadInput(
            "invalid_amount", "amount: must be a positive integer of base units", field="amount"
        )
    ttl = req.expires_in_seconds or engine.settings.session_ttl_seconds
    if not 0 < ttl <= engine.settings.max_session_ttl_seconds:
        raise BadInput(
            "invalid_expiry",
            f"expires_in_seconds: must be between 1 and {engine.settings.max_session_ttl_seconds}",
            field="expires_in_seconds",
        )
    with engine.db.tx() as s:
        try:
            # A session that names its recipient needs nothing from the rail's state but
            # "not paused" (and, for a reference it chose, the stored treasuries): its rows,
            # and the chain's lock for the append, go right behind that read, in its round
            # trip on PostgreSQL.
            early = _sent_with_rail_read(engine, s, adapter, rail, req, now, ttl)
            st = engine.rail_state_read(s, rail.rail_id)  # read only: paused, treasury
            if st.paused:
                engine.metrics.inc("rail_paused_attempts_total", rail_id=rail.rail_id)
                raise Refused(FailureCode.rail_paused, f"rail {rail.rail_id} is paused")
            if early is not None:
                ps = early()
            else:
                recipient = req.recipient or engine.treasury(s, rail, st)
                if not recipient:
                    raise BadInput(
                        "recipient_required",
                        f"recipient: no treasury is configured for {rail.rail_id}; pass recipient",
                        field="recipient",
                    )
                sid = new_id()
                recipient, reference, payer = _fields(
                    adapter,
                    rail.rail_id,
                    req,
                    recipient,
                    partial(engine.treasuries, s),
                    reference_seed(engine, sid),
                    engine.settings.client_references,
                )
                if payer is not None and session_repo.open_for_same_payer(
                    s, rail.rail_id, recipient, rail.asset, req.amount, payer, now
                ):
                    # SECURITY: a transfer carries nothing else to tell the two apart: whoever
                    # submitted it first would hold it for review, and the other session's
                    # owner be refused (another tenant copying a known payer and amount).
                    raise BadInput(
                        "payer_in_use",
                        "payer: another open session on this rail already waits for this "
                        "amount from this payer to this recipient, and one transfer could not "
                        "tell them apart; use another amount, or wait until that one is paid "
                        "or expires",
                        field="payer",
                    )
                # Written with client-side ids and read back by nobody in this transaction;
                # the record of the row is only read from here on (the view, the
                # requirements). On PostgreSQL both rows go with the append's lock, in its
                # round trip, and a refused reference is raised there (before the lock is
                # taken).
                row = _session_row(sid, rail, req, now, ttl, recipient, reference, payer)
                ps = session_repo.insert_session(s, row)
                entitlement_repo.insert_entitlement(s, _entitlement_row(row, now))
            view = session_view(ps, now, requirements(engine, ps))
            # The answer commits with the session (an Idempotency-Key's completion:
            # storage.db).
            engine.db.finish(s, view)
            # Last: the append takes the audit chain's lock, which every other appender
            # waits on until this transaction commits, so nothing that can be done before it
            # is done after.
            audit.append(
                s,
                now,
                audit.Operator(actor),
                "session.opened",
                "payment_session",
                ps.id,
                {
                    "owner_id": ps.owner_id,
                    "rail_id": ps.rail_id,
                    "amount": str(ps.amount),
                    "product": ps.access_product_id,
                },
            )
            # Under the lock the append took, held to the commit: the entitlement's place in
            # its owner's list follows commit order (GET /v1/entitlements pages by it).
            entitlement_repo.number(s, ps.id)
        except IntegrityError as e:
            if not session_repo.refused_reference(e):
                raise
            # SECURITY: a reference another session ever used would let that session's
            # payment be claimed here (the unique constraint decides under any race).
            raise BadInput(
                "reference_in_use",
                "reference: already used by another session; omit it to have a fresh one generated",
                field="reference",
            ) from e
    # Committed: a submission to it from this process can send its proof ahead of the
    # session's read (services.proofs).
    engine.known_sessions.remember(ps)
    return view


def number_unplaced(engine: Engine) -> int:
    """Place the entitlements an API process of a release before 0020 wrote without a place
    in their owners' lists (a rolling upgrade), so lists show them; the worker's sweep runs
    it. How many."""
    with engine.db.tx() as s:
        return entitlement_repo.number_unplaced(s)


def _sent_with_rail_read(
    engine: Engine,
    s: Session,
    adapter: Adapter,
    rail: Rail,
    req: NewSession,
    now: datetime,
    ttl: int,
) -> Callable[[], Record] | None:
    """For a session whose rows depend on nothing the rail's state holds (its recipient named,
    every field valid; a reference it chose is checked against the stored treasuries once they
    are read): the session's and its entitlement's inserts and the chain's lock, sent behind
    the transaction's next statement (the rail's state, read first as always:
    prepared.Prepared.behind). Call the answer, once that state allowed the session, for its
    record. None: nothing was sent; the caller checks and writes after the read, raising its
    errors in their usual order. A reference another session used is refused from that read
    on PostgreSQL (IntegrityError, ahead of a pause)."""
    if req.recipient is None or req.payer is not None:
        return None  # a payer-bound session is checked against the open ones first
    sid = new_id()
    try:
        # The treasuries the deployment's configuration names; those approved and stored per
        # rail come with the rail's state, and the reference is checked against them then.
        recipient, reference, payer = _fields(
            adapter,
            rail.rail_id,
            req,
            req.recipient,
            engine.configured_treasuries,
            reference_seed(engine, sid),
            engine.settings.client_references,
        )
    except BadInput:
        return None
    row = _session_row(sid, rail, req, now, ttl, recipient, reference, payer)
    written = session_repo.insert_session_behind(s, row)
    entitled = entitlement_repo.insert_entitlement_behind(s, _entitlement_row(row, now))
    audit.lock_with_next_statement(s)

    def record() -> Record:
        ps = written()
        entitled()
        if req.reference != AUTO:
            # SECURITY: against every treasury, the stored ones too (read by now).
            _fields(
                adapter,
                rail.rail_id,
                req,
                recipient,
                partial(engine.treasuries, s),
                None,
                engine.settings.client_references,
            )
        return ps

    return record


def _fields(
    adapter: Adapter,
    rail_id: str,
    req: NewSession,
    recipient: str,
    treasuries: Callable[[], set[str]],
    seed: bytes | None,
    allow_chosen: bool,
) -> tuple[str, str | None, str | None]:
    """The session's recipient, reference and payer as stored, or BadInput naming the field
    (`treasuries`, `seed`, `allow_chosen`: as for `_reference`)."""
    try:
        recipient = adapter.normalize_address(recipient, "recipient")
        reference = _reference(treasuries, adapter, req.reference, recipient, seed, allow_chosen)
        payer = _payer(adapter, req.payer)
    except ProofMalformed as e:
        raise BadInput("invalid_" + e.field, str(e), field=e.field) from e
    if req.memo is not None and not adapter.binds_reference:
        raise BadInput(
            "invalid_memo",
            f"memo: rail {rail_id} cannot bind a memo on chain",
            field="memo",
        )
    return recipient, reference, payer


def _session_row(
    sid: str,
    rail: Rail,
    req: NewSession,
    now: datetime,
    ttl: int,
    recipient: str,
    reference: str | None,
    payer: str | None,
) -> _Row:
    return {
        "id": sid,
        "owner_id": req.owner_id,
        "rail_id": rail.rail_id,
        "access_product_id": req.access_product_id,
        "amount": req.amount,
        "network": rail.network,
        "asset": rail.asset,
        "recipient": recipient,
        "reference": reference,
        "payer": payer,
        "memo": req.memo,
        "status": SessionStatus.open.value,
        "created_at": now,
        "expires_at": now + timedelta(seconds=ttl),
        "paid_at": None,
    }


def _entitlement_row(session: _Row, now: datetime) -> _Row:
    return {
        "id": new_id(),
        "owner_id": session["owner_id"],
        "access_product_id": session["access_product_id"],
        "session_id": session["id"],
        "status": EntitlementStatus.pending.value,
        "receipt_id": None,
        "reorg_flagged": False,
        "created_at": now,
        "updated_at": now,
    }


def _reference(
    treasuries: Callable[[], set[str]],
    adapter: Adapter,
    given: str | None,
    recipient: str,
    seed: bytes | None,
    allow_chosen: bool,
) -> str | None:
    """The session's reference: generated by default where the rail binds one, from `seed`
    (`reference_seed`); one the client chose only when `allow_chosen` (Settings
    `client_references`). `treasuries`: the treasury addresses a reference must not be
    (Engine.treasuries)."""
    if given == AUTO:
        return adapter.new_reference(seed) if adapter.binds_reference else None
    if not adapter.binds_reference:
        if given is None:
            return None
        raise ProofMalformed("reference", "this rail cannot bind a reference on chain")
    # SECURITY: a transfer pays the session whose reference it carries, and treasuries are
    # shared by every tenant: a session without a reference, or with one that other
    # payments carry too (a program, a sysvar, the mint, a treasury), could claim another
    # tenant's payment.
    if given is None:
        raise ProofMalformed(
            "reference",
            "null is refused on this rail: every session binds a "
            "reference only its payment carries; omit the field to have one "
            "generated",
        )
    if not allow_chosen:
        # SECURITY: a key the client chose could be one other payments carry too (an Actions
        # provider's identity, a processor's delegate): this deployment takes none.
        raise ProofMalformed(
            "reference",
            "this deployment generates every reference (RAILPROOF_CLIENT_REFERENCES=0); "
            "omit the field",
        )
    ref = adapter.normalize_address(given, "reference")
    if ref in adapter.reserved_references({recipient, *treasuries()}):
        raise ProofMalformed(
            "reference",
            "a well-known account (program, sysvar, mint, a treasury or "
            "its token account) is in other payments too; use a fresh key or omit "
            "the field",
        )
    return ref


def reference_seed(engine: Engine, session_id: str) -> bytes | None:
    """What a session's generated reference is made from: the deployment's audit key over the
    session's id, so that railproof, and no one else, can tell later that it generated it
    (`reference_generated`). None without an audit key: a random one, then taken as chosen."""
    key = engine.db.audit_key
    if not key:
        return None
    return hmac.new(
        key, b"railproof/session-reference/" + session_id.encode(), hashlib.sha256
    ).digest()


def reference_generated(engine: Engine, adapter: Adapter, ps: PaymentSession | Record) -> bool:
    """Whether the session's reference is the one railproof generated for it."""
    seed = reference_seed(engine, ps.id)
    if seed is None or ps.reference is None or not adapter.binds_reference:
        return False
    return hmac.compare_digest(str(ps.reference), adapter.new_reference(seed) or "")


def _payer(adapter: Adapter, given: str | None) -> str | None:
    if given is None:
        if adapter.requires_payer:
            # SECURITY: without a reference, the sender is what ties a transfer to a session.
            raise ProofMalformed(
                "payer", "required on this rail: the transfer's sender binds it to the session"
            )
        return None
    if not adapter.binds_payer:
        raise ProofMalformed("payer", "this rail binds payments by reference, not by payer")
    return adapter.normalize_address(given, "payer")


def requirements(engine: Engine, ps: PaymentSession | Record) -> dict[str, Any] | None:
    """What the payer must do, in the rail family's shape. None for a session whose rail, or
    its network or asset, the catalog no longer has: the session (and its payment) still
    reads, with nothing to pay."""
    if not engine.has_rail(ps.rail_id):
        return None
    try:
        rail = engine.rail(ps.rail_id, network=ps.network, asset=ps.asset)
    except BadInput:
        return None  # its network or asset retired (a testnet at a mainnet launch)
    shape = SessionShape(
        id=ps.id,
        recipient=ps.recipient,
        amount=ps.amount,
        reference=ps.reference,
        memo=ps.memo,
        expires_at=utc(ps.expires_at),
        access_product_id=ps.access_product_id,
        now=engine.now(),
    )
    return engine.adapter(rail).prepare(shape).model_dump(mode="json")


def load_session(
    engine: Engine,
    s: Session,
    session_id: str,
    owners: list[str] | None,
    lock: bool = False,
    read_only: bool = False,
    field: str | None = None,
) -> PaymentSession | Record:
    """The session if the caller may see it; otherwise 404, counted as an isolation denial
    when it exists for someone else (the answer is the same, so ids leak nothing).

    `field`: the request's field that named the session (a body's `session_id`), which the
    404 names; a path id is not named, as no path id's 404 is.

    `read_only`: the caller only reads the session, so the row may come back as a plain
    record (see storage.repo.rows.read) rather than an ORM instance; never with `lock`."""
    ps: PaymentSession | Record | None
    if read_only and not lock:
        ps = session_repo.read(s, session_id)
    else:
        ps = session_repo.get(s, session_id, lock=lock)
    if ps is not None and owners is not None and ps.owner_id not in owners:
        engine.metrics.inc("owner_isolation_denials_total", reason="session")
        ps = None
    if ps is None:
        # SECURITY: one answer, field included, whether the session is missing or someone
        # else's: a difference would tell another tenant's session ids from made-up ones.
        raise NotFound(
            FailureCode.session_not_found, f"no payment session {session_id!r}", field=field
        )
    return ps


def get_session(engine: Engine, session_id: str, owners: list[str] | None) -> dict[str, Any]:
    with engine.db.tx() as s:
        ps = load_session(engine, s, session_id, owners, read_only=True)
        paused = queries.rail_paused(s, ps.rail_id)
    now = engine.now()
    # An expired session shows no payment instructions: a payment made now would fail
    # `session_expired`. (One made inside its window is still taken and credited.)
    expired = session_status(ps, now) == SessionStatus.expired
    asks = None if expired else requirements(engine, ps)
    return {**session_view(ps, now, asks), "rail_paused": paused}
