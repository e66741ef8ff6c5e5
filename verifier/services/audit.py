"""The audit log: append-only and hash-chained. Each event's hash covers its fields and the
previous event's hash, so changing, deleting or reordering any row breaks every link after it.

The hash is an HMAC-SHA256 under a key kept out of the database (RAILPROOF_AUDIT_KEY or
RAILPROOF_AUDIT_KEY_FILE, bound to the Database and carried by its Sessions): whoever can
write the table but lacks the key cannot recompute a chain that verifies. Removing the newest
events leaves a shorter chain that still links; signed checkpoints, kept off the host, catch
that (docs/security.md).

A database written by railproof 0.1.0 holds events hashed with plain SHA-256 (the key came
later). `adopt_key` anchors that history once under the key (`audit.key_adopted`); from then
on `verify_chain` checks the events before the anchor as plain SHA-256 and the anchor and
everything after it with the key.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
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
KEY_ADOPTED = "audit.key_adopted"  # the one event that anchors an unkeyed history under the key
_PG_AUDIT_LOCK = audit_repo.CHAIN_LOCK_KEY  # one advisory lock serializes appends to the chain


@dataclass(frozen=True)
class Operator:
    """Who does a staff action and why; stored with the action."""

    actor: str
    incident_id: str | None = None
    reason: str | None = None


# The longest incident id (the width of audit_events.incident_id, the API's limit) and
# operator reason (the API's limit) an action is recorded with.
MAX_INCIDENT_ID = 128
MAX_OPERATOR_REASON = 1000


def check_incident_id(incident_id: str | None, field: str = "incident_id") -> None:
    """Refuse an incident id longer than MAX_INCIDENT_ID or holding a control, invisible or
    line-separator character: the CLI and the audit filter refuse such text, so the action
    could never be looked up by it, and it may print exactly as another incident's id."""
    if incident_id is None:
        return
    if len(incident_id) > MAX_INCIDENT_ID:
        raise BadInput(
            "invalid_request",
            f"{field}: at most {MAX_INCIDENT_ID} characters, not {len(incident_id)}",
            field=field,
        )
    if not unreadable(incident_id):
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


def check_reason(reason: str | None, field: str = "operator_reason") -> None:
    """Refuse an operator reason longer than MAX_OPERATOR_REASON or holding NUL, which
    PostgreSQL text cannot hold. Other control characters are free text's, kept as written
    (the CLI and the console show each as its escape)."""
    if reason is None:
        return
    if len(reason) > MAX_OPERATOR_REASON:
        raise BadInput(
            "invalid_request",
            f"{field}: at most {MAX_OPERATOR_REASON} characters, not {len(reason)}",
            field=field,
        )
    if "\x00" in reason:
        raise BadInput(
            "invalid_request",
            f"{field}: must not contain NUL characters (\\u0000)",
            field=field,
        )


def require_context(op: Operator, purpose: str, incident: bool = True) -> None:
    """The operator context every staff action that changes state carries: an incident id
    (unless `incident` is False: then only checked when given) and a reason, neither blank
    once invisible characters are removed, both of a length and text the audit row holds;
    `purpose` ends the refusal ("to revoke")."""
    # SECURITY: the audit row is how a money-moving staff action is traced back to a person
    # and a ticket; one that names neither readably is refused before anything is done, and
    # so is one the row cannot hold (the action would fail when its audit row is written).
    needed = [("incident_id", op.incident_id)] if incident else []
    for field, value in (*needed, ("operator_reason", op.reason)):
        if blank(value):
            raise BadInput("operator_context_required", f"{field}: required {purpose}", field=field)
    check_incident_id(op.incident_id)
    check_reason(op.reason)


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
    # Why it broke, for the callers that act on it (`adopt_key`); not reported.
    broke: Break | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.events,
            "first_broken_id": self.first_broken_id,
            "message": self.message,
            "keyed": self.keyed,
        }


class Break(StrEnum):
    link = "link"  # prev_hash is not the hash of the event before it
    contents = "contents"  # the hash does not cover the stored fields
    keyed = "keyed"  # hashed with the key where only plain SHA-256 may be (`adopt_key`)
    newer = "newer"  # plain SHA-256, but not an event railproof 0.1.0 wrote (`adopt_key`)
    adoption = "adoption"  # an `audit.key_adopted` event where none may be
    never_adopted = "never_adopted"  # a history written without a key, not anchored under it


