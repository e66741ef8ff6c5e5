"""Idempotency-Key claims for mutating endpoints.

A claim row (principal, endpoint, key, request_hash, status, response) is the first statement
of the work's first transaction and commits with it (storage.db `Database.carrying`), and where
the route gives `answer` and its service marks its last transaction (`Database.finish`: opening
a session, a proof's attempt) the completion commits with that one, so a claim costs no commit
of its own and a process that dies after the work's last commit leaves no claim in progress.
A claim is bound to what its request means (`Request`: a body model's fields at their
defaults left out, so a field added later with its default is the same request), and also
takes the hashes earlier versions stored for that request. Same key and body → the stored
response, as it was first answered (`Answer.replayed`: the
API marks it `Idempotent-Replayed: true`); same key, other body → 409 idempotency_conflict;
still in progress → 409 idempotency_in_progress. An answer holding what must not be kept (a
webhook endpoint's signing secret) is stored as the route's `keep` makes it, and given again
as its `on_replay` makes it of that, as the resource is now (or refused once it no longer
holds). Checks the work makes before its first transaction (the body's own validity) answer
before the claim is looked at: a key reused with an invalid body gets that 400, not the
conflict.

Only results of requests that started executing are stored: successful (2xx) answers, and
a refusal raised after the work ran side effects (an EngineError marked `executed`, e.g. a
claim of a held transfer, audited and counted: a retry replays the same 409 and audits
nothing more). Any other refusal (rail_paused, not found, invalid input, a session state
conflict) ran nothing and an unexpected failure may not have finished: both release the
claim, so a retry with the same key runs again (a request refused while a rail was paused
goes through once it is resumed). A release the database cannot take (the failure was
its own: a restart, a failover) is made by the process once it answers (`_Unreleased`).
A claim whose process died stays in_progress and is listed by
`list-stuck-idempotency-claims`; there is deliberately no command that deletes claims. One
stuck claim can be released (as a refusal releases it) by an audited assurance repair
(services.assurance), staff's decision.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast

from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeout
from sqlalchemy.orm import Session

from rails.base import canonical_json
from verifier.core import timeutil
from verifier.core.engine import Engine
from verifier.core.errors import BadInput, Conflict, EngineError
from verifier.core.timeutil import iso
from verifier.storage.models import ClaimStatus
from verifier.storage.repo import idempotency as claim_repo

log = logging.getLogger("railproof.idempotency")

MAX_KEY = 256

Body = dict[str, Any]  # a JSON answer
Reply = tuple[int, Body | None]  # an answer's status and body
R = TypeVar("R")  # what a request's service returned


class Answer(tuple[int, Body | None]):
    """What a request answered: (status, body). `replayed`: the answer an earlier request
    with the key stored, given again as it was then (the resource may have moved on since:
    a proof answered pending is read as it is now with GET)."""

    replayed = False

    @classmethod
    def of(cls, answer: tuple[int, Body | None], replayed: bool = False) -> Answer:
        made = cls(answer)
        made.replayed = replayed
        return made


def request_hash(body: object) -> str:
    return hashlib.sha256(canonical_json(body)).hexdigest()


@dataclass(frozen=True)
class Request:
    """What a key's claim is compared by. `hash`: of what the request means, stored by a new
    claim. `earlier`: the hashes earlier versions stored for this same request (a claim made
    before an upgrade still replays after it).

    SECURITY: every form hashed is one a request of this meaning, and no other, took; a
    hash in `earlier` that another request's form could give would replay one request's
    answer (a session, a signing secret) to another."""

    hash: str
    earlier: frozenset[str] = frozenset()

    @classmethod
    def of(cls, meaning: object, *earlier: object) -> Request:
        made = request_hash(meaning)
        return cls(made, frozenset(request_hash(form) for form in earlier) - {made})

    def made(self, stored: str) -> bool:
        """Whether a claim storing `stored` was made for this request."""
        return stored == self.hash or stored in self.earlier


def run_idempotent(
    engine: Engine,
    principal: str,
    endpoint: str,
    key: str | None,
    request: Request | Callable[[], Request] | object,
    work: Callable[[], R],
    answer: Callable[[R], tuple[int, Body]] | None = None,
    keep: Callable[[Body], Body] | None = None,
    on_replay: Callable[[Reply], Reply] | None = None,
) -> Answer:
    """Run `work` at most once per (principal, endpoint, key); returns (status, body).

    `request` is what the key is bound to: a `Request`, a function making one (a body
    model's `idempotent_request`, called only when a key is given: a request without one
    is never hashed), or any JSON value, hashed as it is.

    Without `answer`, `work` returns the (status, body) itself. With it, `work` returns its
    service's result and `answer` makes the answer of it: where the service passes that result
    to `Database.finish` in its last transaction, the answer is made there and the claim's
    completion written in that transaction (committed with the work's last changes, no
    transaction of its own).

    `keep` makes what the key stores of an answer (without it, the answer itself), and
    `on_replay` the answer a replay gives of what was stored; it may raise an EngineError
    instead, when the stored answer no longer holds."""

    def answer_of(result: R) -> tuple[int, Body]:
        return answer(result) if answer is not None else cast(tuple[int, Body], result)

    if key is None:
        return Answer.of(answer_of(work()))
    # A header's value has no surrounding whitespace (RFC 9110 5.5): servers drop the leading
    # kind, so the trailing kind must go too, or a retry padded by a proxy is another key.
    key = key.strip(" \t")
    # A key is an id: printable ASCII, a Structured Fields string's characters (no control
    # characters: NUL would break PostgreSQL text). The server hands a header over one
    # character a byte, so a non-ASCII key would be judged and stored by its UTF-8 bytes.
    # No comma either: a proxy may fold two Idempotency-Key lines into one, joined by ", ",
    # and that key would run the work again for a retry carrying only one of them.
    if not key or len(key) > MAX_KEY or not (key.isascii() and key.isprintable()) or "," in key:
        raise BadInput(
            "invalid_idempotency_key",
            f"Idempotency-Key: 1 to {MAX_KEY} printable ASCII characters, no comma",
            field="Idempotency-Key",
        )
    # Process time, not the business clock: a pinned clock would never age a claim.
    if callable(request):
        request = request()  # made only for a request with a key, once the key is good
    if not isinstance(request, Request):
        request = Request.of(request)
    k = _Key(principal, endpoint, key, request, timeutil.process_now(), keep, on_replay)
    _flush_unreleased(engine)

    def write_claim(s: Session) -> None:
        # SECURITY: raises ClaimTaken (here, or out of the work's first statement) before the
        # work gets any answer from the database: one key, one run of the work.
        claim_repo.insert_claim_first(
            s, k.row(status=ClaimStatus.in_progress.value, response_code=None, completed_at=None)
        )

    def complete_with_work(s: Session, result: R) -> tuple[int, Body]:
        made = answer_of(result)
        claim_repo.complete_with_work(s, k.written, k.done(made))
        return made

    # The claim is written at the start of the work's first transaction (and committed with
    # it) rather than in a transaction of its own before the work: a request with the same
    # key waits on the claim's unique index and finds it, as it would have found the claim
    # committed alone, and a claim is never committed without the work's first changes. On
    # PostgreSQL it rides behind the work's first statement (a read: the session, or the
    # rail's state), checked before that statement answers; both works act on nothing
    # outside the database before it.
    try:
        with engine.db.carrying(write_claim, complete_with_work if answer else None) as rider:
            result = work()
            if rider.answer is not None:  # made and stored with the work's last changes
                return Answer.of(rider.answer)
            status, out = answer_of(result)
    except claim_repo.ClaimTaken:
        return _stored_answer(engine, k)
    except EngineError as e:
        if rider.answer is not None:
            # Refused after its last transaction committed the answer: that stays the answer.
            return Answer.of(rider.answer)
        if not e.executed:
            _release(engine, k, rider.committed)
            raise
        # Refused after side effects (an audit row, a metric): the answer is the result.
        stored = _complete(engine, k, rider.committed, (e.status, e.body()))
        if stored is not None:
            return stored
        raise
    except BaseException:
        # An unexpected failure may not have finished: the client's retry runs it again
        # (unless the answer committed with the work: the retry replays it).
        if rider.answer is None:
            _release(engine, k, rider.committed)
        raise
    return _complete(engine, k, rider.committed, (status, out)) or Answer.of((status, out))


@dataclass(frozen=True)
class _Key:
    """A claim's identity, and how its answer is stored and given again."""

    principal: str
    endpoint: str
    key: str
    request: Request
    created_at: datetime
    keep: Callable[[Body], Body] | None = None
    on_replay: Callable[[Reply], Reply] | None = None

    @property
    def made(self) -> tuple[str, datetime]:
        """What tells the claim this request wrote from a later request's claim of the key."""
        return (self.request.hash, self.created_at)

    @property
    def written(self) -> claim_repo.Written:
        """The claim this request writes, as the repository completes it."""
        return claim_repo.Written(self.principal, self.endpoint, self.key, self.made)

    def row(self, **values: object) -> dict[str, object]:
        """The claim's row, with `values` (its status and answer)."""
        return {
            "principal": self.principal,
            "endpoint": self.endpoint,
            "key": self.key,
            "request_hash": self.request.hash,
            "created_at": self.created_at,
            **values,
        }

    def done(self, answer: tuple[int, Body]) -> dict[str, Any]:
        """A claim's completion: its status and the answer stored under it."""
        status, body = answer
        return {
            "status": ClaimStatus.completed.value,
            "response_code": status,
            "response": self.keep(body) if self.keep is not None and body is not None else body,
            "completed_at": timeutil.process_now(),
        }

    def replay(self, status: int, body: Body | None) -> Answer:
        stored = (status, body)
        return Answer.of(self.on_replay(stored) if self.on_replay else stored, replayed=True)


