"""Idempotency-Key claims for mutating endpoints.

A claim row (principal, endpoint, key, request_hash, status, response) is written before the
work starts. Same key and body → the stored response; same key, other body → 409
idempotency_conflict; still in progress → 409 idempotency_in_progress.

Only results of requests that started executing are stored: successful (2xx) answers, and
a refusal raised after the work ran side effects (an EngineError marked `executed`, e.g. a
claim of a held transfer, audited and counted: a retry replays the same 409 and audits
nothing more). Any other refusal (rail_paused, not found, invalid input, a session state
conflict) ran nothing and an unexpected failure may not have finished: both release the
claim, so a retry with the same key runs again (a request refused while a rail was paused
goes through once it is resumed). A claim whose process
died stays in_progress and is listed by `list-stuck-idempotency-claims`; there is
deliberately no command that deletes claims. One stuck claim can be released (as a refusal
releases it) by an audited assurance repair (services.assurance), staff's decision.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError

from rails.base import canonical_json
from verifier.core import timeutil
from verifier.core.engine import Engine
from verifier.core.errors import BadInput, Conflict, EngineError
from verifier.core.timeutil import iso
from verifier.storage.models import ClaimStatus
from verifier.storage.repo import idempotency as claim_repo

MAX_KEY = 256


def request_hash(body: object) -> str:
    return hashlib.sha256(canonical_json(body)).hexdigest()


def run_idempotent(
    engine: Engine,
    principal: str,
    endpoint: str,
    key: str | None,
    body: object,
    work: Callable[[], tuple[int, dict[str, Any]]],
) -> tuple[int, dict[str, Any] | None]:
    """Run `work` at most once per (principal, endpoint, key); returns (status, body)."""
    if key is None:
        return work()
    # A key is an id: no control characters (NUL would break PostgreSQL text).
    if not key or len(key) > MAX_KEY or not key.isprintable():
        raise BadInput(
            "invalid_idempotency_key",
            f"Idempotency-Key: 1 to {MAX_KEY} printable characters",
            field="Idempotency-Key",
        )
    h = request_hash(body)
    pk = {"principal": principal, "endpoint": endpoint, "key": key}
    try:
        with engine.db.tx() as s:
            # Process time, not the business clock: a pinned clock would never age a claim.
            claim_repo.insert_claim(
                s,
                {
                    **pk,
                    "request_hash": h,
                    "status": ClaimStatus.in_progress.value,
                    "response_code": None,
                    "created_at": timeutil.process_now(),
                    "completed_at": None,
                },
            )
    except IntegrityError:
        with engine.db.tx() as s:
            c = claim_repo.get(s, principal, endpoint, key)
        if c is None:  # released by a refusal between our insert and this read
            raise Conflict("idempotency_in_progress", "retry shortly") from None
        if c.request_hash != h:
            engine.metrics.inc("idempotency_conflicts_total", kind="body_mismatch")
            raise Conflict(
                "idempotency_conflict",
                "Idempotency-Key was used with a different request body",
                field="Idempotency-Key",
            ) from None
        if c.status != ClaimStatus.completed:
            engine.metrics.inc("idempotency_conflicts_total", kind="in_progress")
            raise Conflict(
                "idempotency_in_progress",
                "a request with this Idempotency-Key is still in progress",
                field="Idempotency-Key",
            ) from None
        return c.response_code or 200, c.response
    try:
        status, out = work()
    except EngineError as e:
        if not e.executed:
            _release(engine, pk)
            raise
        # Refused after side effects (an audit row, a metric): the answer is the result.
        _complete(engine, pk, e.status, e.body())
        raise
    except BaseException:
        # An unexpected failure may not have finished: the client's retry runs it again.
        _release(engine, pk)
        raise
    _complete(engine, pk, status, out)
    return status, out


def _release(engine: Engine, pk: dict[str, str]) -> None:
    """A refusal that ran nothing: the claim goes, a retry with the key runs again."""
    with engine.db.tx() as s:
        claim_repo.release_in_progress(s, pk["principal"], pk["endpoint"], pk["key"])


def _complete(engine: Engine, pk: dict[str, str], status: int, out: dict[str, Any]) -> None:
    with engine.db.tx() as s:
        done = claim_repo.complete(
            s,
            pk["principal"],
            pk["endpoint"],
            pk["key"],
            {
                "status": ClaimStatus.completed.value,
                "response_code": status,
                "response": out,
                "completed_at": timeutil.process_now(),
            },
        )
        assert done  # ours, in progress: only we complete or release it


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
