"""The audit log: append-only and hash-chained. Each event's hash covers its fields and the
previous event's hash, so changing, deleting or reordering any row breaks every link after it.

The hash is an HMAC-SHA256 under a key kept out of the database (RAILPROOF_AUDIT_KEY or
RAILPROOF_AUDIT_KEY_FILE, bound to the Database and carried by its Sessions): whoever can
write the table but lacks the key cannot recompute a chain that verifies. Removing the newest
events leaves a shorter chain that still links; signed checkpoints, kept off the host, catch
that (docs/security.md).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

from rails.base import canonical_json
from verifier.core.errors import BadInput
from verifier.core.logs import request_id_var
from verifier.core.shown import blank, unreadable
from verifier.core.timeutil import iso
from verifier.storage.db import AUDIT_KEY_INFO
from verifier.storage.models import AuditEvent
from verifier.storage.repo import audit as audit_repo

GENESIS = "0" * 64
_PG_AUDIT_LOCK = audit_repo.CHAIN_LOCK_KEY  # one advisory lock serializes appends to the chain


@dataclass(frozen=True)
class Operator:
    """Who does a staff action and why; stored with the action."""

    actor: str
    incident_id: str | None = None
    reason: str | None = None


def check_incident_id(incident_id: str | None, field: str = "incident_id") -> None:
    """Refuse an incident id holding a control, invisible or line-separator character: the
    CLI and the audit filter refuse such text, so the action could never be looked up by it,
    and it may print exactly as another incident's id."""
    if incident_id is None or not unreadable(incident_id):
        return
    if blank(incident_id):  # blank is missing, as where the context is required
        raise BadInput(
            "operator_context_required",
            f"{field}: blank (spaces or invisible characters only): give the incident id",
            field=field,
        )
    raise BadInput(
        "invalid_request",
        f"{field}: must be plain text, without control, invisible (zero-width, BOM, "
        "direction) or line-separator characters",
        field=field,
    )


def require_context(op: Operator, purpose: str, incident: bool = True) -> None:
    """The operator context every staff action that changes state carries: an incident id
    (unless `incident` is False: then only checked when given) and a reason, neither blank
    once invisible characters are removed; `purpose` ends the refusal ("to revoke")."""
    # SECURITY: the audit row is how a money-moving staff action is traced back to a person
    # and a ticket; one that names neither readably is refused before anything is done.
    needed = [("incident_id", op.incident_id)] if incident else []
    for field, value in (*needed, ("operator_reason", op.reason)):
        if blank(value):
            raise BadInput("operator_context_required", f"{field}: required {purpose}", field=field)
    check_incident_id(op.incident_id)


class AuditKeyMissing(RuntimeError):
    """An operation that needs the audit key (a checkpoint) was asked for without one."""


def event_hash(
    prev_hash: str,
    at: datetime,
    actor: str,
    action: str,
    subject_type: str,
    subject_id: str,
    data: dict[str, Any],
    incident_id: str | None,
    reason: str | None,
    key: bytes | None = None,
) -> str:
    doc = {
        "prev": prev_hash,
        "at": iso(at),
        "actor": actor,
        "action": action,
        "subject_type": subject_type,
        "subject_id": subject_id,
        "data": data,
        "incident_id": incident_id,
        "reason": reason,
    }
    if key is None:
        # Unkeyed: a Database made without a key (library use, tests, disposable benchmark
        # databases). The service and the worker refuse to start without one.
        return hashlib.sha256(canonical_json(doc)).hexdigest()
    # SECURITY: keyed with a secret that is not in the database, so a rewritten chain cannot
    # be re-hashed into one that verifies by anyone who can only write the table.
    return hmac.digest(key, canonical_json(doc), "sha256").hex()


_HEAD_KEY = "railproof.audit_head"