def _stored_answer(engine: Engine, k: _Key) -> Answer:
    with engine.db.tx() as s:
        c = claim_repo.get(s, k.principal, k.endpoint, k.key)
    if c is None:  # released by a refusal between our insert and this read
        raise Conflict("idempotency_in_progress", "retry shortly")
    # SECURITY: the stored hash must be one this request's meaning gives (now, or as an
    # earlier version hashed it): any other body is a conflict, never the stored answer.
    if not k.request.made(c.request_hash):
        message = "Idempotency-Key was used with a different request body"
        raise _refused(engine, "body_mismatch", "idempotency_conflict", message)
    if c.status != ClaimStatus.completed:
        message = "a request with this Idempotency-Key is still in progress"
        raise _refused(engine, "in_progress", "idempotency_in_progress", message)
    return k.replay(c.response_code or 200, c.response)


def _refused(engine: Engine, kind: str, code: str, message: str) -> Conflict:
    engine.metrics.inc("idempotency_conflicts_total", kind=kind)
    return Conflict(code, message, field="Idempotency-Key")


def _release(engine: Engine, k: _Key, written: bool) -> None:
    """A refusal that ran nothing: the claim goes, a retry with the key runs again. Where the
    database cannot take the release now (the failure that ends the request may be the
    database's own: a restart, a failover), it is kept and made once it answers
    (`_Unreleased`), never left for good while this process lives; the request's own error
    is still the one raised."""
    if not written:  # the work's transactions all rolled back, and the claim with them
        return
    try:
        with engine.db.tx() as s:
            # SECURITY: only the claim this request wrote. Staff may have released it (an
            # assurance repair of a claim that looked stuck) and a retry claimed the key
            # since: deleting that claim would let a third request run the work beside it.
            claim_repo.release_in_progress(s, k.principal, k.endpoint, k.key, k.made)
    except (DBAPIError, SQLAlchemyTimeout) as e:
        log.warning(
            "idempotency claim release deferred until the database answers: %s",
            type(e).__name__,
            extra={"endpoint": k.endpoint},
        )
        _unreleased(engine).add(k)