_NEVER_ADOPTED = (
    "the audit chain verifies only without a key, and no key adoption anchors it: either a "
    "database written by railproof 0.1.0, to adopt once with `railproof audit adopt-key "
    "--incident-id … --operator-reason … --confirm`, or a chain rewritten by someone without "
    "the key; compare it with an off-host checkpoint or backup first (docs/security.md)"
)

# Every action railproof 0.1.0 appended to the audit chain (the code at b86d65b, the last
# commit of the 0.1.0 release: revisions 0001-0004), frozen here. An event any later
# version wrote was hashed with the key, so in a chain that verifies only as plain SHA-256
# an action outside this set was written by someone else, or re-hashed without the key.
V0_1_0_ACTIONS = frozenset(
    {
        "session.opened",
        "proof.submitted",
        "proof.owner_conflict",
        "proof.pending",
        "proof.verified",
        "proof.failed",
        "proof.requires_review",
        "proof.dry_run_apply",
        "proof.applied",
        "receipt.created",
        "entitlement.activated",
        "entitlement.revoked",
        "entitlement.reorg_flagged",
        "settlement.observed",
        "settlement.finalized",
        "settlement.reorged",
        "rail.paused",
        "rail.resumed",
        "approval.requested",
        "approval.approved",
        "staff.read",
        "webhook_endpoint.created",
        "webhook_endpoint.deleted",
        "webhook.replayed",
    }
)


def _not_of_0_1_0(ev: AuditEvent) -> str | None:
    """Why a plain SHA-256 event cannot have been written by railproof 0.1.0 (None: it can)."""
    if ev.action not in V0_1_0_ACTIONS:
        return f"action {ev.action!r}, which railproof 0.1.0 never wrote"
    if "request_id" in (ev.data or {}):
        # The HTTP request id came into event data after 0.1.0, with the key.
        return "a request_id in its data, which railproof 0.1.0 never wrote"
    return None


def verify_chain(s: Session, batch: int = 5000) -> ChainReport:
    """Every link and every hash, from the genesis. With the key: every event keyed, or an
    unkeyed history (railproof 0.1.0) followed by its one adoption anchor and keyed events
    after it. Without the key: every event as plain SHA-256 (an anchor cannot be checked)."""
    return _walk(s, s.info.get(AUDIT_KEY_INFO), batch)