@event.listens_for(Session, "after_transaction_end")
def _forget_head(session: Session, _transaction: object) -> None:
    # Every Session, however made: once its transaction ends (commit, rollback, close) or any
    # savepoint in it does, the cached head may no longer be the chain's head.
    session.info.pop(_HEAD_KEY, None)


def lock_with_next_statement(s: Session) -> None:
    """For a transaction that appends as soon as its next statement is answered: the chain's
    lock is taken, and its head read, in that statement's round trip (on PostgreSQL;
    storage.repo.audit `lock_behind`) instead of one of their own at the `append`."""
    if s.info.get(_HEAD_KEY) is None:
        audit_repo.lock_behind(s)


def append(
    s: Session,
    now: datetime,
    op: Operator,
    action: str,
    subject_type: str,
    subject_id: str,
    data: dict[str, Any] | None = None,
) -> None:
    """Append one event inside the caller's transaction (it commits or rolls back with the
    state change it describes).

    The chain's head is read once per transaction, under the lock that keeps every other
    appender out until this transaction ends (PostgreSQL: the advisory lock; SQLite: the
    write lock BEGIN IMMEDIATE took), and then kept in `s.info`: later appends in the same
    transaction link to the event this one wrote. The end of the transaction, or of any
    savepoint in it, drops it (`_forget_head`), so it never outlives what it describes."""
    key = s.info.get(AUDIT_KEY_INFO)
    prev = s.info.get(_HEAD_KEY)
    if prev is None:
        prev = audit_repo.lock_and_head(s) or GENESIS
    data = data or {}
    rid = request_id_var.get()
    if rid is not None and "request_id" not in data:
        # The HTTP request that caused it (X-Request-Id), covered by the hash like the rest.
        data = {**data, "request_id": rid}
    h = event_hash(
        prev, now, op.actor, action, subject_type, subject_id, data, op.incident_id, op.reason, key
    )
    row = {
        "at": now,
        "actor": op.actor,
        "action": action,
        "subject_type": subject_type,
        "subject_id": subject_id,
        "data": data,
        "incident_id": op.incident_id,
        "reason": op.reason,
        "prev_hash": prev,
        "hash": h,
    }
    # A Core insert: the row is write-only here, so the ORM's unit of work buys nothing.
    audit_repo.insert_event(s, row)
    s.info[_HEAD_KEY] = h


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    events: int
    first_broken_id: int | None = None
    message: str = "audit chain intact"
    keyed: bool = True
    head_id: int | None = None  # the last event checked, and its hash
    head_hash: str = GENESIS

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.events,
            "first_broken_id": self.first_broken_id,
            "message": self.message,
            "keyed": self.keyed,
        }


def verify_chain(s: Session, batch: int = 5000) -> ChainReport:
    key = s.info.get(AUDIT_KEY_INFO)
    prev, count, last_id = GENESIS, 0, 0
    while True:
        rows = audit_repo.events_after(s, last_id, batch)
        if not rows:
            return ChainReport(
                True, count, keyed=key is not None, head_id=last_id or None, head_hash=prev
            )
        for ev in rows:
            # SECURITY: every link and every hash, from the genesis on.
            if ev.prev_hash != prev:
                return ChainReport(
                    False,
                    count,
                    ev.id,
                    f"event {ev.id}: prev_hash does not link to the event before it",
                    keyed=key is not None,
                )
            if _rehashed(ev, key) != ev.hash:
                return ChainReport(
                    False,
                    count,
                    ev.id,
                    f"event {ev.id}: contents do not match its hash",
                    keyed=key is not None,
                )
            prev, count, last_id = ev.hash, count + 1, ev.id


def key_fits(s: Session) -> bool:
    """Whether the session's audit key is the one the chain's newest event was hashed with
    (True for an empty chain). A process with another key appends events that never verify:
    it must not start. One event, not the walk: a check at every start."""
    ev = audit_repo.newest_event(s)
    return ev is None or hmac.compare_digest(_rehashed(ev, s.info.get(AUDIT_KEY_INFO)), ev.hash)