# How long the releases kept by `_Unreleased` wait between tries: first, and at most.
RELEASE_RETRY_FIRST_S = 1.0
RELEASE_RETRY_MAX_S = 30.0


class _Unreleased:
    """An engine's claim releases the database could not take when they were made. Each is
    tried again before this process's next request with a key looks at any claim, and by a
    thread of its own meanwhile, until the database takes it.

    SECURITY: a release deletes only the claim its own request wrote (its request hash and
    creation time) and only while in progress: were the first try in fact committed (the
    connection lost during its COMMIT) and the key claimed again by a retry since, that
    retry's claim stays, so the work never runs twice at once for one key. A process that
    dies leaves its claims in progress, as before (`list-stuck-idempotency-claims`)."""

    def __init__(self, engine: Engine):
        self._engine = weakref.ref(engine)
        self._lock = threading.Lock()
        self._keys: list[_Key] = []
        self._thread: threading.Thread | None = None

    def __bool__(self) -> bool:
        return bool(self._keys)

    def add(self, k: _Key) -> None:
        with self._lock:
            self._keys.append(k)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._retry, name="idempotency-releases", daemon=True
                )
                self._thread.start()

    def flush(self) -> bool:
        """Try every kept release once, in order, stopping at the first the database does
        not take. Whether none is left."""
        engine = self._engine()
        if engine is None:  # its engine is gone, and the database it named with it
            with self._lock:
                self._keys.clear()
            return True
        while True:
            with self._lock:
                if not self._keys:
                    return True
                k = self._keys[0]
            try:
                with engine.db.tx() as s:
                    claim_repo.release_in_progress(s, k.principal, k.endpoint, k.key, k.made)
            except (DBAPIError, SQLAlchemyTimeout):
                return False
            with self._lock:
                if self._keys and self._keys[0] is k:
                    self._keys.pop(0)
            log.info("idempotency claim released", extra={"endpoint": k.endpoint})

    def _retry(self) -> None:
        pause = RELEASE_RETRY_FIRST_S
        while True:
            time.sleep(pause)
            try:
                done = self.flush()
            except Exception:  # never the thread's end while releases wait
                log.exception("idempotency claim release failed")
                done = False
            with self._lock:
                if done and not self._keys:
                    self._thread = None
                    return
            pause = min(pause * 2, RELEASE_RETRY_MAX_S)