def _walk(s: Session, key: bytes | None, batch: int, unkeyed_only: bool = False) -> ChainReport:
    """The chain checked from the genesis. `unkeyed_only` (key adoption): every event must be
    plain SHA-256, and one hashed with `key`, or an anchor, breaks it (`Break.keyed`,
    `Break.adoption`)."""
    keyed = key is not None and not unkeyed_only
    # SECURITY: from the lowest id there is, not from id 1: a row inserted by hand with id 0
    # or below (INSERT is what the append-only triggers allow) is walked, and breaks the
    # chain, rather than sitting before it unchecked while staff listings show it.
    prev, count = GENESIS, 0
    last_id: int | None = None
    first_id: int | None = None
    # None until the first event says which: True, the chain is keyed from its genesis;
    # False, it begins with a history written without a key. Without a key: unkeyed.
    keyed_from_genesis: bool | None = None if keyed else False
    anchor_id: int | None = None

    def broken(ev: AuditEvent, why: Break, message: str) -> ChainReport:
        return ChainReport(False, count, ev.id, f"event {ev.id}: {message}", keyed, broke=why)

    while True:
        rows = audit_repo.events_after(s, last_id, batch)
        if not rows:
            break
        for ev in rows:
            # SECURITY: every link and every hash, from the genesis on.
            if ev.prev_hash != prev:
                return broken(ev, Break.link, "prev_hash does not link to the event before it")
            if first_id is None:
                first_id = ev.id
            if ev.action == KEY_ADOPTED:
                refused = _anchor_refused(
                    ev, key, unkeyed_only, keyed_from_genesis, anchor_id, count
                )
                if refused is not None:
                    return broken(ev, *refused)
                anchor_id = ev.id
            elif anchor_id is not None or keyed_from_genesis:
                # SECURITY: after the anchor, or in a chain keyed from its genesis, every
                # event is keyed: one re-hashed without the key never verifies.
                if not _fits(ev, key):
                    return broken(ev, Break.contents, "contents do not match its hash")
            elif keyed_from_genesis is None and _fits(ev, key):
                keyed_from_genesis = True
            elif _fits(ev, None):
                # SECURITY: plain SHA-256, before the anchor only: the anchor is keyed and
                # links to the head of this history, so rewriting any of it changes the head
                # the anchor links to (a chain never anchored is refused below).
                if unkeyed_only and (newer := _not_of_0_1_0(ev)) is not None:
                    # SECURITY: adopting vouches for a 0.1.0 history; an event a keyed
                    # version wrote, now without the key, is a keyed chain rebuilt by someone
                    # without the key (a careless rewrite: a careful one is caught only by an
                    # off-host checkpoint or backup).
                    return broken(ev, Break.newer, f"plain SHA-256 with {newer}")
                keyed_from_genesis = False
            elif unkeyed_only and key is not None and _fits(ev, key):
                return broken(ev, Break.keyed, "already hashed with the audit key")
            else:
                return broken(ev, Break.contents, "contents do not match its hash")
            prev, count, last_id = ev.hash, count + 1, ev.id
    if keyed and first_id is not None and keyed_from_genesis is False and anchor_id is None:
        # SECURITY: a history written without a key counts only once anchored under it:
        # anyone who can write the table can recompute an unkeyed chain (or a keyed chain
        # rebuilt unkeyed, its newest events dropped).
        return ChainReport(
            False,
            count,
            first_id,
            f"event {first_id}: {_NEVER_ADOPTED}",
            keyed,
            broke=Break.never_adopted,
        )
    message = "audit chain intact"
    if anchor_id is not None:
        message += (
            f" (the events before event {anchor_id} were written without a key and anchored "
            f"under it by event {anchor_id}, {KEY_ADOPTED})"
        )
    return ChainReport(True, count, None, message, keyed, last_id, prev)


def _anchor_refused(
    ev: AuditEvent,
    key: bytes | None,
    unkeyed_only: bool,
    keyed_from_genesis: bool | None,
    anchor_id: int | None,
    count: int,
) -> tuple[Break, str] | None:
    """Why the key adoption `ev` does not verify where it stands (None: it does)."""
    # SECURITY: the anchor is what vouches for the unkeyed history before it, so only the
    # one anchor that ends such a history, hashed with the key (it cannot be forged without
    # it) and naming that history's head and length, counts. An unkeyed "anchor", a second
    # one, or one in a chain keyed from its genesis is a broken event.
    if key is None:
        return Break.adoption, "a key adoption, checked only with the audit key (none given)"
    if unkeyed_only:  # adopting: an anchor that is one is "adopted already", else broken
        if _fits(ev, key):
            return Break.adoption, f"the key was adopted by this event ({KEY_ADOPTED})"
        return Break.contents, "a key adoption whose contents do not match its hash under the key"
    if anchor_id is not None:
        return Break.adoption, f"a second key adoption (the key was adopted by event {anchor_id})"
    if keyed_from_genesis is not False:
        return Break.adoption, "a key adoption in a chain with no history written without a key"
    if not _fits(ev, key):
        return Break.contents, "a key adoption whose contents do not match its hash under the key"
    data = ev.data or {}
    if data.get("unkeyed_head") != ev.prev_hash or data.get("unkeyed_events") != count:
        return Break.contents, "a key adoption that does not name the history before it"
    return None


def _fits(ev: AuditEvent, key: bytes | None) -> bool:
    return hmac.compare_digest(_rehashed(ev, key), ev.hash)


class KeyState(StrEnum):
    fits = "fits"  # the newest event is hashed with the key (or the chain is empty)
    # plain SHA-256: railproof 0.1.0 (`railproof audit adopt-key` once), or rewritten without
    # the key
    unkeyed = "unkeyed"
    other = "other"  # another key