def _rehashed(ev: AuditEvent, key: bytes | None) -> str:
    """The hash a stored event must have under `key`."""
    return event_hash(
        ev.prev_hash,
        ev.at,
        ev.actor,
        ev.action,
        ev.subject_type,
        ev.subject_id,
        ev.data or {},
        ev.incident_id,
        ev.reason,
        key,
    )


# -- checkpoints ------------------------------------------------------------------------------
# A checkpoint records the chain's head and length, signed with the audit key. Kept off the
# host, it catches what the chain alone cannot: the newest events removed (the rest still
# links), or the whole chain rebuilt.

CHECKPOINT_FIELDS = ("head_id", "head_hash", "events", "at")
_CHECKPOINT_DOMAIN = "railproof.audit_checkpoint.v1"  # never an event's canonical document


def _checkpoint_mac(key: bytes, cp: Mapping[str, Any]) -> str:
    doc = {"kind": _CHECKPOINT_DOMAIN, **{f: cp[f] for f in CHECKPOINT_FIELDS}}
    return hmac.digest(key, canonical_json(doc), "sha256").hex()


def make_checkpoint(s: Session, now: datetime) -> tuple[ChainReport, dict[str, Any] | None]:
    """The chain's report and, when it is intact, a signed checkpoint of its head. None for a
    broken chain: a checkpoint must never vouch for tampering."""
    key = s.info.get(AUDIT_KEY_INFO)
    if key is None:
        raise AuditKeyMissing("a checkpoint is signed with the audit key")
    rep = verify_chain(s)
    if not rep.ok:
        return rep, None
    cp: dict[str, Any] = {
        "head_id": rep.head_id,
        "head_hash": rep.head_hash,
        "events": rep.events,
        "at": iso(now),
    }
    cp["mac"] = _checkpoint_mac(key, cp)
    return rep, cp


@dataclass(frozen=True)
class CheckpointReport:
    ok: bool
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "message": self.message}


def check_checkpoint(s: Session, cp: Mapping[str, Any], rep: ChainReport) -> CheckpointReport:
    """Whether the chain `rep` describes (verified in this transaction) still holds the
    checkpoint's head event with the same hash, at the same position, and at least as many
    events as when the checkpoint was taken."""
    key = s.info.get(AUDIT_KEY_INFO)
    if key is None:
        raise AuditKeyMissing("a checkpoint is checked with the audit key")
    # SECURITY: nothing in a checkpoint is believed before its signature verifies.
    try:
        valid = hmac.compare_digest(str(cp["mac"]).encode(), _checkpoint_mac(key, cp).encode())
    except (KeyError, TypeError):  # not a checkpoint's shape, or values JSON cannot carry
        valid = False
    if not valid:
        return CheckpointReport(False, "checkpoint signature invalid")
    head_id, head_hash, events = cp["head_id"], cp["head_hash"], cp["events"]
    # SECURITY: the checkpoint's head must still be there, unchanged, with as many events
    # before it as then, and the chain no shorter than it was.
    if head_id is not None:
        stored = audit_repo.hash_of(s, head_id)
        if stored is None:
            return CheckpointReport(
                False,
                f"checkpoint head event {head_id} is gone: the chain was truncated or rebuilt",
            )
        if stored != head_hash:
            return CheckpointReport(
                False,
                f"event {head_id} no longer has the checkpoint's hash: the chain was rewritten",
            )
        before = audit_repo.count_through(s, head_id)
        if before != events:
            return CheckpointReport(
                False,
                f"{before} events up to event {head_id}, the "
                f"checkpoint saw {events}: the chain was rewritten",
            )
    if rep.events < events:
        return CheckpointReport(
            False, f"{rep.events} events, the checkpoint saw {events}: events were removed"
        )
    head = "empty chain" if head_id is None else f"head event {head_id}"
    return CheckpointReport(True, f"checkpoint of {cp['at']} holds ({events} events, {head})")