_UNRELEASED: weakref.WeakKeyDictionary[Engine, _Unreleased] = weakref.WeakKeyDictionary()
_UNRELEASED_LOCK = threading.Lock()


def _unreleased(engine: Engine) -> _Unreleased:
    with _UNRELEASED_LOCK:
        found = _UNRELEASED.get(engine)
        if found is None:
            found = _UNRELEASED[engine] = _Unreleased(engine)
        return found


def _flush_unreleased(engine: Engine) -> None:
    """Releases kept from an outage, made before a request looks at claims: a retry of the
    request whose release was kept then runs, rather than finding its key in progress."""
    found = _UNRELEASED.get(engine)
    if found:
        found.flush()


def _complete(engine: Engine, k: _Key, written: bool, answer: tuple[int, Body]) -> Answer | None:
    """Store the answer under the key. None: ours is the answer; else the one stored first."""
    done = k.done(answer)
    if written:
        with engine.db.tx() as s:
            ok = claim_repo.complete(s, k.written, done)
        if not ok:
            # Released while the work ran (staff took it for stuck), and perhaps claimed
            # again by a retry: that claim is the retry's to complete. This request's own
            # answer is still the true one for its client; it is not stored.
            log.warning(
                "idempotency claim released while its request ran: answer not stored",
                extra={"endpoint": k.endpoint},
            )
        return None
    # The work committed nothing (a refusal, or it only read), so no transaction carried
    # the claim: it is written completed now. A claim of the key that is already there
    # answers instead, as it would have had it been found before the work.
    try:
        with engine.db.tx() as s:
            claim_repo.insert_claim(s, k.row(**done))
    except IntegrityError:
        return _stored_answer(engine, k)
    return None


def stuck_claims(engine: Engine, min_age_seconds: int | None = None) -> list[dict[str, Any]]:
    age = min_age_seconds if min_age_seconds is not None else engine.settings.stuck_claim_seconds
    cutoff = timeutil.process_now() - timedelta(seconds=age)  # claim ages are process time
    with engine.db.tx() as s:
        rows = claim_repo.in_progress_since(s, cutoff)
        return [
            {
                "principal": c.principal,
                "endpoint": c.endpoint,
                "key": c.key,
                "request_hash": c.request_hash,
                "status": c.status,
                "created_at": iso(c.created_at),
            }
            for c in rows
        ]