def key_state(s: Session) -> KeyState:
    """Whether the session's audit key is the one the chain's newest event was hashed with.
    A process with another key appends events that never verify: it must not start. One
    event, not the walk: a check at every start."""
    key = s.info.get(AUDIT_KEY_INFO)
    ev = audit_repo.newest_event(s)
    if ev is None or _fits(ev, key):
        return KeyState.fits
    return KeyState.unkeyed if key is not None and _fits(ev, None) else KeyState.other


def key_fits(s: Session) -> bool:
    """`key_state` is `fits` (True for an empty chain; after a key adoption, whose anchor and
    everything after it are keyed)."""
    return key_state(s) is KeyState.fits


class AdoptionRefusal(StrEnum):
    no_key = "audit_key_missing"
    empty = "audit_chain_empty"
    broken = "audit_chain_broken"
    keyed = "audit_chain_keyed"
    adopted = "audit_key_adopted_already"
    newer = "audit_chain_not_0_1_0"
    checkpoint = "audit_checkpoint_mismatch"


class KeyAdoptionRefused(Exception):
    """`adopt_key` refused; nothing was written. `code` is stable; `event_id` names the event
    that decided it, where one did."""

    def __init__(self, code: AdoptionRefusal, message: str, event_id: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.event_id = event_id


@dataclass(frozen=True)
class Adoption:
    """What a key adoption anchored: the head hash and the length of the unkeyed history."""

    unkeyed_head: str
    unkeyed_events: int


def adopt_key(
    s: Session, now: datetime, op: Operator, checkpoint: Mapping[str, Any] | None = None
) -> Adoption:
    """Anchor a history written without a key (railproof 0.1.0) under the session's key,
    once: the whole chain must verify as plain SHA-256, with no event keyed, none that 0.1.0
    could not have written (`V0_1_0_ACTIONS`, no request id) and no adoption before; and a
    `checkpoint` given (`make_checkpoint`) must hold. Appends `audit.key_adopted` (keyed)
    naming the history's head hash and length, in the caller's transaction."""
    require_context(op, "to adopt the audit key")
    key = s.info.get(AUDIT_KEY_INFO)
    if key is None:
        raise KeyAdoptionRefused(AdoptionRefusal.no_key, "the key to adopt is not configured")
    # SECURITY: the chain's lock to the end of the transaction: no event is appended between
    # the walk that vouches for the history and the anchor that pins its head.
    audit_repo.lock_chain(s)
    rep = _walk(s, key, 5000, unkeyed_only=True)
    if not rep.ok:
        if rep.broke is Break.keyed:
            code, what = AdoptionRefusal.keyed, "the chain is keyed already, nothing to adopt"
        elif rep.broke is Break.adoption:
            code, what = AdoptionRefusal.adopted, "the key was adopted already"
        elif rep.broke is Break.newer:
            code, what = (
                AdoptionRefusal.newer,
                "the chain was not written by railproof 0.1.0 but verifies without a key: "
                "rewritten by someone without the key (restore a backup, investigate)",
            )
        else:
            code, what = AdoptionRefusal.broken, "the chain written without a key does not verify"
        raise KeyAdoptionRefused(code, f"{what}: {rep.message}", rep.first_broken_id)
    if rep.events == 0:
        raise KeyAdoptionRefused(
            AdoptionRefusal.empty, "the audit chain is empty: any key starts it, nothing to adopt"
        )
    if checkpoint is not None:
        # SECURITY: a checkpoint is signed with the key, so one that verifies was taken of
        # this deployment's keyed chain: a history it does not find any more was rewritten.
        held = check_checkpoint(s, checkpoint, rep)
        if not held.ok:
            raise KeyAdoptionRefused(
                AdoptionRefusal.checkpoint,
                f"the checkpoint does not hold: {held.message}; restore a backup, investigate",
            )
    adoption = Adoption(rep.head_hash, rep.events)
    data = {"unkeyed_head": adoption.unkeyed_head, "unkeyed_events": adoption.unkeyed_events}
    append(s, now, op, KEY_ADOPTED, "audit_chain", str(rep.head_id), data)
    return adoption


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
